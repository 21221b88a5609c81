"""Model resolution: every kind of spec, the conversion cache, and the one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from agent.cache import MANIFEST, check_entry, materialize
from agent.errors import ModelResolutionError
from agent.models import ModelSpec, bundled_gguf_path, check_gguf, load_model, resolve


def test_local_directory_resolves_to_itself(tiny_model_dir: Path) -> None:
    r = resolve(str(tiny_model_dir))
    assert r.kind == "dir" and r.path == tiny_model_dir.resolve()


def test_model_loads_with_chat_template(tiny_model_dir: Path) -> None:
    model, tok, _ = load_model(ModelSpec(name=str(tiny_model_dir)))
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert "<|im_start|>assistant" in text  # SmolLM2's ChatML template came with the tokenizer
    assert not model.training


def test_model_chat_template_for_a_model_without_one(tiny_model_dir: Path, tmp_path: Path) -> None:
    from agent.models import load_tokenizer

    bare = tmp_path / "bare"
    shutil.copytree(tiny_model_dir, bare)
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((bare / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelResolutionError, match="no chat template.*model.chat_template"):
        load_tokenizer(resolve(str(bare)))
    template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}<assistant>"
    (tmp_path / "t.jinja").write_text(template)
    for given in (template, str(tmp_path / "t.jinja")):
        tok = load_tokenizer(resolve(ModelSpec(name=str(bare), chat_template=given)))
        text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
        assert text == "<user>hi\n<assistant>"
    # it replaces a model's own template too, and a path that is not there is named
    tok = load_tokenizer(resolve(ModelSpec(name=str(tiny_model_dir), chat_template=template)))
    assert tok.chat_template == template
    with pytest.raises(ModelResolutionError, match="model.chat_template: 'nope.jinja'"):
        load_tokenizer(resolve(ModelSpec(name=str(bare), chat_template="nope.jinja")))


@pytest.mark.parametrize(
    "name, needle",
    [
        ("no-such-model", "unknown model 'no-such-model'"),
        ("./missing/dir", "model path not found"),
        ("/tmp/definitely-missing.gguf", "model path not found"),
        ("", "model name is empty"),
    ],
)
def test_bad_specs_give_one_line_errors(name: str, needle: str) -> None:
    with pytest.raises(ModelResolutionError) as e:
        resolve(name)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_hub_id_offline_says_what_to_do() -> None:
    with pytest.raises(ModelResolutionError) as e:
        resolve("someorg/some-model-that-is-not-cached")
    msg = str(e.value)
    assert "Hub id" in msg and "HF_HUB_OFFLINE" in msg and "--local-dir" in msg and "\n" not in msg


def test_directory_without_config(tmp_path: Path) -> None:
    with pytest.raises(ModelResolutionError, match="no config.json"):
        resolve(str(tmp_path))


def test_non_gguf_file_rejected(tmp_path: Path) -> None:
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x" * 10)
    with pytest.raises(ModelResolutionError, match="not a .gguf file"):
        resolve(str(f))


def test_truncated_gguf_is_reported(tmp_path: Path) -> None:
    src = bundled_gguf_path("smollm2-135m-instruct")
    cut = tmp_path / "cut.gguf"
    with src.open("rb") as f:
        cut.write_bytes(f.read(2_000_000))
    with pytest.raises(ModelResolutionError) as e:
        resolve(str(cut))
    assert "truncated" in str(e.value) and str(cut) in str(e.value)


def test_garbage_gguf_is_reported(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"NOTAGGUF" * 100)
    with pytest.raises(ModelResolutionError, match="not a GGUF file"):
        resolve(str(bad))


def test_bundled_gguf_is_intact() -> None:
    check_gguf(bundled_gguf_path("smollm2-135m-instruct"))  # raises on a broken install


def test_trust_remote_code_is_never_implied() -> None:
    assert ModelSpec().trust_remote_code is False
    assert ModelSpec(name="x").trust_remote_code is False


# ---------------------------------------------------------------- the cache, with a cheap builder
def _builder(calls: list[int], tiny: Path):
    def build(out: Path) -> None:
        calls.append(1)
        for f in tiny.iterdir():
            shutil.copy(f, out / f.name)

    return build


def test_cache_builds_once_and_reuses(tmp_path: Path, tiny_model_dir: Path) -> None:
    calls: list[int] = []
    a = materialize(tmp_path, "k", _builder(calls, tiny_model_dir))
    b = materialize(tmp_path, "k", _builder(calls, tiny_model_dir))
    assert a == b and calls == [1] and check_entry(a) is None
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.parametrize(
    "damage",
    [
        "truncate",
        "no-manifest",
        "delete-file",
        "bad-header",
        "garbage-weights",
        "garbage-tokenizer",
    ],
)
def test_corrupt_cache_is_detected_and_rebuilt(
    tmp_path: Path, tiny_model_dir: Path, damage: str
) -> None:
    calls: list[int] = []
    entry = materialize(tmp_path, "k", _builder(calls, tiny_model_dir))
    weights = entry / "model.safetensors"
    if damage == "truncate":
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
    elif damage == "no-manifest":
        (entry / MANIFEST).unlink()
    elif damage == "delete-file":
        weights.unlink()
    elif damage == "bad-header":  # same size, garbage header: the header check catches it
        data = bytearray(weights.read_bytes())
        data[8:40] = b"}" * 32
        weights.write_bytes(bytes(data))
    elif damage == "garbage-weights":  # same size, header intact: only the SHA-256 catches it
        data = bytearray(weights.read_bytes())
        data[-4096:] = b"\0" * 4096
        weights.write_bytes(bytes(data))
    else:  # a same-size tokenizer.json of garbage (it loaded as a traceback)
        tok = entry / "tokenizer.json"
        tok.write_bytes(b"x" * tok.stat().st_size)
    assert check_entry(entry) is not None
    again = materialize(tmp_path, "k", _builder(calls, tiny_model_dir))
    assert calls == [1, 1] and check_entry(again) is None


def test_interrupted_build_leaves_no_entry(tmp_path: Path) -> None:
    def boom(out: Path) -> None:
        (out / "model.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt  # a kill in the middle of a conversion

    with pytest.raises(KeyboardInterrupt):
        materialize(tmp_path, "k", boom)
    assert list(tmp_path.iterdir()) == []


def test_manifest_lists_sizes_and_hashes(tmp_path: Path, tiny_model_dir: Path) -> None:
    from agent.cache import file_sha256

    entry = materialize(tmp_path, "k", _builder([], tiny_model_dir), meta={"source": "x"})
    manifest = json.loads((entry / MANIFEST).read_text())
    weights = entry / "model.safetensors"
    assert manifest["meta"] == {"source": "x"}
    assert manifest["files"]["model.safetensors"] == weights.stat().st_size
    assert manifest["sha256"]["model.safetensors"] == file_sha256(weights)


def test_an_entry_from_before_hashes_gets_them_without_a_rebuild(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    calls: list[int] = []
    entry = materialize(tmp_path, "k", _builder(calls, tiny_model_dir))
    manifest = json.loads((entry / MANIFEST).read_text())
    del manifest["sha256"]
    (entry / MANIFEST).write_text(json.dumps(manifest))
    assert check_entry(entry) is None
    assert "sha256" in json.loads((entry / MANIFEST).read_text())
    (entry / "config.json").write_text(" " * (entry / "config.json").stat().st_size)
    assert "config.json does not match its SHA-256" in check_entry(entry)
    materialize(tmp_path, "k", _builder(calls, tiny_model_dir))
    assert calls == [1, 1]


def test_a_killed_build_leaves_no_temporary_directory_behind(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    import os
    import subprocess
    import sys
    import time

    from agent import cache
    from agent.cache import STALE_TMP_SECONDS, remove_stale_builds

    # A process that has exited: its pid is free (reused within this test only by bad luck).
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    pid = int(dead.stdout)
    gone = tmp_path / f".tmp-k-{cache.HOST}-{pid}-0123abcd"  # its process was killed
    alive = tmp_path / f".tmp-k-{cache.HOST}-{os.getpid()}-0123abcd"  # still building
    other = tmp_path / ".tmp-k-ffffffff-1-0123abcd"  # another machine's, recent
    old = tmp_path / ".tmp-k-1-0123abcd"  # an older selfloop's name, two days old
    for d in (gone, alive, other, old):
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"partial")
    two_days_ago = time.time() - 2 * STALE_TMP_SECONDS
    os.utime(old, (two_days_ago, two_days_ago))
    assert sorted(remove_stale_builds(tmp_path)) == sorted([gone, old])
    assert alive.is_dir() and other.is_dir()
    # materialize clears them on its way to building an entry.
    gone.mkdir()
    materialize(tmp_path, "k", _builder([], tiny_model_dir))
    assert not gone.exists()


def test_a_damaged_tokenizer_in_the_cache_says_how_to_rebuild(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    from agent.models import ResolvedModel, load_tokenizer

    entry = tmp_path / "entry"
    shutil.copytree(tiny_model_dir, entry)
    (entry / "tokenizer.json").write_text('{"version": "1.0", "model": 7}')
    with pytest.raises(ModelResolutionError) as e:
        load_tokenizer(ResolvedModel(ModelSpec(), "gguf", entry, "x.gguf"))
    assert f"cannot load the tokenizer in {entry}" in str(e.value)
    assert f"delete {entry} and it is converted again" in str(e.value)


# ---------------------------------------------------------------- dtype; the bundled files' hashes
def test_auto_dtype_is_bfloat16_only_where_the_hardware_has_it(monkeypatch) -> None:
    import torch

    from agent.models import pick_dtype

    monkeypatch.setenv("SELFLOOP_CPU_BF16", "1")
    assert pick_dtype(ModelSpec(), "cpu") is torch.bfloat16
    assert pick_dtype(ModelSpec(dtype="float32"), "cpu") is torch.float32  # asked for: kept
    monkeypatch.setenv("SELFLOOP_CPU_BF16", "0")
    assert pick_dtype(ModelSpec(), "cpu") is torch.float32  # emulated bfloat16 is slower
    assert pick_dtype(ModelSpec(dtype="bfloat16"), "cpu") is torch.bfloat16
    assert pick_dtype(ModelSpec(), "mps") is torch.float32


def test_a_bundled_file_that_is_not_the_published_one_is_refused(tmp_path: Path) -> None:
    from agent.models import convert_gguf

    src = bundled_gguf_path("smollm2-135m-instruct")
    with pytest.raises(ModelResolutionError, match="published SHA-256"):
        convert_gguf(src, tmp_path, expected_sha256="0" * 64)
    assert not (tmp_path / "models").exists()  # refused before anything was converted


def test_the_bundled_embedder_weights_are_checked(tmp_path: Path) -> None:
    from agent.errors import SelfloopError
    from judges.embed import _check_weights, resolve_embedding_model

    resolve_embedding_model("all-minilm-l6-v2")  # the installed file matches its hash
    fake = tmp_path / "model.safetensors"
    fake.write_bytes(b"\0" * 64)
    with pytest.raises(SelfloopError, match="published SHA-256"):
        _check_weights(fake, "0" * 64)
