"""An OpenAI-compatible server over a local model: `/v1/chat/completions`, `/v1/completions`,
`/v1/models`, and vLLM-style `/tokenize`, `/detokenize` and `/tokenizer_info`.

It lets a person try a tuned model from any OpenAI client, lets lm-evaluation-harness's
`local-completions` and `local-chat-completions` models evaluate it, and it is the real server
the `openai` backend is tested against. The base model is served under its name and every
loaded adapter under its own name, selected through the request's `model` field.

`/v1/completions` takes a raw-text prompt (no chat template), a list of them, or token ids;
with `echo` and `logprobs` it returns the log-probabilities of the prompt's own tokens too
(`max_tokens: 0` scores the prompt alone), which is how lm-eval computes log-likelihoods. Those
numbers come from one forward pass over prompt + completion, the same pass the judges use.

`stream: true` streams for real: the model's streamer hands every decoded token to the response
as it is produced (Server-Sent Events, `data: {chunk}` lines, then `data: [DONE]`). A streamed
request with `n` > 1 samples its completions one after another (seed, seed + 1, ...), so its
samples are not the ones the same request without `stream` returns (those are decoded as one
batch). `logprobs` cannot be streamed (a 400 says so).

One request runs at a time (the model and its tokenizer are not thread-safe); the others wait.
"""

from __future__ import annotations

import errno
import json
import logging
import queue
import secrets
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.backends.base import Completion, GenerationResult, SamplingParams
from agent.backends.hf import TransformersGenerator
from agent.errors import SelfloopError, describe_validation

log = logging.getLogger(__name__)

Emit = Callable[[dict[str, Any]], None]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: str


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class _Sampling(BaseModel):
    """The request fields both endpoints share."""

    model_config = ConfigDict(extra="ignore")  # unknown OpenAI fields (user, tools...) are ignored
    model: str
    n: int = Field(1, ge=1, le=64)
    temperature: float = Field(1.0, ge=0, le=2)  # the OpenAI default
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)  # beyond int64: a 400, not a 500
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)


class CompletionRequest(_Sampling):
    # A string, a list of strings, one prompt as token ids, or a list of those (what lm-eval
    # sends by default: it tokenizes on its side).
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=0)  # the OpenAI default; 0 = score the prompt only
    logprobs: int | None = Field(None, ge=0, le=20)  # top-k per token, as in the legacy API
    echo: bool = False


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    prompt: str
    add_special_tokens: bool = True


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    tokens: list[int]


