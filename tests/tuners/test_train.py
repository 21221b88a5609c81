"""The training entry point on a tiny random llama: every method, guards, artifacts, resume."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import TrainerCallback

from agent.errors import SelfloopError
from tests.helpers import TOY, cfg
from tuners import TrainingAborted, TuneConfig, train


class Snapshot(TrainerCallback):
    """Records which parameters changed between the start and the end of training."""

    def on_train_begin(self, args, state, control, model=None, **kw):
        self.before = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.trainable = {n for n, p in model.named_parameters() if p.requires_grad}

    def on_train_end(self, args, state, control, model=None, **kw):
        after = dict(model.named_parameters())
        self.changed = {n for n, t in self.before.items() if not torch.equal(t, after[n].detach())}


def _mean(xs):
    return sum(xs) / len(xs)


@pytest.mark.parametrize("method", ["lora", "prefix", "full"])
def test_each_method_learns_the_toy_set(tiny_model_dir: Path, tmp_path: Path, method: str) -> None:
    snap = Snapshot()
    out = tmp_path / "out"
    r = train(str(tiny_model_dir), TOY, out, cfg(method), callbacks=[snap])
    losses = [loss for _, loss in r.losses]
    assert r.steps == 16 and len(losses) == 16
    assert _mean(losses[-3:]) < 0.8 * _mean(losses[:3]), losses
    assert snap.changed == snap.trainable  # every trainable tensor moved, nothing else did
    if method == "full":
        assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    else:
        assert (out / "adapter_config.json").is_file() and (
            out / "adapter_model.safetensors"
        ).is_file()
        total = sum(p.numel() for p in snap.before.values())
        assert r.trainable_params < total / 2  # the base stayed frozen
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert metrics["steps"] == 16 and metrics["data_sha256"] == r.data_sha256 and r.tokens > 0
    assert metrics["precision"] == "float32"
    assert metrics["peak_memory_kind"] == "rss_sampled" and metrics["peak_memory_mb"] > 0
    assert not (out / "training_args.bin").exists()
    card = (out / "README.md").read_text()
    assert f"method: {method}" in card and r.data_sha256 in card
    from huggingface_hub import ModelCard

    meta = ModelCard.load(out / "README.md").data.to_dict()
    assert meta["library_name"] == ("transformers" if method == "full" else "peft")
    assert "selfloop" in meta["tags"] and method in meta["tags"]
    assert "base_model" not in meta  # a local test model has no public id
    if method != "full":
        base = json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"]
        assert base == tiny_model_dir.name  # portable: not a path on this machine
    assert not out.with_name("out.checkpoints").exists()  # cleaned up after success


def test_lora_adapter_loads_and_changes_generation(tiny_model_dir: Path, tmp_path: Path) -> None:
    from agent.backends import SamplingParams, user
    from agent.backends.hf import TransformersGenerator

    train(str(tiny_model_dir), TOY, tmp_path / "a", cfg("lora", max_steps=30))
    g = TransformersGenerator(str(tiny_model_dir))
    g.load_adapter(tmp_path / "a", "a")
    q = [user("Capital of France?")]
    tuned = g.generate(q, SamplingParams(max_tokens=4), adapter="a")[0].text
    assert tuned.startswith("Paris")  # memorized
    assert g.generate(q, SamplingParams(max_tokens=4))[0].text != tuned


def test_warm_start_continues_from_an_adapter(tiny_model_dir: Path, tmp_path: Path) -> None:
    first = train(str(tiny_model_dir), TOY, tmp_path / "r1", cfg("lora", max_steps=8))
    second = train(
        str(tiny_model_dir),
        TOY,
        tmp_path / "r2",
        cfg("lora", max_steps=8),
        init_adapter=tmp_path / "r1",
    )
    assert second.losses[0][1] < first.losses[0][1]  # starts where round 1 left off


def test_refuses_to_overwrite(tiny_model_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "done").mkdir()
    with pytest.raises(SelfloopError, match="refusing to overwrite"):
        train(str(tiny_model_dir), TOY, tmp_path / "done", cfg("lora"))


def test_guards_before_any_step(tiny_model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SELFLOOP_CPU_BF16", "0")  # a CPU without native bfloat16
    out = tmp_path / "runs"
    out.mkdir()
    cases = [
        ([], cfg("lora"), "training data is empty"),
        (TOY, cfg("lora", max_seq_len=4096), "exceeds the model's context of 512"),
        (TOY, cfg("lora", max_seq_len=16), "exceed tune.max_seq_len of 16"),
        (TOY, cfg("lora").model_copy(update={"method": "qlora"}), "qlora needs a CUDA GPU"),
        (TOY, cfg("lora", bf16=True), "tune.bf16=true needs a CUDA GPU or a CPU with native"),
        (TOY, cfg("lora", fsdp=True), "tune.fsdp needs CUDA GPUs"),
        (
            TOY,
            cfg("prefix").model_copy(update={"gradient_checkpointing": True}),
            "tune.gradient_checkpointing=true does not work with tune.method=prefix",
        ),
    ]
    for data, c, message in cases:
        with pytest.raises(SelfloopError, match=message):
            train(str(tiny_model_dir), data, out / "d", c)
        # Refused before anything was written: no checkpoints dir, fingerprint or partial.
        assert list(out.iterdir()) == [], (message, list(out.iterdir()))
    with pytest.raises(SelfloopError, match="has no adapter_config.json"):
        train(str(tiny_model_dir), TOY, out / "d", cfg("lora"), init_adapter=tmp_path)
    assert list(out.iterdir()) == []


def test_bf16_on_a_cpu_with_native_bfloat16(tiny_model_dir: Path, tmp_path: Path, monkeypatch):
    """On such a CPU, tune.bf16: true (and auto, for lora) trains under bfloat16 autocast with
    the adapters' sums and the head in float32 (tuners/precision.py)."""
    from tuners.guards import check_settings

    monkeypatch.setenv("SELFLOOP_CPU_BF16", "1")
    assert check_settings(TuneConfig(bf16="auto"), "cpu", None).bf16 is True
    on = check_settings(TuneConfig(bf16=True), "cpu", None)
    assert on.bf16 is True and on.float32_sums is True
    seen: dict[str, set[torch.dtype]] = {"product": set(), "sum": set(), "logits": set()}

    class Probe(TrainerCallback):  # the dtypes of one LoRA layer and of the head in training
        def on_train_begin(self, args, state, control, model=None, **kw):
            from peft.tuners.lora import LoraLayer

            layer = next(m for m in model.modules() if isinstance(m, LoraLayer))
            layer.lora_A["default"].register_forward_hook(
                lambda mod, inp, out: seen["product"].add(out.dtype)
            )
            layer.register_forward_hook(lambda mod, inp, out: seen["sum"].add(out.dtype))
            model.get_output_embeddings().register_forward_hook(
                lambda mod, inp, out: seen["logits"].add(out.dtype)
            )

    r = train(
        str(tiny_model_dir),
        TOY,
        tmp_path / "a",
        cfg("lora", bf16=True, max_steps=8),
        callbacks=[Probe()],
    )
    assert r.steps == 8 and all(loss == loss for _, loss in r.losses)  # finite, not NaN
    saved = json.loads((tmp_path / "a" / "train_metrics.json").read_text())
    assert r.precision == saved["precision"] == "bfloat16 autocast, float32 sums"
    assert _mean([x for _, x in r.losses][-3:]) < _mean([x for _, x in r.losses][:3]), r.losses
    # The products are bfloat16 (autocast); the sums the adapter's update joins, and the
    # logits, float32.
    assert seen == {"product": {torch.bfloat16}, "sum": {torch.float32}, "logits": {torch.float32}}


