"""`selfloop serve` in a real subprocess, talked to through the `openai` backend."""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from agent.backends import BackendConfig, SamplingParams, make_generator, user
from agent.backends.hf import TransformersGenerator
from agent.backends.openai_backend import OpenAIGenerator
from agent.errors import SelfloopError, UnsupportedError
from agent.models import ModelSpec
from tests.helpers import free_port, make_lora_adapter, start_server

PROMPTS = [user("Hi"), user("What is 2 + 2?"), user("Name three rivers in Europe.")]


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("serve")
    adapter = make_lora_adapter(tiny_model_dir, tmp / "tuned")
    port = free_port()
    proc = start_server(
        [
            "--model",
            str(tiny_model_dir),
            "--served-model-name",
            "tiny",
            "--adapter",
            f"tuned={adapter}",
            # float32 on both sides: in bfloat16 (dtype auto on a CPU with AVX512-BF16) a greedy
            # token can change with the rows it shares a batch with, and the two batch apart
            "--set",
            "model.dtype=float32",
        ],
        port,
        tmp / "server.log",
    )
    yield {"url": f"http://127.0.0.1:{port}/v1", "adapter": adapter}
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def local(tiny_model_dir: Path, server) -> TransformersGenerator:
    g = TransformersGenerator(ModelSpec(name=str(tiny_model_dir), dtype="float32"))
    g.load_adapter(server["adapter"], "tuned")
    return g


def client(server, **kw) -> OpenAIGenerator:
    return OpenAIGenerator("tiny", base_url=server["url"], max_retries=0, **kw)


def test_round_trip_matches_in_process_generation(server, local) -> None:
    params = SamplingParams(max_tokens=12)
    remote = client(server).generate(PROMPTS, params)
    here = local.generate(PROMPTS, params)
    assert [r.text for r in remote] == [r.text for r in here]
    assert [r.prompt_tokens for r in remote] == [r.prompt_tokens for r in here]
    assert [r.completions[0].finish_reason for r in remote] == [
        r.completions[0].finish_reason for r in here
    ]
    assert [r.completions[0].completion_tokens for r in remote] == [
        r.completions[0].completion_tokens for r in here
    ]


def test_adapter_is_a_model_id(server, local) -> None:
    params = SamplingParams(max_tokens=12)
    remote = client(server).generate(PROMPTS, params, adapter="tuned")
    assert [r.text for r in remote] == [
        r.text for r in local.generate(PROMPTS, params, adapter="tuned")
    ]
    assert [r.text for r in remote] != [r.text for r in local.generate(PROMPTS, params)]


def test_models_endpoint_lists_base_and_adapters(server) -> None:
    with urllib.request.urlopen(server["url"] + "/models") as r:
        ids = [m["id"] for m in json.load(r)["data"]]
    assert ids == ["tiny", "tuned"]


def test_n_samples_and_seed(server) -> None:
    params = SamplingParams(max_tokens=8, temperature=1.0, n=3, seed=7)
    a = client(server).generate(PROMPTS[:2], params)
    b = client(server).generate(PROMPTS[:2], params)
    assert all(len(r.completions) == 3 for r in a)
    assert [[c.text for c in r.completions] for r in a] == [
        [c.text for c in r.completions] for r in b
    ]


def test_stop_strings_pass_through(server, local) -> None:
    full = local.generate([PROMPTS[2]], SamplingParams(max_tokens=16))[0].text
    stop = full[3:5]
    r = client(server).generate([PROMPTS[2]], SamplingParams(max_tokens=16, stop=stop))[0]
    assert r.completions[0].finish_reason == "stop" and r.text == full[: full.index(stop)]


def test_next_token_logprobs_through_http(server, local) -> None:
    cands = ["1", "2", "3", "4", "5"]
    remote = client(server).next_token_logprobs(PROMPTS, cands)
    here = local.next_token_logprobs(PROMPTS, cands)
    for r, h in zip(remote, here):
        # The server returns the top 20; candidates outside them come back as -inf.
        for c in cands:
            assert r[c] == -math.inf or r[c] == pytest.approx(h[c], abs=1e-3)
        assert any(r[c] > -math.inf for c in cands) or all(h[c] < -3 for c in cands)


def test_continuation_logprobs_unsupported_over_http(server) -> None:
    with pytest.raises(UnsupportedError, match="transformers or vllm"):
        client(server).continuation_logprobs(PROMPTS[:1], ["x"])


def test_unseeded_requests_draw_fresh_samples(server) -> None:
    params = SamplingParams(max_tokens=12, temperature=1.0)
    texts = [client(server).generate(PROMPTS[:1], params)[0].text for _ in range(4)]
    assert len(set(texts)) > 1, texts  # seen before the fix: four identical answers


def test_unknown_model_is_a_per_request_error(server) -> None:
    g = OpenAIGenerator("nope", base_url=server["url"], max_retries=0)
    r = g.generate(PROMPTS[:1], SamplingParams(max_tokens=4))[0]
    assert not r.ok and "404" in r.error and "nope" in r.error and r.completions == []


@pytest.mark.parametrize(("field", "value"), [("top_p", 5), ("seed", 2**64)])
def test_bad_sampling_value_is_a_400(server, field: str, value: int) -> None:
    req = urllib.request.Request(
        server["url"] + "/chat/completions",
        data=json.dumps(
            {"model": "tiny", "messages": [{"role": "user", "content": "x"}], field: value}
        ).encode(),
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req)
    assert e.value.code == 400 and field in json.load(e.value)["error"]["message"]


def test_unreachable_endpoint_is_reported_per_request() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    g = OpenAIGenerator("tiny", base_url=url, max_retries=1, timeout=5)
    res = g.generate(PROMPTS[:2], SamplingParams(max_tokens=4))
    assert all(not r.ok for r in res)
    assert all(f"cannot reach {url}" in r.error for r in res)


def test_openai_backend_refuses_adapters_to_load() -> None:
    with pytest.raises(SelfloopError, match="cannot load adapters"):
        make_generator(
            "tiny",
            BackendConfig(kind="openai", base_url="http://127.0.0.1:1/v1"),
            adapters={"a": "x"},
        )