def create_app(
    generator: TransformersGenerator, served_name: str | None = None, default_max_tokens: int = 512
):
    """The FastAPI app serving `generator`'s base model (as `served_name`) and its adapters.
    `default_max_tokens` bounds a chat request that names no limit; a completion request
    without one gets OpenAI's 16."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse

    base_name = served_name or generator.model_name
    tok = generator.tokenizer
    lock = threading.Lock()
    app = FastAPI(title="selfloop serve")

    def error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status)

    def stream(run: Callable[[Emit, Callable[[], bool]], None]) -> StreamingResponse:
        return StreamingResponse(_sse(run, lock), media_type="text/event-stream")

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"] if p != "body")
        return error(400, f"{where}: {first['msg']}")

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        def card(name: str, parent: str | None) -> dict[str, Any]:
            return {
                "id": name,
                "object": "model",
                "created": 0,
                "owned_by": "selfloop",
                "root": base_name,
                "parent": parent,
            }

        return {
            "object": "list",
            "data": [card(base_name, None)] + [card(a, base_name) for a in generator.adapters],
        }

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    # lm-eval's `local-completions` asks these (at the server's root, as vLLM has them) to
    # tokenize on its side with the served model's own tokenizer.
    @app.get("/tokenizer_info")
    def tokenizer_info() -> dict[str, Any]:
        return {
            "tokenizer_class": type(tok).__name__,
            "eos_token": tok.eos_token,
            "bos_token": tok.bos_token,
            "pad_token": tok.pad_token,
            "chat_template": tok.chat_template,
            "model_max_length": generator.context,
        }

    @app.post("/tokenize")
    def tokenize(req: TokenizeRequest) -> dict[str, Any]:
        with lock:
            ids = tok(req.prompt, add_special_tokens=req.add_special_tokens)["input_ids"]
        return {"tokens": ids, "count": len(ids), "max_model_len": generator.context}

    @app.post("/detokenize")
    def detokenize(req: DetokenizeRequest) -> Any:
        if bad := _bad_ids(req.tokens, len(tok)):
            return error(400, f"tokens: {bad}")
        with lock:
            return {"prompt": tok.decode(req.tokens)}

    def resolve(model: str) -> tuple[str | None, JSONResponse | None]:
        """The adapter a request's `model` names (None = the base model), or a 404."""
        if model == base_name:
            return None, None
        if model in generator.adapters:
            return model, None
        known = ", ".join([base_name, *generator.adapters])
        return None, error(404, f"model {model!r} not found (serving: {known})", "not_found_error")

    def sampling(req: _Sampling, max_tokens: int) -> SamplingParams:
        stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            top_k=req.top_k,
            n=req.n,
            # An unseeded request draws fresh randomness: the backend restores its RNG
            # state after each call (a seeded call must not disturb the caller's), so
            # without a seed every request would repeat the first one's samples.
            seed=req.seed if req.seed is not None else secrets.randbits(63),
            stop=stop,
        )

    @app.post("/v1/chat/completions")
    def chat(req: ChatRequest) -> Any:
        adapter, not_found = resolve(req.model)
        if not_found:
            return not_found
        if req.stream and req.logprobs:
            return error(400, "logprobs: not supported with stream; ask without stream")
        try:
            params = sampling(
                req, req.max_completion_tokens or req.max_tokens or default_max_tokens
            )
        except ValueError as e:  # pydantic's ValidationError is a ValueError
            return error(400, describe_validation(e))
        messages = [m.model_dump() for m in req.messages]
        head = _head("chatcmpl", "chat.completion", req.model)
        if req.stream:
            with lock:
                ids = generator.encode_prompt(messages)
            if too_long := generator._too_long(len(ids), params):
                return error(400, too_long)
            usage = req.stream_options is not None and req.stream_options.include_usage

            def run(emit: Emit, stopped: Callable[[], bool]) -> None:
                def chunk(k: int, delta: dict[str, Any], finish: str | None = None) -> None:
                    choice = {"index": k, "delta": delta, "logprobs": None, "finish_reason": finish}
                    emit({**head, "object": "chat.completion.chunk", "choices": [choice]})

                for k in range(params.n):
                    chunk(k, {"role": "assistant", "content": ""})
                comps = _stream_choices(
                    generator,
                    ids,
                    params,
                    adapter,
                    stopped,
                    lambda ks, piece: [chunk(k, {"content": piece}) for k in ks],
                )
                for k, c in enumerate(comps):
                    chunk(k, {}, c.finish_reason)
                if usage:
                    usage_chunk = {"choices": [], "usage": _usage(len(ids), comps)}
                    emit({**head, "object": "chat.completion.chunk", **usage_chunk})

            return stream(run)
        with lock:
            try:
                result = generator.generate([messages], params, adapter=adapter)[0]
            except SelfloopError as e:
                return error(400, str(e))
            if not result.ok:
                return error(400, result.error or "generation failed")
            logprobs = None
            if req.logprobs:
                logprobs = [
                    _chat_logprobs(generator, messages, c.text, req.top_logprobs or 0, adapter)
                    for c in result.completions
                ]
        return {
            **head,
            "choices": [
                {
                    "index": k,
                    "message": {"role": "assistant", "content": c.text},
                    "finish_reason": c.finish_reason,
                    "logprobs": logprobs[k] if logprobs else None,
                }
                for k, c in enumerate(result.completions)
            ],
            "usage": _usage(result.prompt_tokens, result.completions),
        }

    @app.post("/v1/completions")
    def completions(req: CompletionRequest) -> Any:
        adapter, not_found = resolve(req.model)
        if not_found:
            return not_found
        if req.stream and req.logprobs is not None:
            return error(400, "logprobs: not supported with stream; ask without stream")
        max_tokens = 16 if req.max_tokens is None else req.max_tokens  # null: OpenAI's default
        try:
            params = sampling(req, max(max_tokens, 1))  # 0 is handled below: no generation
        except ValueError as e:
            return error(400, describe_validation(e))
        prompts = _prompts(req.prompt)
        if not prompts:
            return error(400, "prompt: no prompt given (an empty list)")
        with lock:
            try:
                encoded = [_encode(tok, p, len(tok)) for p in prompts]
            except ValueError as e:
                return error(400, f"prompt: {e}")
            # What an echo puts before the completion: the prompt as given, or its tokens' text.
            echoed = [p if isinstance(p, str) else tok.decode(p) for p in prompts]
        for i, ids in enumerate(encoded):
            if generator.context and len(ids) + max_tokens > generator.context:
                where = f"prompt {i} is" if len(encoded) > 1 else "prompt is"
                return error(
                    400,
                    f"{where} {len(ids)} tokens; with max_tokens {max_tokens} it exceeds the "
                    f"model's context of {generator.context}",
                )
        head = _head("cmpl", "text_completion", req.model)
        if req.stream:
            usage = req.stream_options is not None and req.stream_options.include_usage

            def run(emit: Emit, stopped: Callable[[], bool]) -> None:
                def chunk(k: int, text: str, finish: str | None = None) -> None:
                    choice = {"index": k, "text": text, "logprobs": None, "finish_reason": finish}
                    emit({**head, "choices": [choice]})

                all_comps: list[Completion] = []
                for i, ids in enumerate(encoded):
                    base = i * params.n
                    if req.echo:
                        for k in range(params.n):
                            chunk(base + k, echoed[i])
                    if max_tokens == 0:
                        comps = [Completion("", "length", 0)] * params.n
                    else:
                        comps = _stream_choices(
                            generator,
                            ids,
                            params,
                            adapter,
                            stopped,
                            lambda ks, piece, b=base: [chunk(b + k, piece) for k in ks],
                            first=base,
                        )
                    for k, c in enumerate(comps):
                        chunk(base + k, "", c.finish_reason)
                    all_comps += comps
                if usage:
                    emit(
                        {**head, "choices": [], "usage": _usage(sum(map(len, encoded)), all_comps)}
                    )

            return stream(run)
        with lock:
            if max_tokens == 0:
                done = [
                    (
                        GenerationResult([Completion("", "length", 0)] * params.n, len(ids)),
                        [[]] * params.n,
                    )
                    for ids in encoded
                ]
            else:
                try:
                    done = generator.generate_from_ids(encoded, params, adapter=adapter)
                except SelfloopError as e:
                    return error(400, str(e))
            for result, _ in done:
                if not result.ok:
                    return error(400, result.error or "generation failed")
            choices = []
            for i, (result, gen_ids) in enumerate(done):
                for k, c in enumerate(result.completions):
                    lp = None
                    if req.logprobs is not None:
                        lp = _completion_logprobs(
                            generator, encoded[i], gen_ids[k], req.echo, req.logprobs, adapter
                        )
                    choices.append(
                        {
                            "index": i * params.n + k,
                            "text": (echoed[i] if req.echo else "") + c.text,
                            "logprobs": lp,
                            "finish_reason": c.finish_reason,
                        }
                    )
        comps = [c for r, _ in done for c in r.completions]
        return {**head, "choices": choices, "usage": _usage(sum(map(len, encoded)), comps)}

    return app


