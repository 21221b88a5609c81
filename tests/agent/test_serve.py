"""`selfloop serve` in a real subprocess, driven by the official `openai` client: streaming for
both endpoints, `/v1/completions` with echo/logprobs checked against the model's own
log-probabilities (what lm-evaluation-harness's `local-completions` reads), the tokenizer
endpoints, and the one-line errors of a bad or taken port."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from pathlib import Path

import openai
import pytest

from agent.backends import SamplingParams, user
from agent.backends.hf import TransformersGenerator
from agent.models import ModelSpec
from tests.helpers import free_port, make_lora_adapter, selfloop, start_server

CHAT = [user("Hi"), user("Name three rivers in Europe.")]
TEXT = ["The capital of France is", "Once upon a time, there was a"]


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("serve-openai")
    adapter = make_lora_adapter(tiny_model_dir, tmp / "tuned")
    port = free_port()
    # float32 pinned on both sides: logprobs are compared to 1e-4 (`auto` may pick bfloat16).
    args = ["--model", str(tiny_model_dir), "--served-model-name", "tiny"]
    args += ["--set", "model.dtype=float32"]
    proc = start_server([*args, "--adapter", f"tuned={adapter}"], port, tmp / "server.log")
    yield {"url": f"http://127.0.0.1:{port}", "adapter": adapter}
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def local(tiny_model_dir: Path, server) -> TransformersGenerator:
    g = TransformersGenerator(ModelSpec(name=str(tiny_model_dir), dtype="float32"))
    g.load_adapter(server["adapter"], "tuned")
    return g


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server["url"] + "/v1", api_key="unused", max_retries=0)


def post(server, path: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(
        server["url"] + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


@pytest.mark.parametrize("model", ["tiny", "tuned"])
def test_chat_stream_is_token_by_token_and_adds_up(client, local, model: str) -> None:
    adapter = None if model == "tiny" else "tuned"
    want = local.generate([CHAT[1]], SamplingParams(max_tokens=24), adapter=adapter)[0]
    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=CHAT[1],
            max_tokens=24,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert "".join(pieces) == want.text
    # One chunk per decoded token (a piece waits only for an unfinished UTF-8 character).
    assert len(pieces) >= want.completions[0].completion_tokens - 3 > 1
    finals = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finals == [want.completions[0].finish_reason]
    usage = chunks[-1].usage
    assert (
        chunks[-1].choices == []
        and usage.completion_tokens == want.completions[0].completion_tokens
    )
    assert chunks[-1].usage.prompt_tokens == want.prompt_tokens


def test_chat_stream_with_stop_string_and_n(client, local) -> None:
    full = local.generate([CHAT[1]], SamplingParams(max_tokens=16))[0].text
    stop = full[6:9]
    stream = client.chat.completions.create(
        model="tiny", messages=CHAT[1], max_tokens=16, temperature=0, n=2, stop=stop, stream=True
    )
    texts = {0: "", 1: ""}
    reasons = {}
    for chunk in stream:
        for ch in chunk.choices:
            texts[ch.index] += ch.delta.content or ""
            if ch.finish_reason:
                reasons[ch.index] = ch.finish_reason
    assert texts == {0: full[: full.index(stop)], 1: full[: full.index(stop)]}
    assert reasons == {0: "stop", 1: "stop"}


def test_completions_match_local_generation(client, local) -> None:
    tok = local.tokenizer
    r = client.completions.create(model="tiny", prompt=TEXT, max_tokens=8, temperature=0)
    want = local.generate_from_ids(
        [tok(p)["input_ids"] for p in TEXT], SamplingParams(max_tokens=8)
    )
    assert [c.index for c in r.choices] == [0, 1]
    assert [c.text for c in r.choices] == [w.text for w, _ in want]
    assert r.usage.prompt_tokens == sum(len(tok(p)["input_ids"]) for p in TEXT)
    assert r.usage.completion_tokens == 16


def test_completions_stream_adds_up_per_choice(client) -> None:
    kw = dict(model="tuned", prompt=TEXT, max_tokens=10, temperature=1.0, seed=5, n=2)
    whole = client.completions.create(**kw, echo=True)
    texts: dict[int, str] = {}
    reasons: dict[int, str] = {}
    for chunk in client.completions.create(**kw, echo=True, stream=True):
        for ch in chunk.choices:
            texts[ch.index] = texts.get(ch.index, "") + ch.text
            if ch.finish_reason:
                reasons[ch.index] = ch.finish_reason
    assert sorted(texts) == [0, 1, 2, 3] and set(reasons.values()) == {"length"}
    for i, p in enumerate(TEXT):
        for k in range(2):
            assert texts[2 * i + k].startswith(p) and len(texts[2 * i + k]) > len(p)
    # A streamed request samples its n choices one after another (seed, seed + 1, ...), the
    # plain one as one batch: the same prompts, not the same samples; each is reproducible.
    assert len({whole.choices[k].text for k in range(4)}) == 4
    assert texts == _stream_texts(client.completions.create(**kw, echo=True, stream=True))


def _stream_texts(stream) -> dict[int, str]:
    out: dict[int, str] = {}
    for chunk in stream:
        for ch in chunk.choices:
            out[ch.index] = out.get(ch.index, "") + ch.text
    return out


def _model_logprobs(tiny_model_dir: Path, ids: list[int]) -> list[tuple[float, float]]:
    """Straight from transformers: per position j >= 1, (log p(ids[j] | ids[:j]), the best
    log-probability at that position)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        logps = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
    return [(float(logps[j - 1, ids[j]]), float(logps[j - 1].max())) for j in range(1, len(ids))]


