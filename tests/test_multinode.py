"""Several machines: 2 nodes x 1 CPU process each (gloo, all on 127.0.0.1), launched as torchrun launches them
or as SLURM's ``srun`` does, run ``experiment=smoke`` to the end as ``trainer.devices=2`` on one node does:
Lightning detects the launcher's cluster environment, each rank samples its half of the prompts, the
checkpoint is one sharded DCP folder written by both nodes, and rollouts and final parameters equal those of
the one-node run."""

from __future__ import annotations

import json
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import lightning as L
import pytest

from tests.test_distributed import _policy
from tests.test_train_cli import only_run_dir, run_train

pytestmark = pytest.mark.slow


class GenerationShare(L.Callback):
    """Test-only: ``<record>/rank<R>.json`` says how the rank was launched and for how many prompts its own
    rollout engine sampled (``n > 1``: rollouts, not greedy validation)."""

    def __init__(self, record: str):
        self.record = Path(record)
        self.sampled = 0

    def on_fit_start(self, trainer, pl_module):
        from callbacks.rollout import RolloutCallback

        (rollout,) = [c for c in trainer.callbacks if isinstance(c, RolloutCallback)]
        generate = rollout.engine.generate

        def counted(prompt_ids, sampling, *args, **kwargs):
            self.sampled += len(prompt_ids) if sampling.n > 1 else 0
            return generate(prompt_ids, sampling, *args, **kwargs)

        rollout.engine.generate = counted

    def on_fit_end(self, trainer, pl_module):
        self.record.mkdir(parents=True, exist_ok=True)
        row = {
            "node": trainer.node_rank,
            "world": trainer.world_size,
            "environment": type(trainer.strategy.cluster_environment).__name__,
            "sampled": self.sampled,
        }
        (self.record / f"rank{trainer.global_rank}.json").write_text(json.dumps(row))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(node: int, port: int) -> dict:
    """``run_train`` arguments for what one would type on machine ``node`` (of 2, one process each)."""
    flags = ("--nnodes=2", "--nproc-per-node=1", f"--node-rank={node}", "--master-addr=127.0.0.1")
    return {"entry": ("-m", "torch.distributed.run", *flags, f"--master-port={port}", "train.py")}


def srun(node: int, port: int) -> dict:
    """``run_train`` arguments for the task ``srun --nodes=2 --ntasks-per-node=1 python train.py`` starts on
    ``node``: the variables SLURM sets there that Lightning's ``SLURMEnvironment`` reads."""
    slurm = {"JOB_ID": "1", "JOB_NAME": "sppo", "NTASKS": "2", "NNODES": "2", "NTASKS_PER_NODE": "1"}
    slurm |= {"NODELIST": "127.0.0.1", "PROCID": str(node), "LOCALID": "0", "NODEID": str(node)}
    return {"extra_env": {f"SLURM_{k}": v for k, v in slurm.items()} | {"MASTER_PORT": str(port)}}


LAUNCHERS = {"torchrun": (torchrun, "TorchElasticEnvironment"), "srun": (srun, "SLURMEnvironment")}


def run_two_nodes(tmp_path: Path, launcher: str, *overrides: str) -> None:
    """``train.py`` on two "machines" of one process each, both started at once."""
    port, (launch, _) = free_port(), LAUNCHERS[launcher]
    with ThreadPoolExecutor(2) as pool:  # list(): re-raises a node's failure
        list(pool.map(lambda node: run_train(tmp_path, *overrides, **launch(node, port)), (0, 1)))


def common(model_dir: Path) -> tuple[str, ...]:
    return ("experiment=smoke", "trainer.accelerator=cpu", f"model.path={model_dir}")


@pytest.fixture(scope="module")
def one_node(tmp_path_factory, tiny_model_dir) -> Path:
    """The run directory of ``trainer.devices=2`` on one node (Lightning starts the second process)."""
    tmp = tmp_path_factory.mktemp("one_node")
    run_train(tmp, *common(tiny_model_dir), "trainer.devices=2", "task_name=one_node")
    return only_run_dir(tmp, "one_node")


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_two_nodes_train_as_two_devices_on_one_node(tmp_path, tiny_model_dir, one_node, launcher):
    """2 nodes x 1 process vs 1 node x 2 devices, same seed and overrides: the same rollouts (each node
    sampling its own half), a sharded checkpoint with one shard per node, and the same final parameters."""
    record = tmp_path / "ranks"
    run_two_nodes(
        tmp_path,
        launcher,
        *common(tiny_model_dir),
        "trainer.devices=1",
        "trainer.num_nodes=2",
        "task_name=nodes",
        f"hydra.run.dir={tmp_path / 'outputs' / 'nodes' / 'runs' / 'shared'}",  # one run dir for both nodes
        "+callbacks.share._target_=tests.test_multinode.GenerationShare",
        f"+callbacks.share.record={record}",
    )
    nodes = only_run_dir(tmp_path, "nodes")

    ranks = [json.loads((record / f"rank{r}.json").read_text()) for r in range(2)]
    environment = LAUNCHERS[launcher][1]
    assert [(r["node"], r["world"], r["environment"]) for r in ranks] == [
        (0, 2, environment),
        (1, 2, environment),
    ]
    assert [r["sampled"] for r in ranks] == [8, 8]  # half of 8 prompts each, in each of 2 iterations
    for epoch in (0, 1):  # gathered: every prompt, as the one-node run sampled and scored them
        rows = (nodes / f"rollouts/epoch_{epoch}.jsonl").read_text()
        assert (
            len(rows.splitlines()) == 8 and rows == (one_node / f"rollouts/epoch_{epoch}.jsonl").read_text()
        )

    last = nodes / "checkpoints" / "last.ckpt"
    assert last.is_dir() and len(list(last.glob("*.distcp"))) == 2  # one shard per node
    assert (nodes / "hf_model" / "config.json").exists()  # rank 0 exported the policy from both shards
    from sppo_pl.module import load_policy

    start = load_policy(str(tiny_model_dir)).state_dict()
    want, got = _policy(one_node / "checkpoints" / "last.ckpt"), _policy(last)
    assert max(float((want[k] - start[k]).abs().max()) for k in want) > 1e-4  # it trained
    assert max(float((want[k] - got[k]).abs().max()) for k in want) < 1e-5
