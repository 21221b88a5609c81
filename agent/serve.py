"""An OpenAI-compatible server over a local model: `/v1/chat/completions` and `/v1/models`.

It lets a person try a tuned model from any OpenAI client, and it is the real server the
`openai` backend is tested against. The base model is served under its name and every loaded
adapter under its own name, selected through the request's `model` field. One generation runs
at a time (the model is not thread-safe); `stream: true` is answered with the whole completion in
one chunk, which keeps streaming clients working.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.backends.base import SamplingParams
from agent.backends.hf import TransformersGenerator
from agent.errors import SelfloopError, describe_validation

log = logging.getLogger(__name__)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # unknown OpenAI fields (user, tools...) are ignored
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    n: int = Field(1, ge=1, le=64)
    temperature: float = Field(1.0, ge=0, le=2)  # the OpenAI default
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)  # beyond int64: a 400, not a 500
    stop: str | list[str] | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    stream: bool = False


def create_app(
    generator: TransformersGenerator, served_name: str | None = None, default_max_tokens: int = 512
):
    """The FastAPI app serving `generator`'s base model (as `served_name`) and its adapters."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse

    base_name = served_name or generator.model_name
    lock = threading.Lock()
    app = FastAPI(title="selfloop serve")

    def error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"] if p != "body")
        return error(400, f"{where}: {first['msg']}")

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        names = [base_name, *generator.adapters]
        return {
            "object": "list",
            "data": [
                {"id": n, "object": "model", "created": 0, "owned_by": "selfloop"} for n in names
            ],
        }

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    def chat(req: ChatRequest) -> Any:
        if req.model == base_name:
            adapter = None
        elif req.model in generator.adapters:
            adapter = req.model
        else:
            known = ", ".join([base_name, *generator.adapters])
            return error(
                404, f"model {req.model!r} not found (serving: {known})", "not_found_error"
            )
        stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
        try:
            params = SamplingParams(
                max_tokens=req.max_completion_tokens or req.max_tokens or default_max_tokens,
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
        except ValueError as e:  # pydantic's ValidationError is a ValueError
            return error(400, describe_validation(e))
        messages = [m.model_dump() for m in req.messages]
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
                    _logprobs(generator, messages, c.text, req.top_logprobs or 0, adapter)
                    for c in result.completions
                ]
        body = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": req.model,
            "choices": [
                {
                    "index": k,
                    "message": {"role": "assistant", "content": c.text},
                    "finish_reason": c.finish_reason,
                    "logprobs": logprobs[k] if logprobs else None,
                }
                for k, c in enumerate(result.completions)
            ],
            "usage": {
                "prompt_tokens": result.prompt_tokens,
                "completion_tokens": sum(c.completion_tokens for c in result.completions),
                "total_tokens": result.prompt_tokens
                + sum(c.completion_tokens for c in result.completions),
            },
        }
        if not req.stream:
            return body
        return StreamingResponse(_as_stream(body), media_type="text/event-stream")

    return app


def _logprobs(
    gen: TransformersGenerator, messages: list, text: str, top: int, adapter: str | None
) -> dict[str, Any]:
    """OpenAI-style logprobs of a completion, recomputed by scoring it in one forward pass."""
    prompt = gen.encode_prompt(messages)
    cont = gen.tokenizer(text, add_special_tokens=False)["input_ids"]
    rows = gen._score([prompt], [cont], adapter)[0]

    def entry(token_id: int, row: Any, k: int) -> dict[str, Any]:
        vals, ids = row.topk(k) if k else ([], [])
        return {
            "token": gen.tokenizer.decode([token_id]),
            "logprob": float(row[token_id]),
            "bytes": None,
            "top_logprobs": [
                {"token": gen.tokenizer.decode([int(i)]), "logprob": float(v), "bytes": None}
                for v, i in zip(vals, ids)
            ],
        }

    content = [entry(t, rows[k], top) for k, t in enumerate(cont)]
    if not cont:  # nothing generated: still report the first-token distribution judges ask for
        content.append(entry(int(rows[-1].argmax()), rows[-1], max(top, 1)))
    return {"content": content}


def _as_stream(body: dict[str, Any]):
    for choice in body["choices"]:
        chunk = {
            "id": body["id"],
            "object": "chat.completion.chunk",
            "created": body["created"],
            "model": body["model"],
            "choices": [
                {
                    "index": choice["index"],
                    "delta": choice["message"],
                    "finish_reason": choice["finish_reason"],
                }
            ],
        }
        yield f"data: {json.dumps(chunk)}\n\n"
    yield "data: [DONE]\n\n"


def serve(
    generator: TransformersGenerator,
    host: str = "127.0.0.1",
    port: int = 8000,
    served_name: str | None = None,
) -> None:
    """Run the server until interrupted."""
    import uvicorn

    uvicorn.run(create_app(generator, served_name), host=host, port=port, log_level="info")
