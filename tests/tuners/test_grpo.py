"""GRPO through trl's GRPOTrainer with the verifier as the reward, on the tiny model: the reward
is the share of constraints passed, tasks are checked before anything is written, a run writes
the trained adapter with its reward figures, and the loop's grpo round trains on the prompts
that its samples passed only sometimes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from agent.errors import SelfloopError
from tuners import TuneConfig
from tuners.grpo import check_tasks, train_grpo, verifier_reward

TASKS = [
    {"id": f"t{k}", "instruction": q, "constraints": c}
    for k, (q, c) in enumerate(
        [
            ("Name a fruit.", [{"type": "lowercase"}]),
            ("Say hello.", [{"type": "max_words", "value": 4}]),
            ("Describe rain.", [{"type": "lowercase"}, {"type": "no_commas"}]),
            ("Count to three.", [{"type": "max_words", "value": 6}]),
        ]
    )
]


def test_the_reward_is_the_share_of_constraints_passed() -> None:
    rows = check_tasks(TASKS)
    assert rows[2]["prompt"] == [{"role": "user", "content": "Describe rain."}]
    cons = [rows[2]["constraints"]] * 3
    answers = ["soft grey water falling", "Soft, grey water", "soft, grey water"]
    completions = [[{"role": "assistant", "content": a}] for a in answers]
    assert verifier_reward([None] * 3, completions, cons) == [1.0, 0.0, 0.5]


def test_bad_tasks_are_refused_naming_the_task() -> None:
    with pytest.raises(SelfloopError, match=r"task 1 \(x\): no constraints"):
        check_tasks([{"id": "x", "instruction": "Hi.", "constraints": []}])
    with pytest.raises(SelfloopError, match="task 2: .*unknown type 'shout'"):
        check_tasks([TASKS[0], {"instruction": "Hi.", "constraints": [{"type": "shout"}]}])
    with pytest.raises(SelfloopError, match="task 1: needs an instruction"):
        check_tasks([{"constraints": [{"type": "lowercase"}]}])
    with pytest.raises(ValueError, match="multiple of it"):
        TuneConfig(objective="grpo", batch_size=3, grpo_generations=2)


def test_grpo_trains_an_adapter_on_the_verifier_reward(tiny_model_dir: Path, tmp_path: Path):
    cfg = TuneConfig(
        objective="grpo", max_steps=4, batch_size=4, grpo_generations=4, grpo_max_tokens=12,
        learning_rate=5e-3, lora_dropout=0.0, warmup_ratio=0.0, save_steps=100,
    )  # fmt: skip
    out = tmp_path / "adapter"
    result = train_grpo(str(tiny_model_dir), TASKS, out, cfg)
    assert result.steps == 4 and result.objective == "grpo" and result.examples == 4
    assert 0.0 <= result.preference["reward"] <= 1.0
    saved = json.loads((out / "train_metrics.json").read_text())
    assert saved["objective"] == "grpo" and "reward" in saved["preference"]
    # the reward per step, its last point the reported value
    assert [s for s, _ in saved["curves"]["reward"]] == [1, 2, 3, 4]
    assert saved["curves"]["reward"][-1][1] == saved["preference"]["reward"]
    weights = load_file(out / "adapter_model.safetensors")
    assert weights and all("lora" in k for k in weights)
    assert "prompts (verifier reward)" in (out / "README.md").read_text()
    with pytest.raises(SelfloopError, match="already exists"):
        train_grpo(str(tiny_model_dir), TASKS, out, cfg)