def test_settings_that_cannot_train_together_are_config_errors() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="tune.gradient_checkpointing=true does not work"):
        TuneConfig(method="prefix", gradient_checkpointing=True)
    with pytest.raises(ValidationError, match="tune.fsdp_config is set but tune.fsdp is false"):
        TuneConfig(fsdp_config={"cpu_offload": True})
    with pytest.raises(ValidationError, match="tune.fsdp does not support tune.method=qlora"):
        TuneConfig(method="qlora", fsdp=True)


def test_gradient_checkpointing_auto_is_off_for_prefix_tuning(monkeypatch) -> None:
    from tuners.guards import check_settings

    on_gpu = {
        m: check_settings(TuneConfig(method=m, bf16=False), "cuda", None)
        for m in ("lora", "prefix", "full")
    }
    assert on_gpu["lora"].grad_ckpt and on_gpu["full"].grad_ckpt
    assert not on_gpu["prefix"].grad_ckpt  # peft refuses prefix tuning under checkpointing
    assert not check_settings(TuneConfig(method="lora"), "cpu", None).grad_ckpt
    # FSDP only exists in a distributed launch: alone it would silently train unsharded.
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    with pytest.raises(
        SelfloopError, match="tune.fsdp shards across processes: launch with torchrun"
    ):
        check_settings(TuneConfig(fsdp=True, bf16=False), "cuda", None)
    monkeypatch.setenv("LOCAL_RANK", "0")
    fsdp = check_settings(TuneConfig(fsdp=True, bf16=False), "cuda", None)
    assert fsdp.fsdp_config == {"activation_checkpointing": True}  # FSDP's own, not the Trainer's


