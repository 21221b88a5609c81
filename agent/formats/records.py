"""Record formats: Alpaca, ShareGPT, chat messages and Self-Instruct records to and from the
canonical `Example` record, with the validation every import and export shares (see
`agent.formats` for the whole picture)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

RECORD_FORMATS = ("alpaca", "sharegpt", "messages", "self-instruct")
MAPPABLE = ("instruction", "input", "output", "system", "messages", "conversations", "instances")
ROLES = ("system", "user", "assistant")
# ShareGPT speaker names seen in the wild (FastChat, axolotl, LLaMA-Factory, OpenHermes...).
_SPEAKERS = {
    "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
    "chatgpt": "assistant", "bard": "assistant", "bing": "assistant", "model": "assistant",
    "system": "system",
}  # fmt: skip
SHAREGPT_FROM = {"user": "human", "assistant": "gpt", "system": "system"}


# An imported record: a plain dict that validates as `agent.data.Example` (the canonical record).
Record = dict[str, Any]


class Invalid(Exception):
    """One bad record; the message says what is wrong, the caller adds where."""


def example_id(messages: Iterable[Mapping[str, Any]]) -> str:
    """A stable id from the conversation alone: the same messages always get the same id."""
    pairs = [[m["role"], m["content"]] for m in messages]
    blob = json.dumps(pairs, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return "h-" + hashlib.sha256(blob).hexdigest()[:16]


def make_example(
    messages: list[dict[str, str]],
    source: str = "human",
    round: int | None = None,
    meta: dict[str, Any] | None = None,
    id: str | None = None,
) -> Record:
    """A canonical record; the id defaults to `example_id(messages)`."""
    return {
        "id": id or example_id(messages),
        "messages": messages,
        "source": source,
        "round": round,
        "meta": dict(meta or {}),
    }


# --- validation ------------------------------------------------------------------------------


def check_conversation(messages: list[dict[str, str]], what: str = "messages") -> None:
    if not messages:
        raise Invalid(f"{what} is empty")
    expected = "user"
    for k, m in enumerate(messages):
        role, content = m["role"], m["content"]
        if role not in ROLES:
            raise Invalid(f"{what}[{k}] has role {role!r}, not one of {'|'.join(ROLES)}")
        if not content.strip():
            raise Invalid(f"{what}[{k}] ({role}) has empty content")
        if role == "system":
            if k:
                raise Invalid(f"{what}[{k}] is a system message after the start")
            continue
        if role != expected:
            raise Invalid(f"{what}[{k}] is {role} where {expected} was expected")
        expected = "assistant" if role == "user" else "user"
    if messages[-1]["role"] != "assistant":
        raise Invalid(
            f"{what} must end with an assistant message, ends with {messages[-1]['role']}"
        )


class Row:
    """One input record after the column mapping, with field access that explains failures."""

    def __init__(self, raw: Mapping[str, Any], mapping: Mapping[str, str]):
        self.raw, self.mapping = raw, mapping
        # A mapped field is read from its column only, never from a same-named other column.
        self.data = {k: v for k, v in raw.items() if k not in mapping}
        self.data.update({key: raw[col] for key, col in mapping.items() if col in raw})

    def label(self, key: str) -> str:
        col = self.mapping.get(key, key)
        return f"{col!r}" if col == key else f"{col!r} (mapped to {key})"

    def text(self, key: str, required: bool = True) -> str:
        # Optional fields may be null: Arrow and pandas store a missing cell that way.
        if key not in self.data or self.data[key] is None:
            if required:
                raise Invalid(f"{self.label(key)} is {'null' if key in self.data else 'missing'}")
            return ""
        return _text(self.data[key], self.label(key), required)

    def items(self, key: str) -> list[Any]:
        value = self.data.get(key)
        if value is None:
            raise Invalid(f"{self.label(key)} is {'null' if key in self.data else 'missing'}")
        if isinstance(value, str):  # CSV cells hold nested data as JSON text
            try:
                value = json.loads(value)
            except json.JSONDecodeError as e:
                raise Invalid(f"{self.label(key)} is not valid JSON ({e.msg})") from e
            except RecursionError:
                raise Invalid(f"{self.label(key)} is nested too deeply") from None
        if not isinstance(value, list):
            raise Invalid(f"{self.label(key)} must be a list, got {type(value).__name__}")
        if not value:
            raise Invalid(f"{self.label(key)} is an empty list")
        return value

    def rest(self, used: Iterable[str]) -> dict[str, Any]:
        used_cols = {self.mapping.get(k, k) for k in used}
        return {k: v for k, v in self.raw.items() if k not in used_cols}


def _text(value: Any, label: str, required: bool = True) -> str:
    if value is None:
        raise Invalid(f"{label} is null")
    if not isinstance(value, str):
        raise Invalid(f"{label} must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise Invalid(f"{label} is empty")
    return value


def _content(value: Any, label: str) -> str:
    if isinstance(value, list):  # OpenAI content parts: only text can be trained on here
        texts = []
        for part in value:
            if not isinstance(part, Mapping) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
                raise Invalid(f"{label} has a non-text part ({kind})")
            texts.append(_text(part.get("text"), f"{label} text part"))
        value = "".join(texts)
    return _text(value, label, required=False)


# --- record formats -> messages --------------------------------------------------------------


def _from_alpaca(row: Row) -> list[list[dict[str, str]] | Invalid]:
    instruction = row.text("instruction")
    extra = row.text("input", required=False)
    output = row.text("output")
    system = row.text("system", required=False)
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    messages = [{"role": "system", "content": system}] if system.strip() else []
    return [
        [*messages, {"role": "user", "content": user}, {"role": "assistant", "content": output}]
    ]


def from_messages(row: Row) -> list[list[dict[str, str]] | Invalid]:
    messages = []
    for k, m in enumerate(row.items("messages")):
        where = f"messages[{k}]"
        if not isinstance(m, Mapping):
            raise Invalid(f"{where} must be an object, got {type(m).__name__}")
        role = m.get("role")
        role = "system" if role == "developer" else role
        if role not in ROLES:
            raise Invalid(f"{where} has role {role!r}, not one of {'|'.join(ROLES)}")
        if "content" not in m:
            raise Invalid(f"{where} has no 'content'")
        messages.append({"role": role, "content": _content(m["content"], f"{where}.content")})
    check_conversation(messages)
    return [messages]


def _from_sharegpt(row: Row) -> list[list[dict[str, str]] | Invalid]:
    messages = []
    for k, turn in enumerate(row.items("conversations")):
        where = f"conversations[{k}]"
        if not isinstance(turn, Mapping):
            raise Invalid(f"{where} must be an object, got {type(turn).__name__}")
        # Some ShareGPT-style files use chat keys (role/content) inside `conversations`.
        speaker_key, text_key = ("from", "value") if "from" in turn else ("role", "content")
        speaker = turn.get(speaker_key)
        role = _SPEAKERS.get(speaker.lower()) if isinstance(speaker, str) else None
        if role is None:
            known = ", ".join(_SPEAKERS)
            raise Invalid(f"{where}.{speaker_key} is {speaker!r}, not one of {known}")
        if text_key not in turn:
            raise Invalid(f"{where} has no {text_key!r}")
        messages.append({"role": role, "content": _content(turn[text_key], f"{where}.{text_key}")})
    system = row.text("system", required=False)
    if system.strip() and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system})
    check_conversation(messages, "conversations")
    return [messages]


def _from_self_instruct(row: Row) -> list[list[dict[str, str]] | Invalid]:
    instruction = row.text("instruction")
    out: list[list[dict[str, str]] | Invalid] = []
    for k, inst in enumerate(row.items("instances")):
        try:
            if not isinstance(inst, Mapping):
                raise Invalid(f"must be an object, got {type(inst).__name__}")
            inst_row = Row(dict(inst), {})
            extra = inst_row.text("input", required=False)
            output = inst_row.text("output")
        except Invalid as e:
            out.append(Invalid(f"instances[{k}]: {e}"))
            continue
        user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        out.append([{"role": "user", "content": user}, {"role": "assistant", "content": output}])
    return out


CONVERTERS: dict[str, tuple[Callable[[Row], list[Any]], tuple[str, ...]]] = {
    "alpaca": (_from_alpaca, ("instruction", "input", "output", "system")),
    "messages": (from_messages, ("messages",)),
    "sharegpt": (_from_sharegpt, ("conversations", "system")),
    "self-instruct": (_from_self_instruct, ("instruction", "instances")),
}


def detect_format(keys: Iterable[str]) -> str | None:
    keys = set(keys)
    if "messages" in keys:
        return "messages"
    if "conversations" in keys:
        return "sharegpt"
    if "instances" in keys:
        return "self-instruct"
    # Any Alpaca field is enough: a first record missing `output` is then reported as exactly that.
    if keys & {"instruction", "input", "output"}:
        return "alpaca"
    return None


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
