"""A tiny randomly initialised Llama with a locally trained tokenizer, for smoke runs and tests.

Nothing is downloaded: a byte-level BPE tokenizer is trained on generated arithmetic text, given a
ChatML chat template, and saved beside a small ``LlamaForCausalLM`` (head size 64, which every vLLM
attention backend supports). The directory is cached: a second call with the same arguments returns it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def build_tokenizer(vocab_size: int = 512):
    """A byte-level BPE tokenizer trained on arithmetic prompts and answers, with ChatML specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from sppo_pl.data.arithmetic import arithmetic_dataset

    corpus = [
        f"{r['prompt']} The answer is \\boxed{{{r['answer']}}}." for r in arithmetic_dataset(500, seed=123)
    ]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus + ["user", "assistant", "system"], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHATML,
        model_max_length=1024,
    )


def build_tiny_model(
    out: str | Path,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 2,
    max_position_embeddings: int = 1024,
    initializer_range: float = 0.2,
    seed: int = 0,
    tie_word_embeddings: bool = True,
    models_dir: str | Path | None = None,
) -> Path:
    """Create (once) and return a directory holding a random tiny Llama and its tokenizer
    (``tie_word_embeddings=False``: an output head of its own, as in most models above 3B). With
    ``models_dir`` (``paths.models_dir``), a model to build must lie under it."""
    import torch
    from transformers import GenerationConfig, LlamaForCausalLM

    out = Path(out)
    spec = {
        "hidden": hidden_size,
        "layers": num_layers,
        "heads": num_heads,
        "ctx": max_position_embeddings,
        "seed": seed,
    }
    spec["init"] = initializer_range
    if not tie_word_embeddings:
        spec["tied"] = False
    if _cached(out, spec):
        return out
    check_target(out, models_dir)
    tokenizer = build_tokenizer()
    # initializer_range large enough that greedy decoding has clear winners
    config = _llama_config(
        tokenizer,
        hidden_size,
        num_layers,
        num_heads,
        max_position_embeddings,
        initializer_range,
        tie_word_embeddings=tie_word_embeddings,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    return _save(out, model, tokenizer, spec)


def build_tiny_classifier(
    out: str | Path,
    hidden_size: int = 64,
    num_layers: int = 2,
    seed: int = 0,
    models_dir: str | Path | None = None,
) -> Path:
    """Create (once) and return a directory holding a random tiny ``LlamaForSequenceClassification`` with one
    output and the same tokenizer: a stand-in reward model or pairwise preference model for tests. With
    ``models_dir``, a model to build must lie under it."""
    import torch
    from transformers import LlamaForSequenceClassification

    out = Path(out)
    spec = {"kind": "classifier", "hidden": hidden_size, "layers": num_layers, "seed": seed}
    if _cached(out, spec):
        return out
    check_target(out, models_dir)
    tokenizer = build_tokenizer()
    config = _llama_config(tokenizer, hidden_size, num_layers, 2, 2048, 0.2, num_labels=1)
    torch.manual_seed(seed)
    model = LlamaForSequenceClassification(config)
    return _save(out, model, tokenizer, spec)


def build_tiny_pairrm(out: str | Path, seed: int = 0, models_dir: str | Path | None = None) -> Path:
    """Create (once) and return a directory holding a random tiny PairRM in llm-blender/PairRM-hf's layout
    (:func:`sppo_pl.rewards.pairrm.build_tiny_pairrm`): the CPU twin's stand-in for ``llm-blender/PairRM``.
    With ``models_dir``, a model to build must lie under it."""
    from sppo_pl.rewards import pairrm

    out = Path(out)
    spec = {"kind": "pairrm", "seed": seed}
    if _cached(out, spec):
        return out
    check_target(out, models_dir)
    return _publish(out, lambda tmp: pairrm.build_tiny_pairrm(tmp, seed), spec)


def _llama_config(tokenizer, hidden: int, layers: int, heads: int, ctx: int, init: float, **extra):
    """A small Llama config over ``tokenizer`` (EOS ends turns, its own pad token, no BOS)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=ctx,
        initializer_range=init,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        **extra,
    )


def check_target(out: Path, models_dir: str | Path | None) -> None:
    """A tiny model may be built at ``out`` only under ``models_dir`` (when given), and only in place of
    nothing or of an earlier tiny model: the build replaces the directory, so anything else is refused."""
    from sppo_pl.utils.fetch_model import check_writes_under

    check_writes_under(out, models_dir)
    if out.exists() and not (out / "sppo_tiny.json").exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} exists and is not a tiny model built here: remove it, or build elsewhere")


def _cached(out: Path, spec: dict) -> bool:
    """``out`` is a complete tiny model built from ``spec`` (its stamp is written last, and moved in with it)."""
    try:
        return json.loads((out / "sppo_tiny.json").read_text()) == spec
    except (OSError, ValueError):  # none yet, or a peer replacing it this instant
        return False


def _save(out: Path, model, tokenizer, spec: dict) -> Path:
    """Write model, tokenizer and spec stamp to a temporary sibling, then move it into place."""

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return _publish(out, write, spec)


def _publish(out: Path, write, spec: dict) -> Path:
    """``write(tmp)`` into a temporary sibling of ``out``, stamp it with ``spec``, then move it into place.

    Every rank of a torchrun/srun launch may build the same model at once: a complete ``out`` with the same
    ``spec`` that a peer published meanwhile is kept (a peer may be loading it), and this copy dropped."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        write(tmp)
        (tmp / "sppo_tiny.json").write_text(json.dumps(spec))
        if not _cached(out, spec):
            shutil.rmtree(out, ignore_errors=True)  # an older tiny model (check_target refuses anything else)
            tmp.rename(out)
    except OSError:
        if not _cached(out, spec):  # the rename lost to a peer publishing the same model is no error
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