def test_qlora_loads_each_process_on_its_own_gpu(monkeypatch, tiny_model_dir: Path) -> None:
    # Without a device_map every torchrun process would load its 4-bit copy onto GPU 0.
    import peft
    import transformers

    from agent.models import resolve
    from tuners.train import _load_model

    seen: dict = {}

    def fake_from_pretrained(path, **kw):
        seen.update(kw)
        return SimpleNamespace(config=SimpleNamespace(_attn_implementation="eager"))

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake_from_pretrained)
    monkeypatch.setattr(peft, "prepare_model_for_kbit_training", lambda m, **kw: m)
    monkeypatch.setenv("LOCAL_RANK", "1")
    _load_model(
        resolve(str(tiny_model_dir)), TuneConfig(method="qlora"), grad_ckpt=True, packing=True
    )
    assert seen["device_map"] == {"": 1} and "quantization_config" in seen


def test_exploding_gradient_aborts_without_artifact(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainingAborted, match="gradient norm"):
        train(str(tiny_model_dir), TOY, tmp_path / "x", cfg("lora", abort_grad_norm=1e-6))
    assert not (tmp_path / "x").exists()


def test_non_finite_loss_aborts_without_artifact(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainingAborted, match="not finite|loss is nan|non-finite"):
        train(
            str(tiny_model_dir),
            TOY,
            tmp_path / "x",
            cfg("full", learning_rate=1e30, max_grad_norm=1e30, abort_grad_norm=1e38),
        )
    assert not (tmp_path / "x").exists()


