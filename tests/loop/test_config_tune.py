"""Tuning settings the loop cannot run are refused when a run starts, naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from loop.config import ConfigError, check_loop_tune, load_config


def test_full_fine_tuning_is_refused_by_the_loop_not_by_selfloop_tune(tmp_path: Path) -> None:
    from loop.graph import run

    cfg = load_config(None, ["tune.method=full"])  # valid config: `selfloop tune` can use it
    with pytest.raises(ConfigError, match=r"tune\.method: full .*selfloop tune --method full"):
        check_loop_tune(cfg)
    with pytest.raises(ConfigError, match=r"tune\.method: full"):
        run(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_adapters_the_backend_cannot_serve_are_refused(monkeypatch) -> None:
    import agent.backends

    check_loop_tune(load_config(None, ["tune.method=prefix"]))  # transformers serves prefix
    with pytest.raises(ConfigError, match=r"tune\.method: prefix .*vLLM"):
        check_loop_tune(load_config(None, ["tune.method=prefix", "backend.kind=vllm"]))
    with pytest.raises(ConfigError, match=r"tune\.lora_r: 128 exceeds backend\.max_lora_rank 64"):
        check_loop_tune(load_config(None, ["tune.lora_r=128", "backend.kind=vllm"]))
    # backend.kind auto is judged by what it resolves to on this machine.
    auto = load_config(None, ["tune.method=prefix", "backend.kind=auto"])
    monkeypatch.setattr(agent.backends, "auto_kind", lambda: "transformers")
    check_loop_tune(auto)
    monkeypatch.setattr(agent.backends, "auto_kind", lambda: "vllm")
    with pytest.raises(ConfigError, match="prefix"):
        check_loop_tune(auto)
    check_loop_tune(load_config(None, ["tune.method=lora", "backend.kind=vllm"]))


def test_fsdp_is_refused_by_the_loop_which_trains_in_one_process() -> None:
    with pytest.raises(ConfigError, match=r"tune\.fsdp: a run trains in its own single process"):
        check_loop_tune(load_config(None, ["tune.fsdp=true"]))


def test_settings_this_machine_cannot_train_are_refused_when_the_run_starts(
    monkeypatch, tmp_path: Path
) -> None:
    """Not at round 1's tune stage, after proposing, answering and judging for minutes."""
    import torch

    from loop.graph import run

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("SELFLOOP_CPU_BF16", "0")
    for setting, message in (
        ("tune.method=qlora", r"config: tune\.method=qlora needs a CUDA GPU"),
        ("tune.bf16=true", r"config: tune\.bf16=true needs a CUDA GPU or a CPU with native"),
        ("model.device=cuda", r"config: model\.device is 'cuda' but no CUDA GPU"),
    ):
        cfg = load_config(None, [setting])
        with pytest.raises(ConfigError, match=message):
            check_loop_tune(cfg)
        with pytest.raises(ConfigError, match=message.removeprefix("config: ")):
            run(cfg, tmp_path / "run")
        assert not (tmp_path / "run").exists()  # refused before anything was written
    check_loop_tune(load_config(None, ["tune.bf16=auto", "tune.method=lora"]))