def _head(prefix: str, kind: str, model: str) -> dict[str, Any]:
    return {
        "id": f"{prefix}-{uuid.uuid4().hex}",
        "object": kind,
        "created": int(time.time()),
        "model": model,
    }


def _usage(prompt_tokens: int, comps: list[Completion]) -> dict[str, int]:
    completion_tokens = sum(c.completion_tokens for c in comps)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _prompts(prompt: str | list[str] | list[int] | list[list[int]]) -> list[str | list[int]]:
    """The request's prompts, each a string or a list of token ids."""
    if isinstance(prompt, str):
        return [prompt]
    if prompt and isinstance(prompt[0], int):
        return [prompt]  # type: ignore[list-item]  # one prompt given as token ids
    return list(prompt)  # type: ignore[arg-type]


def _bad_ids(ids: list[int], vocab: int) -> str | None:
    bad = next((t for t in ids if not 0 <= t < vocab), None)
    return None if bad is None else f"token id {bad} is outside the vocabulary (0-{vocab - 1})"


def _encode(tok: Any, prompt: str | list[int], vocab: int) -> list[int]:
    """A completion prompt's token ids. Text is tokenized as the tokenizer does by default (with
    a BOS token where the tokenizer adds one), as vLLM does; token ids are taken as given."""
    if isinstance(prompt, str):
        ids = tok(prompt)["input_ids"]
    else:
        if bad := _bad_ids(prompt, vocab):
            raise ValueError(bad)
        ids = list(prompt)
    if not ids:
        raise ValueError("a prompt is empty (no tokens)")
    return ids