class PoisonAt(TrainerCallback):
    """Turns the (frozen) input embeddings to NaN as step `at` begins: that step's loss is NaN."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_step_begin(self, args, state, control, model=None, **kw):
        if state.global_step + 1 == self.at:
            with torch.no_grad():
                model.get_input_embeddings().weight.fill_(float("nan"))


def test_nan_at_a_step_that_is_not_logged_aborts_before_a_checkpoint(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    from tuners.train import MARKER

    # Logged every 4 steps, checkpointed every step: the NaN of step 3 is neither logged nor
    # may it reach checkpoint-3 (transformers' default logging filter would hide it).
    c = cfg("lora", max_steps=8, logging_steps=4, save_steps=1, save_total_limit=10)
    with pytest.raises(TrainingAborted, match="step 3: the loss is not finite"):
        train(str(tiny_model_dir), TOY, tmp_path / "x", c, callbacks=[PoisonAt(3)])
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".x*"))
    ckpts = tmp_path / "x.checkpoints"
    done = sorted(int(p.parent.name.split("-")[1]) for p in ckpts.glob(f"checkpoint-*/{MARKER}"))
    assert done == [1, 2]
    for step in done:
        weights = load_file(ckpts / f"checkpoint-{step}" / "adapter_model.safetensors")
        assert all(torch.isfinite(t).all() for t in weights.values())


def test_peak_memory_is_the_runs_not_the_process_lifetime() -> None:
    import mmap
    import resource
    import time

    from tuners.memory import PeakMemory

    def touched(mb: int) -> mmap.mmap:
        # Fresh anonymous pages, written: resident whatever the allocator holds in reserve (a
        # malloc'd tensor can reuse freed heap that is resident already, as in a long test run).
        m = mmap.mmap(-1, mb * 2**20)
        m.write(b"\x01" * (mb * 2**20))
        return m

    touched(300).close()  # 300 MB, freed again: raises the lifetime peak only
    with PeakMemory("cpu") as quiet:
        time.sleep(0.2)
    with PeakMemory("cpu", interval=0.01) as busy:
        during = touched(200)
        time.sleep(0.3)
        during.close()
    lifetime = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert quiet.kind == busy.kind == "rss_sampled"
    assert quiet.peak_mb < lifetime - 200, (quiet.peak_mb, lifetime)
    assert busy.peak_mb > quiet.peak_mb + 150, (busy.peak_mb, quiet.peak_mb)


def test_merged_export_answers_like_base_plus_adapter(tiny_model_dir: Path, tmp_path: Path) -> None:
    from agent.backends import SamplingParams, user
    from agent.backends.hf import TransformersGenerator
    from agent.models import ModelSpec
    from tuners.export import merge_adapter

    train(str(tiny_model_dir), TOY, tmp_path / "a", cfg("lora", max_steps=10))
    merged = merge_adapter(str(tiny_model_dir), tmp_path / "a", tmp_path / "merged")
    assert not (merged / "adapter_config.json").exists() and (merged / "config.json").is_file()
    prompts = [user(q["messages"][0]["content"]) for q in TOY] + [user("Something new?")]
    params = SamplingParams(max_tokens=8)
    # Base plus the adapter as PEFT runs it (not the generator's own merged copy), in float32:
    # in bfloat16 the two roundings part the greedy answers after a few tokens.
    with_adapter = TransformersGenerator(
        ModelSpec(name=str(tiny_model_dir), dtype="float32"), merge_adapters=False
    )
    with_adapter.load_adapter(tmp_path / "a", "a")
    expected = [r.text for r in with_adapter.generate(prompts, params, adapter="a")]
    exported = TransformersGenerator(ModelSpec(name=str(merged), dtype="float32"))
    got = [r.text for r in exported.generate(prompts, params)]
    assert got == expected
    with pytest.raises(SelfloopError, match="refusing to overwrite"):
        merge_adapter(str(tiny_model_dir), tmp_path / "a", merged)


def test_warmup_is_a_share_of_the_run_rounded_down() -> None:
    from tuners.config import TuneConfig
    from tuners.train import _warmup_steps

    # 8 examples, batch 8, 3 epochs = 3 steps: no step wasted at learning rate 0.
    assert _warmup_steps(TuneConfig(batch_size=8, epochs=3), 8) == 0
    assert (
        _warmup_steps(TuneConfig(batch_size=4, epochs=1, grad_accum=2, warmup_ratio=0.1), 800) == 10
    )
    assert _warmup_steps(TuneConfig(max_steps=200, warmup_ratio=0.03), 5) == 6


def test_packed_padded_and_checkpointed_training_follow_the_same_curve(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Packing (per-example attention) changes the cost, not the training: the same loss at
    every step as padded batches, also with gradient checkpointing recomputing the layers."""
    runs = {
        name: train(str(tiny_model_dir), TOY, tmp_path / name, cfg("lora", max_steps=6, **kw))
        for name, kw in {
            "packed": {},
            "padded": {"packing": False},
            "packed_ckpt": {"gradient_checkpointing": True},
        }.items()
    }
    curves = {name: [loss for _, loss in r.losses] for name, r in runs.items()}
    assert len(curves["packed"]) == 6
    for name in ("padded", "packed_ckpt"):
        assert curves[name] == pytest.approx(curves["packed"], rel=1e-4, abs=1e-5), name
    assert curves["packed"][-1] < curves["packed"][0]  # and it trained


def test_several_gpus_in_one_process_are_refused_for_packed_rows(monkeypatch) -> None:
    """Without torchrun the Trainer would use nn.DataParallel, which cuts a packed row's 1-D
    tensors (logits_to_keep, cu_seq_lens) apart across the GPUs."""
    from tuners.guards import check_settings

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(SelfloopError, match="2 GPUs are visible to one process: launch with"):
        check_settings(TuneConfig(bf16=False), "cuda", None)
    check_settings(TuneConfig(bf16=False, packing=False), "cuda", None)  # padded batches split
    monkeypatch.setenv("LOCAL_RANK", "0")
    check_settings(TuneConfig(bf16=False), "cuda", None)  # torchrun: one GPU per process
