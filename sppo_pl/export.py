"""Export a trained policy to a Hugging Face directory that transformers and vLLM load.

``python -m sppo_pl.export CHECKPOINT OUT_DIR`` takes a Lightning checkpoint: a single file, or the folder
of a sharded (torch.distributed.checkpoint) one, which is read without a process group and only for the
policy's weights (never the optimizer state). The architecture, tokenizer and starting weights come from
the run's ``model_path``, stored in the checkpoint's hyper-parameters.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from sppo_pl.checkpoint import read_checkpoint

_PREFIX = "policy."


def checkpoint_model_path(ckpt: Path) -> str:
    """The ``model_path`` hyper-parameter saved with a checkpoint (file, or sharded folder's meta.pt)."""
    meta = read_checkpoint(ckpt)  # an empty, truncated or foreign file is an error naming it
    try:
        return meta["hyper_parameters"]["model_path"]
    except KeyError as e:
        raise ValueError(f"{ckpt}: no hyper_parameters.model_path; pass --model-path") from e


def sharded_weights_key(ckpt: Path) -> str:
    """The top-level key under which a sharded checkpoint folder holds the module's weights: ``state_dict``
    (FSDP2, Lightning's ModelParallelStrategy) or ``model`` (FSDP1, Lightning's FSDPStrategy with
    ``state_dict_type: sharded``), read from its metadata; else an error naming the folder."""
    import torch.distributed.checkpoint as dcp

    try:
        keys = dcp.FileSystemReader(str(ckpt)).read_metadata().state_dict_metadata
    except Exception as e:  # any unreadable metadata is reported the same way
        raise ValueError(f"{ckpt}: not a readable sharded checkpoint folder ({e})") from e
    for top in ("state_dict", "model"):
        if any(k.startswith(f"{top}.{_PREFIX}") for k in keys):
            return top
    raise ValueError(
        f"{ckpt}: a sharded checkpoint without policy weights (no 'state_dict.policy.*' or 'model.policy.*')"
    )


def load_policy_from_checkpoint(ckpt: str | Path, model_path: str | None = None) -> torch.nn.Module:
    """The policy as trained: its architecture from ``model_path``, its weights from the checkpoint, in the
    dtype it trained in (``module.dtype``, saved with the checkpoint; float32 when absent)."""
    from sppo_pl.module import load_policy

    ckpt = Path(ckpt)
    if not ckpt.exists():
        raise FileNotFoundError(f"checkpoint not found: {ckpt}")
    meta = read_checkpoint(ckpt)  # memory-mapped: a file's weights are read below, when touched
    dtype = meta.get("hyper_parameters", {}).get("dtype") or "float32"
    policy = load_policy(model_path or checkpoint_model_path(ckpt), dtype)
    if ckpt.is_dir():
        import torch.distributed.checkpoint as dcp

        # only the keys asked for are read, into these tensors (tied ones once)
        wanted = {_PREFIX + k: v for k, v in policy.state_dict(keep_vars=False).items()}
        dcp.load(
            {sharded_weights_key(ckpt): wanted}, checkpoint_id=str(ckpt), no_dist=True
        )  # this process alone
        return policy
    state = meta["state_dict"]
    weights = {k[len(_PREFIX) :]: v for k, v in state.items() if k.startswith(_PREFIX)}
    missing, unexpected = policy.load_state_dict(weights, strict=False)
    real_missing = [k for k in missing if not (k == "lm_head.weight" and policy.config.tie_word_embeddings)]
    if real_missing or unexpected:
        raise ValueError(
            f"{ckpt}: policy weights do not match {type(policy).__name__}: "
            f"missing {real_missing[:3]}, unexpected {unexpected[:3]}"
        )
    return policy


def export_hf(ckpt: str | Path, out: str | Path, model_path: str | None = None) -> Path:
    """Write ``out`` (config, safetensors weights, tokenizer, generation config) from a checkpoint."""
    from transformers import AutoTokenizer

    from sppo_pl.module import restore_dropout

    source = model_path or checkpoint_model_path(Path(ckpt))  # read once: the architecture and the tokenizer
    policy = load_policy_from_checkpoint(ckpt, source)
    bad = [n for n, t in policy.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise ValueError(f"{ckpt}: {len(bad)} weights are not finite (e.g. {bad[0]}): nothing exported")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    restore_dropout(policy.config, policy.zeroed_dropout)  # the exported config keeps the source's rates
    policy.save_pretrained(out)
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a .ckpt file or a sharded checkpoint folder")
    parser.add_argument("out", help="the Hugging Face directory to write")
    parser.add_argument("--model-path", default=None, help="default: the checkpoint's model_path")
    args = parser.parse_args(argv)
    print(export_hf(args.checkpoint, args.out, args.model_path))


if __name__ == "__main__":
    main()