def _stream_choices(
    gen: TransformersGenerator,
    ids: list[int],
    params: SamplingParams,
    adapter: str | None,
    stopped: Callable[[], bool],
    send: Callable[[range, str], Any],
    first: int = 0,
) -> list[Completion]:
    """The `n` completions of one prompt, each piece of text handed to `send(indices, piece)`
    as the model decodes it. Greedy decoding decodes once for all n; sampling decodes the
    n samples one after another, choice `first + k` from seed + first + k, so no two choices
    of a request share a seed."""
    if params.greedy:
        one, _ = gen.generate_stream(
            ids,
            params,
            lambda piece: send(range(params.n), piece),
            adapter=adapter,
            should_stop=stopped,
        )
        return [one] * params.n
    comps = []
    for k in range(params.n):
        if stopped():
            break
        seeded = params.model_copy(update={"seed": (params.seed or 0) + first + k})
        c, _ = gen.generate_stream(
            ids,
            seeded,
            lambda piece, k=k: send(range(k, k + 1), piece),
            adapter=adapter,
            should_stop=stopped,
        )
        comps.append(c)
    return comps


async def _sse(
    run: Callable[[Emit, Callable[[], bool]], None], lock: threading.Lock
) -> AsyncIterator[str]:
    """Server-Sent Events from `run(emit, stopped)`, which runs in a thread of its own under
    `lock` and emits chunks while the model decodes. When the client goes away, `stopped()`
    turns True, so decoding ends at the next token and the lock is freed."""
    import anyio

    chunks: queue.Queue[dict[str, Any] | None] = queue.Queue()
    gone = threading.Event()

    def work() -> None:
        try:
            with lock:
                run(chunks.put, gone.is_set)
        except Exception as e:  # the response has started: the error can only be an event
            log.exception("streamed generation failed")
            message = str(e) if isinstance(e, SelfloopError) else f"{type(e).__name__}: {e}"
            chunks.put({"error": {"message": message, "type": "server_error", "code": 500}})
        finally:
            chunks.put(None)

    threading.Thread(target=work, name="selfloop-stream", daemon=True).start()
    try:
        while (chunk := await anyio.to_thread.run_sync(chunks.get)) is not None:
            yield f"data: {json.dumps(chunk)}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        gone.set()


def _top(tok: Any, row: Any, k: int) -> list[tuple[str, float]]:
    if not k:
        return []
    vals, ids = row.topk(k)
    return [(tok.decode([int(i)]), float(v)) for v, i in zip(vals, ids)]


