"""Every generating section samples through one `sampling:` block; old flat keys still load."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from agent.backends import SamplingParams
from loop.config import ConfigError, dump_config, load_config


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_propose_respond_and_eval_each_take_a_sampling_block(tmp_path: Path) -> None:
    cfg = load_config(
        _write(
            tmp_path,
            "propose:\n  sampling: {temperature: 0.5, max_tokens: 300}\n"
            "respond:\n  sampling: {temperature: 0.8}\n"
            "eval:\n  sampling: {max_tokens: 77}\n",
        )
    )
    assert cfg.propose.sampling == SamplingParams(max_tokens=300, temperature=0.5, top_p=0.95)
    # keys a block leaves out keep the section's defaults, not SamplingParams' own
    assert cfg.respond.sampling == SamplingParams(max_tokens=320, temperature=0.8, top_p=1.0)
    assert load_config(None, ["respond.sampling.top_p=0.5"]).respond.sampling.max_tokens == 320
    assert cfg.eval.sampling == SamplingParams(max_tokens=77)  # greedy unless said otherwise
    # the defaults (propose: the settings its flat keys had; eval: 400 tokens, as IF prompts need)
    default = load_config(None)
    assert default.propose.sampling == SamplingParams(max_tokens=400, temperature=0.9, top_p=0.95)
    assert default.eval.sampling == SamplingParams(max_tokens=400)


def test_old_flat_keys_load_into_the_block_and_say_where_they_moved(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _write(tmp_path, "propose:\n  temperature: 0.3\n  top_p: 0.5\neval:\n  max_tokens: 99\n")
    with caplog.at_level(logging.WARNING):
        cfg = load_config(path, ["propose.max_tokens=123"])
    assert cfg.propose.sampling == SamplingParams(max_tokens=123, temperature=0.3, top_p=0.5)
    assert cfg.eval.sampling.max_tokens == 99
    assert "write it as propose.sampling.temperature" in caplog.text
    assert "eval.max_tokens is deprecated; write it as eval.sampling.max_tokens" in caplog.text
    assert "max_tokens: 123" in dump_config(cfg).split("propose:")[1]  # dumped the new way


def test_a_key_given_both_ways_takes_the_sampling_block_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # an old run's saved config with a new-style override (`eval --run OLD --set ...`)
    path = _write(tmp_path, "eval:\n  max_tokens: 99\n")
    with caplog.at_level(logging.WARNING):
        cfg = load_config(path, ["eval.sampling.max_tokens=50"])
    assert cfg.eval.sampling.max_tokens == 50
    assert "eval.max_tokens and eval.sampling.max_tokens are both set" in caplog.text


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("propose.sampling.seed=3", "drawn from propose.seed"),
        ("propose.sampling.n=2", "sampling.n must be 1"),
        ("propose.sampling.max_tokens=8", "must be >= 16"),
        ("eval.sampling.n=3", "one scored answer"),
        ("eval.sampling.max_tokens=4", "must be >= 8"),
    ],
)
def test_sampling_a_section_cannot_use_is_refused(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_a_run_saved_with_flat_keys_resumes_with_the_same_config_written_nested(
    tmp_path: Path,
) -> None:
    from loop.graph import config_changed
    from loop.rundir import RunDir

    rd = RunDir(tmp_path / "run")
    rd.root.mkdir()
    rd.config_path.write_text("propose:\n  temperature: 0.3\neval:\n  max_tokens: 99\n")
    same = load_config(
        _write(
            tmp_path,
            "propose:\n  sampling: {temperature: 0.3}\neval:\n  sampling: {max_tokens: 99}\n",
        )
    )
    assert not config_changed(rd, same)
    assert config_changed(rd, load_config(None, ["eval.sampling.max_tokens=98"]))