def test_a_student_behind_an_endpoint_is_refused_by_the_loop(tmp_path: Path) -> None:
    """Each round evaluates its adapter on the student; an endpoint cannot load one, and that
    would only surface at round 1's evaluate, after proposing, judging and tuning."""
    from loop.graph import run

    cfg = load_config(None, ["backend.kind=openai", "backend.base_url=http://127.0.0.1:9/v1"])
    with pytest.raises(ConfigError, match=r"config: backend\.kind: openai cannot be the student"):
        check_loop_tune(cfg)
    with pytest.raises(ConfigError, match=r"backend\.kind: openai"):
        run(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_judge_backend_without_a_judge_model_is_refused_by_the_loop() -> None:
    cfg = load_config(None, ["judge.backend.kind=transformers"])  # other commands ignore it
    with pytest.raises(ConfigError, match=r"config: judge\.backend is set but judge\.model"):
        check_loop_tune(cfg)
    cfg = load_config(
        None, ["judge.model.name=smollm2-135m-instruct", "judge.backend.kind=transformers"]
    )
    assert cfg.judge.backend is not None and cfg.judge.model is not None


def test_a_second_vllm_engine_must_fit_beside_the_students() -> None:
    judge = ["backend.kind=vllm", "judge.model.name=smollm2-135m-instruct"]
    with pytest.raises(
        ConfigError,
        match=r"the judge runs a second vLLM engine .* 0\.85 \+ 0\.85 \(judge\.backend unset",
    ):
        check_loop_tune(load_config(None, judge))  # the judge inherits the student's backend
    halves = ["backend.gpu_memory_utilization=0.45", "judge.backend.kind=vllm",
              "judge.backend.gpu_memory_utilization=0.45"]  # fmt: skip
    check_loop_tune(load_config(None, judge + halves))
    check_loop_tune(load_config(None, [*judge, "judge.backend.kind=transformers"]))
    teacher = ["backend.kind=vllm", "run.sources=[teacher]",
               "respond.teacher.name=smollm2-135m-instruct"]  # fmt: skip
    with pytest.raises(ConfigError, match=r"the teacher .* respond\.teacher_backend"):
        check_loop_tune(load_config(None, teacher))
    check_loop_tune(load_config(None, ["backend.kind=transformers", *teacher[1:]]))


def test_eval_suite_limits_override_the_common_limit_and_name_known_suites() -> None:
    cfg = load_config(None, ["eval.suite_limits={if: null, safety: 10}"])
    limits = cfg.eval.limits()
    assert limits["if"] is None and limits["safety"] == 10 and limits["domains"] == 24
    with pytest.raises(ConfigError, match=r"eval.suite_limits: 'ifevel' is not an evaluated"):
        load_config(None, ["eval.suite_limits={ifevel: null}"])
    # the default {if: null} does not trip a run that leaves the IF suite out
    no_if = load_config(None, ["eval.suites=[safety]", "gate.primary=safety.refusal_rate"])
    assert no_if.eval.limits() == {"safety": 24}


def test_the_win_rate_is_judged_only_where_it_can_tell_something() -> None:
    from loop.config import eval_pairwise

    assert not eval_pairwise(load_config(None))  # the student judging itself: a constant 0.5
    assert eval_pairwise(load_config(None, ["gate.primary=helpfulness.win_rate"]))
    guard = "gate.guards=[{metric: helpfulness.consistency_rate}]"
    assert eval_pairwise(load_config(None, [guard]))
    assert eval_pairwise(load_config(None, ["judge.model.name=some-judge"]))
    target = "run.target_metric=suites.helpfulness.metrics.win_rate.overall.value"
    assert eval_pairwise(load_config(None, [target, "run.target_value=0.6"]))
    assert eval_pairwise(load_config(None, ["eval.pairwise=true"]))
    with pytest.raises(ConfigError, match=r"gate.primary reads a pairwise metric.*eval.pairwise"):
        load_config(None, ["eval.pairwise=false", "gate.primary=helpfulness.win_rate"])


def test_rejected_rounds_data_is_carried_only_where_no_judge_picked_it() -> None:
    assert load_config(None).tune.carry_rejected is True  # constraints: checked by code
    assert load_config(None, ["run.sources=[constraints, import]"]).tune.carry_rejected is True
    for judged in ("[self_instruct]", "[constraints, teacher]"):
        assert load_config(None, [f"run.sources={judged}"]).tune.carry_rejected is False
    # said outright, either way, it holds
    explicit = ["run.sources=[self_instruct]", "tune.carry_rejected=true"]
    assert load_config(None, explicit).tune.carry_rejected is True
    assert load_config(None, ["tune.carry_rejected=false"]).tune.carry_rejected is False
    presets = Path(__file__).parents[2] / "configs"
    assert load_config(presets / "self-instruct.yaml").tune.carry_rejected is False


def test_the_greedy_step_is_on_for_the_recipe_and_off_where_it_cannot_run() -> None:
    assert load_config(None).tune.greedy_pairs == 2  # constraints, sft, lora
    assert load_config(None, ["tune.method=qlora"]).tune.greedy_pairs == 2
    for off in (["run.sources=[self_instruct]"], ["tune.objective=dpo"], ["tune.method=prefix"]):
        assert load_config(None, off).tune.greedy_pairs == 0, off
    # An explicit value stays (a run's saved config holds the resolved one); only sft LoRA
    # rounds act on it, so another objective or method still loads.
    assert load_config(None, ["tune.greedy_pairs=3"]).tune.greedy_pairs == 3
    assert load_config(None, ["tune.greedy_pairs=2", "tune.objective=rpo"]).tune.objective == "rpo"
    assert load_config(None, ["tune.greedy_pairs=0"]).tune.greedy_pairs == 0


def test_the_greedy_steps_micro_batches_add_up_to_the_sft_steps_pairs() -> None:
    from loop.stages.tune import greedy_step_config

    def step(*sets: str) -> tuple[int, int, str, float]:
        t = greedy_step_config(load_config(None, list(sets)).tune)
        return t.batch_size, t.grad_accum, t.objective, t.learning_rate

    assert step() == (2, 4, "rpo", 2e-4)  # 8 pairs an optimizer step, 2 a forward pass
    # 12 pairs a step in micro-batches of 8: two of them, 16 pairs
    assert step("tune.batch_size=4", "tune.grad_accum=3", "tune.greedy_batch_size=8")[:2] == (8, 2)
    assert step("tune.greedy_batch_size=16")[:2] == (8, 1)  # never more than a step's pairs


def test_greedy_repair_is_a_setting_and_never_repairs_a_held_out_type() -> None:
    from loop.stages.tune import greedy_repairer

    def clean(r: dict) -> None:
        return None

    assert greedy_repairer(load_config(None), clean) is None  # off by default
    cfg = load_config(None, ["tune.greedy_repair=true"])
    fix = greedy_repairer(cfg, clean)
    answer = {"response": "The Moon.", "finish_reason": "stop"}
    assert fix({**answer, "constraints": [{"type": "lowercase"}]}) == ("the moon.", ["lowercase"])
    held = load_config(None, ["tune.greedy_repair=true", "augment.held_out_types=[lowercase]"])
    assert greedy_repairer(held, clean)({**answer, "constraints": [{"type": "lowercase"}]}) is None
    dirty = greedy_repairer(cfg, lambda r: "repetitive")  # the quality filters have the last word
    assert dirty({**answer, "constraints": [{"type": "lowercase"}]}) is None