def _chat_logprobs(
    gen: TransformersGenerator, messages: list, text: str, top: int, adapter: str | None
) -> dict[str, Any]:
    """OpenAI-style chat logprobs of a completion, recomputed by scoring it in one forward pass."""
    prompt = gen.encode_prompt(messages)
    cont = gen.tokenizer(text, add_special_tokens=False)["input_ids"]
    rows = gen._score([prompt], [cont], adapter)[0]

    def entry(token_id: int, row: Any, k: int) -> dict[str, Any]:
        return {
            "token": gen.tokenizer.decode([token_id]),
            "logprob": float(row[token_id]),
            "bytes": None,
            "top_logprobs": [
                {"token": t, "logprob": v, "bytes": None} for t, v in _top(gen.tokenizer, row, k)
            ],
        }

    content = [entry(t, rows[k], top) for k, t in enumerate(cont)]
    if not cont:  # nothing generated: still report the first-token distribution judges ask for
        content.append(entry(int(rows[-1].argmax()), rows[-1], max(top, 1)))
    return {"content": content}


def _completion_logprobs(
    gen: TransformersGenerator,
    prompt: list[int],
    generated: list[int],
    echo: bool,
    top: int,
    adapter: str | None,
) -> dict[str, Any]:
    """Legacy-completions logprobs: per token (the prompt's too with `echo`) its text, its
    log-probability given everything before it, the `top` likeliest tokens at that position
    (and the token itself, so `max(top_logprobs)` tells whether it was the greedy choice) and
    its character offset in prompt + completion. The first token of the sequence has no
    context, so its logprob and top_logprobs are None, as in the OpenAI API.

    One forward pass scores prompt + completion: the rows after the first token predict every
    later token.
    """
    tok = gen.tokenizer
    full = prompt + generated
    rows = gen._score([full[:1]], [full[1:]], adapter)[0]  # rows[j - 1] predicts full[j]
    start = 0 if echo else len(prompt)
    tokens, logps, tops = [], [], []
    for j in range(start, len(full)):
        tokens.append(tok.decode([full[j]]))
        if j == 0:
            logps.append(None)
            tops.append(None)
            continue
        row = rows[j - 1]
        lp = float(row[full[j]])
        best = dict(_top(tok, row, top))
        # Two ids can decode to the same text (byte pieces of one character): keep the larger.
        best[tokens[-1]] = max(lp, best.get(tokens[-1], lp))
        logps.append(lp)
        tops.append(best)
    # Offsets into the decoded prompt + completion; decoding each prefix whole keeps them right
    # where one character spans several tokens.
    prefixes = tok.batch_decode([full[:j] for j in range(start, len(full))])
    return {
        "tokens": tokens,
        "token_logprobs": logps,
        "top_logprobs": tops,
        "text_offset": [len(p) for p in prefixes],
    }


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to host:port, or a one-line SelfloopError saying why not. `serve` binds
    before it loads the model, so a port that is taken fails at once and clearly."""
    if not 1 <= port <= 65535:
        raise SelfloopError(f"--port {port}: not a TCP port (1-65535)")
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as e:
        raise SelfloopError(f"--host {host}: cannot resolve it ({e.strerror})") from e
    sock = socket.socket(family, kind, proto)
    # As uvicorn does: a restarted server can rebind while old connections linger in
    # TIME_WAIT; a live listener on the port still makes bind fail.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise SelfloopError(
                f"port {port} on {host} is already in use (another server?); "
                "pick another with --port"
            ) from e
        raise SelfloopError(f"cannot listen on {host}:{port}: {e.strerror}") from e
    return sock


def serve(
    generator: TransformersGenerator, sock: socket.socket, served_name: str | None = None
) -> None:
    """Run the server on the bound socket `sock` (from `bind`) until interrupted."""
    import uvicorn

    config = uvicorn.Config(create_app(generator, served_name), log_level="info")
    uvicorn.Server(config).run(sockets=[sock])