def test_echo_logprobs_are_the_models_own(client, local, tiny_model_dir: Path) -> None:
    prompt = "The quick brown fox jumps over the lazy dog."
    ids = local.tokenizer(prompt)["input_ids"]
    r = client.completions.create(
        model="tiny", prompt=prompt, max_tokens=0, echo=True, logprobs=3, temperature=0
    )
    c = r.choices[0]
    lp = c.logprobs
    assert c.text == prompt and r.usage.completion_tokens == 0
    assert lp.tokens == [local.tokenizer.decode([t]) for t in ids]
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    want = _model_logprobs(tiny_model_dir, ids)
    assert lp.token_logprobs[1:] == pytest.approx([w for w, _ in want], abs=1e-4)
    for top, (_, best) in zip(lp.top_logprobs[1:], want):
        assert max(top.values()) == pytest.approx(best, abs=1e-4) and 3 <= len(top) <= 4
    assert lp.text_offset == [len(local.tokenizer.decode(ids[:j])) for j in range(len(ids))]
    assert lp.text_offset[0] == 0 and lp.text_offset[1] == len(lp.tokens[0])


def test_lm_eval_loglikelihood_request(server, local, tiny_model_dir: Path) -> None:
    """The request lm-eval's local-completions sends for a log-likelihood (token ids, echo,
    max_tokens 1, logprobs 1), read the way its parse_logprobs reads it."""
    tok = local.tokenizer
    pairs = [("Question: 2 + 2 =", " 4"), ("The sky is", " blue and clear")]
    inputs, ctxlens = [], []
    for ctx, cont in pairs:
        ctx_ids = tok(ctx, add_special_tokens=False)["input_ids"]
        inputs.append(ctx_ids + tok(cont, add_special_tokens=False)["input_ids"])
        ctxlens.append(len(ctx_ids))
    status, out = post(
        server,
        "/v1/completions",
        {
            "model": "tiny",
            "prompt": inputs,
            "temperature": 0,
            "max_tokens": 1,
            "logprobs": 1,
            "seed": 1234,
            "echo": True,
        },
    )
    assert status == 200
    for choice, ids, ctxlen in zip(
        sorted(out["choices"], key=lambda c: c["index"]), inputs, ctxlens
    ):
        got = choice["logprobs"]["token_logprobs"][ctxlen:-1]
        tops = choice["logprobs"]["top_logprobs"][ctxlen:-1]
        want = _model_logprobs(tiny_model_dir, ids)[ctxlen - 1 :]
        assert sum(got) == pytest.approx(sum(w for w, _ in want), abs=1e-3)
        is_greedy = all(t == max(top.values()) for t, top in zip(got, tops))
        assert is_greedy == all(w == pytest.approx(b, abs=1e-5) for w, b in want)


def test_tokenizer_endpoints_round_trip(server, local) -> None:
    status, out = post(server, "/tokenize", {"prompt": "Hello there", "add_special_tokens": False})
    assert status == 200 and out["tokens"] == local.tokenizer("Hello there")["input_ids"]
    status, back = post(server, "/detokenize", {"tokens": out["tokens"]})
    assert status == 200 and back["prompt"] == "Hello there"
    with urllib.request.urlopen(server["url"] + "/tokenizer_info") as r:
        info = json.load(r)
    assert info["eos_token"] == local.tokenizer.eos_token and info["chat_template"]


def test_models_lists_base_and_adapters_with_parent(client) -> None:
    models = {m.id: m for m in client.models.list()}
    assert list(models) == ["tiny", "tuned"]
    assert models["tuned"].model_extra["parent"] == "tiny"


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"prompt": "x", "stream": True, "logprobs": 1}, 400, "not supported with stream"),
        ({"prompt": [10**9]}, 400, "outside the vocabulary"),
        ({"prompt": []}, 400, "no prompt"),
        ({"prompt": "x", "max_tokens": 600}, 400, "context of 512"),
        ({"prompt": "x", "model": "nope"}, 404, "nope"),
        ({"prompt": "x", "logprobs": 99}, 400, "logprobs"),
    ],
)
def test_bad_completion_requests(server, body: dict, status: int, words: str) -> None:
    got, out = post(server, "/v1/completions", {"model": "tiny", **body})
    assert got == status and words in out["error"]["message"]


def test_bad_port_is_one_error_line(tiny_model_dir: Path) -> None:
    r = selfloop("serve", "--model", str(tiny_model_dir), "--port", "99999", timeout=120)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == ["error: --port 99999: not a TCP port (1-65535)"]


def test_port_in_use_is_one_error_line(tiny_model_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = selfloop("serve", "--model", str(tiny_model_dir), "--port", str(port), timeout=120)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: port {port} on 127.0.0.1 is already")
