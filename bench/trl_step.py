"""TRL's side of ``bench.train_step``: DPOTrainer with ``loss_type="sppo_hard"`` on the same texts, timed per
optimizer step. Run by ``bench.train_step`` in a subprocess with ``.venv/bench-trl`` on ``PYTHONPATH``."""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main(spec_path: str) -> None:
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    spec = json.loads(Path(spec_path).read_text())
    on_cpu = spec.get("device", "cpu") == "cpu"
    tok = AutoTokenizer.from_pretrained(spec["model"])
    rows = [
        {
            "prompt": tok.apply_chat_template(
                [{"role": "user", "content": t["prompt"]}], tokenize=False, add_generation_prompt=True
            ),
            "chosen": t["chosen"],
            "rejected": t["rejected"],
        }
        for t in spec["texts"]
    ]
    times: list[float] = []
    tokens: list[int] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t)

    with tempfile.TemporaryDirectory() as out:
        config = DPOConfig(
            output_dir=out,
            per_device_train_batch_size=len(rows),
            learning_rate=spec["lr"],
            beta=spec["beta"],
            loss_type=["sppo_hard"],
            precompute_ref_log_probs=True,
            max_steps=spec["repeats"] + 1,
            logging_steps=10_000,
            report_to=[],
            save_strategy="no",
            use_cpu=on_cpu,
            bf16=not on_cpu,  # on a GPU: bf16 mixed precision, as bench.train_step's own step
            seed=0,
        )
        model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype="float32")
        trainer = DPOTrainer(
            model=model,
            args=config,
            train_dataset=Dataset.from_list(rows),
            processing_class=tok,
            callbacks=[StepTimer()],
        )
        batch = next(iter(trainer.get_train_dataloader()))
        tokens = [int(batch["attention_mask"].sum()) if "attention_mask" in batch else -1]
        trainer.train()
    result = {
        "version": trl.__version__,
        "step_s": times[1:],
        "median_s": statistics.median(times[1:]),
        "tokens": tokens[0],
        "batch_keys": sorted(batch),
    }
    (Path(spec_path).parent / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
