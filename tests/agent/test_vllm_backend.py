"""The vllm backend: a clear error where it cannot run; real generation with vllm and a GPU."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.backends import BackendConfig, SamplingParams, make_generator, user
from agent.backends.vllm_backend import vllm_available
from agent.errors import SelfloopError

problem = vllm_available()


@pytest.mark.skipif(
    problem is None, reason="vllm and a GPU are present; the error path cannot occur"
)
def test_clear_error_without_vllm_or_gpu(tiny_model_dir: Path) -> None:
    with pytest.raises(SelfloopError) as e:
        make_generator(str(tiny_model_dir), BackendConfig(kind="vllm"))
    assert str(e.value) == problem and ("pip install" in problem or "CUDA" in problem)


@pytest.mark.gpu
@pytest.mark.skipif(problem is not None, reason=f"needs vllm and a CUDA GPU: {problem}")
def test_vllm_matches_transformers_greedy(tiny_model_dir: Path) -> None:
    from agent.backends.hf import TransformersGenerator

    prompts = [user("Hi"), user("What is 2 + 2?")]
    params = SamplingParams(max_tokens=8)
    v = make_generator(str(tiny_model_dir), BackendConfig(kind="vllm", gpu_memory_utilization=0.3))
    got = v.generate(prompts, params)
    assert all(r.ok and r.completions[0].completion_tokens > 0 for r in got)
    lp = v.continuation_logprobs(prompts, ["Four.", "Hello."])
    assert all(len(x) > 0 and all(t <= 0 for t in x) for x in lp)
    v.close()
    ref = TransformersGenerator(str(tiny_model_dir)).continuation_logprobs(
        prompts, ["Four.", "Hello."]
    )
    assert [sum(x) for x in lp] == pytest.approx([sum(x) for x in ref], abs=0.05)


def test_auto_backend_picks_vllm_only_where_it_can_run(tiny_model_dir: Path) -> None:
    from agent.backends import auto_kind

    assert auto_kind() == ("vllm" if problem is None else "transformers")
    if problem is not None:  # here: the batched transformers backend, and it generates
        gen = make_generator(str(tiny_model_dir), BackendConfig(kind="auto"))
        assert type(gen).__name__ == "TransformersGenerator"
        assert gen.generate([user("Hi")], SamplingParams(max_tokens=3))[0].ok
