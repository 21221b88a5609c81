"""Heuristic filter chain: cheap rules that drop bad examples, each drop with a named reason.

An example is a plain mapping (the data stage's records are richer; only these keys are read):

    {"id": str, "instruction": str, "input": str (optional), "response": str,
     "finish_reason": "stop" | "length" (optional), "language": "en" (optional), ...}

Rules run in this order and the first one that fails names the example's reason:

    instruction_too_short / instruction_too_long   words outside [min_words, max_words]
    blacklisted_keyword      Self-Instruct's keywords (image, graph, file, draw, go to...) as words
    starts_with_punctuation  the instruction's first character is punctuation (¿ and ¡ allowed)
    starts_with_non_ascii    ... is not ASCII, for English examples
    banned_prefix            the instruction starts with "Write a program" (Self-Instruct)
    mostly_non_letters       under 35% of the instruction's non-space characters are letters
                             (dates, scores, IDs: what a small model proposes when it rambles)
    empty_response           only whitespace, or no letter or digit at all
    cut_off                  finish_reason == "length": the answer hit the token limit
    repeats_instruction      the response is mostly the instruction (see RepeatsInstructionRule)
    repetitive               degenerate repetition (see RepetitionRule)
    wrong_language           instruction or response not in the example's language (judges.lang)
    similar_to_pool          ROUGE-L > 0.7 against the pool or an earlier kept example (off)

Cheap rules come first so the costly ones (language model, ROUGE-L against a pool) only see
examples that survived. With `instructions_only=True` only the instruction rules, the language
rule on the instruction and the pool rule run: that is how Self-Instruct filters proposals before
any response is written.
"""

from __future__ import annotations

import logging
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent.errors import SelfloopError
from judges import lang
from judges.text import count_words, lcs_length, normalized_words, rouge_l, rouge_tokens, sentences

log = logging.getLogger(__name__)

Record = Mapping[str, Any]

REASONS = (
    "instruction_too_short",
    "instruction_too_long",
    "blacklisted_keyword",
    "starts_with_punctuation",
    "starts_with_non_ascii",
    "banned_prefix",
    "mostly_non_letters",
    "empty_response",
    "cut_off",
    "repeats_instruction",
    "repetitive",
    "wrong_language",
    "similar_to_pool",
)
SELF_INSTRUCT_BLACKLIST = (
    "image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
    "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram",
)  # fmt: skip


class Rule(BaseModel):
    """A rule that is on or off. In YAML `rule: false` is short for `rule: {enabled: false}`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(True, description="Run this rule.")

    @model_validator(mode="before")
    @classmethod
    def _bool_shorthand(cls, v: object) -> object:
        return {"enabled": v} if isinstance(v, bool) else v


class InstructionLengthRule(Rule):
    min_words: int = Field(3, ge=0, description="Fewest words an instruction may have (inclusive).")
    max_words: int = Field(150, ge=1, description="Most words an instruction may have (inclusive).")

    @model_validator(mode="after")
    def _ordered(self) -> InstructionLengthRule:
        if self.min_words > self.max_words:
            raise ValueError("min_words must not exceed max_words")
        return self


class BlacklistRule(Rule):
    keywords: tuple[str, ...] = Field(
        SELF_INSTRUCT_BLACKLIST,
        description="Words (or phrases) that reject an instruction; whole words, any case.",
    )


class PunctuationStartRule(Rule):
    allowed: str = Field("¿¡", description="Punctuation an instruction may start with anyway.")


class NonAsciiStartRule(Rule):
    languages: tuple[str, ...] = Field(
        ("en",), description="Languages whose instructions must start with an ASCII character."
    )


class BannedPrefixRule(Rule):
    prefixes: tuple[str, ...] = Field(
        ("Write a program",), description="Instruction openings that reject it (any case)."
    )


class LettersRule(Rule):
    min_letter_fraction: float = Field(
        0.35,
        ge=0,
        le=1,
        description="Reject an instruction whose non-space characters are less than this share "
        "letters (any script). '2021-12-20 A. W. 4:32.45 TK' is 17%; 'Solve 3x + 5 = 20 for x.' "
        "is 59%.",
    )


class RepeatsInstructionRule(Rule):
    min_overlap: float = Field(
        0.8,
        gt=0,
        le=1,
        description="Reject when the longest common word subsequence of instruction and response "
        "covers at least this fraction of the response's words AND of the instruction's words.",
    )


class RepetitionRule(Rule):
    """Degenerate repetition, two measures (either rejects).

    Repeated n-gram fraction: the share of the response's words that lie inside a repeat of an
    n-gram seen earlier in the text. A first occurrence never counts, so a text made of k copies
    of one passage scores 1 - 1/k and ordinary prose scores near 0. Repeated segment: the same
    line or sentence (lowercased words, at least `min_segment_words` of them) appearing more than
    `max_segment_repeats` times, which catches a loop at the end of an otherwise fine answer.
    """

    ngram: int = Field(5, ge=1, description="n of the n-grams whose repeats are measured.")
    max_repeated_fraction: float = Field(
        0.3, gt=0, le=1, description="Most of the response that repeated n-grams may cover."
    )
    min_words: int = Field(
        10, ge=1, description="Responses with fewer words skip the n-gram measure."
    )
    max_segment_repeats: int = Field(
        3, ge=1, description="Most times one line or sentence may appear."
    )
    min_segment_words: int = Field(
        3, ge=1, description="Shorter lines or sentences may repeat freely (list bullets, '}')."
    )


class LanguageRule(Rule):
    min_letters: int = Field(
        20, ge=1, description="Texts with fewer letters (code, numbers and URLs removed) pass."
    )
    min_expected_prob: float = Field(
        0.01,
        ge=0,
        le=1,
        description="Reject when another language is the likeliest and the expected language's "
        "probability is below this (text in the right language almost never is).",
    )
    exempt_keywords: tuple[str, ...] = Field(
        ("translat",),
        description="Instructions containing one of these (any case) skip the response check: "
        "a translation is meant to be in another language.",
    )


class RougeRule(Rule):
    enabled: bool = Field(False, description="Run this rule (off by default; dedup is FAISS).")
    threshold: float = Field(
        0.7, gt=0, le=1, description="Reject an instruction whose ROUGE-L exceeds this."
    )


class FilterConfig(BaseModel):
    """The heuristic filter chain: one section per rule, each with `enabled`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default_language: str | None = Field(
        "en", description="Language of records without a `language` key; null = unknown."
    )
    instruction_length: InstructionLengthRule = Field(
        default_factory=InstructionLengthRule, description="Instruction length bounds in words."
    )
    blacklist: BlacklistRule = Field(
        default_factory=BlacklistRule, description="Keywords a text-only model cannot serve."
    )
    punctuation_start: PunctuationStartRule = Field(
        default_factory=PunctuationStartRule, description="Instructions starting with punctuation."
    )
    non_ascii_start: NonAsciiStartRule = Field(
        default_factory=NonAsciiStartRule, description="Non-ASCII first character (English)."
    )
    banned_prefix: BannedPrefixRule = Field(
        default_factory=BannedPrefixRule, description="Banned instruction openings."
    )
    letters: LettersRule = Field(
        default_factory=LettersRule, description="Instructions that are mostly not letters."
    )
    empty_response: Rule = Field(default_factory=Rule, description="Blank responses.")
    cut_off: Rule = Field(default_factory=Rule, description="Responses cut at the token limit.")
    repeats_instruction: RepeatsInstructionRule = Field(
        default_factory=RepeatsInstructionRule, description="Responses that echo the instruction."
    )
    repetition: RepetitionRule = Field(
        default_factory=RepetitionRule, description="Degenerate repetition in the response."
    )
    language: LanguageRule = Field(
        default_factory=LanguageRule, description="Texts not in the example's language."
    )
    rouge: RougeRule = Field(
        default_factory=RougeRule, description="Self-Instruct's ROUGE-L rule against the pool."
    )
    samples_per_reason: int = Field(
        3, ge=0, description="Rejected examples per reason kept in the summary for inspection."
    )


class Rejection(NamedTuple):
    record: Record
    reason: str  # one of REASONS
    detail: str  # for a person: which keyword, which language, what score


@dataclass
class FilterReport:
    kept: list[Record] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # every rule that ran, zeros included
    samples_per_reason: int = 3

    @property
    def total(self) -> int:
        return len(self.kept) + len(self.rejected)

    def rejected_records(self) -> list[dict[str, Any]]:
        """Rejected records with `filter_reason` and `filter_detail` added (filtered.jsonl)."""
        return [
            {**r.record, "filter_reason": r.reason, "filter_detail": r.detail}
            for r in self.rejected
        ]

    def summary(self) -> dict[str, Any]:
        """Plain JSON data for metrics: totals, counts per reason, a few examples per reason."""
        samples: dict[str, list[dict[str, Any]]] = {}
        for r in self.rejected:
            bucket = samples.setdefault(r.reason, [])
            if len(bucket) < self.samples_per_reason:
                bucket.append(
                    {
                        "id": _str(r.record.get("id")),
                        "instruction": _clip(r.record.get("instruction")),
                        "response": _clip(r.record.get("response")),
                        "detail": r.detail,
                    }
                )
        return {
            "total": self.total,
            "kept": len(self.kept),
            "rejected": len(self.rejected),
            "kept_fraction": len(self.kept) / self.total if self.total else 0.0,
            "counts": dict(self.counts),
            "samples": samples,
        }


def _str(v: object) -> str | None:
    return None if v is None else str(v)


def _clip(v: object, n: int = 200) -> str | None:
    s = _str(v)
    return s if s is None or len(s) <= n else s[: n - 3] + "..."


class _Example(NamedTuple):
    instruction: str
    response: str | None
    language: str | None
    finish_reason: object


Check = tuple[str, str] | None  # (reason, detail) when the rule fails


class FilterChain:
    """Runs the enabled rules over records. `pool`: instructions already accepted (ROUGE rule)."""

    def __init__(self, config: FilterConfig | None = None, pool: Iterable[str] = ()) -> None:
        self.config = config or FilterConfig()
        self.pool = list(pool)
        self._pool_tokens = (
            [rouge_tokens(p) for p in self.pool] if self.config.rouge.enabled else []
        )
        keywords = [k.strip() for k in self.config.blacklist.keywords if k.strip()]
        words = [re.escape(k).replace(r"\ ", r"\s+") for k in keywords]
        self._blacklist = (
            re.compile(r"(?<!\w)(?:" + "|".join(words) + r")(?!\w)", re.IGNORECASE)
            if words
            else None
        )

    def reasons(self, instructions_only: bool = False) -> list[str]:
        """The reasons the enabled rules can give, in rule order."""
        c = self.config
        on = {
            "instruction_too_short": c.instruction_length.enabled,
            "instruction_too_long": c.instruction_length.enabled,
            "blacklisted_keyword": c.blacklist.enabled,
            "starts_with_punctuation": c.punctuation_start.enabled,
            "starts_with_non_ascii": c.non_ascii_start.enabled,
            "banned_prefix": c.banned_prefix.enabled,
            "mostly_non_letters": c.letters.enabled,
            "empty_response": c.empty_response.enabled and not instructions_only,
            "cut_off": c.cut_off.enabled and not instructions_only,
            "repeats_instruction": c.repeats_instruction.enabled and not instructions_only,
            "repetitive": c.repetition.enabled and not instructions_only,
            "wrong_language": c.language.enabled,
            "similar_to_pool": c.rouge.enabled,
        }
        return [r for r in REASONS if on[r]]

    def run(self, records: Iterable[Record], *, instructions_only: bool = False) -> FilterReport:
        """Filter `records` in order. Kept instructions join the ROUGE pool for later records of
        this run only: the chain itself is not changed, so a re-run gives the same report."""
        report = FilterReport(samples_per_reason=self.config.samples_per_reason)
        report.counts = dict.fromkeys(self.reasons(instructions_only), 0)
        pool_tokens = list(self._pool_tokens)
        pool_texts = list(self.pool)
        for i, rec in enumerate(records):
            ex = self._example(rec, i, instructions_only)
            failed = self._first_failure(ex, pool_tokens, pool_texts)
            if failed is None:
                report.kept.append(rec)
                if self.config.rouge.enabled:
                    pool_tokens.append(rouge_tokens(ex.instruction))
                    pool_texts.append(ex.instruction)
            else:
                report.rejected.append(Rejection(rec, *failed))
                report.counts[failed[0]] += 1
        log.info(
            "filters: kept %d of %d (%s)",
            len(report.kept),
            report.total,
            ", ".join(f"{k}={v}" for k, v in report.counts.items() if v) or "none rejected",
        )
        return report

    def check(self, record: Record, *, instructions_only: bool = False) -> Rejection | None:
        """Why one record would be rejected (against the chain's pool only), or None."""
        ex = self._example(record, 0, instructions_only)
        failed = self._first_failure(ex, self._pool_tokens, self.pool)
        return None if failed is None else Rejection(record, *failed)

    def _example(self, rec: Record, i: int, instructions_only: bool) -> _Example:
        if not isinstance(rec, Mapping):
            raise SelfloopError(f"filter input {i}: expected a record mapping, got {rec!r:.60}")
        name = f"record {rec.get('id', i)!r}"
        instruction = rec.get("instruction")
        if not isinstance(instruction, str):
            raise SelfloopError(f"{name}: 'instruction' must be a string, got {instruction!r:.60}")
        response = rec.get("response")
        if not instructions_only and not isinstance(response, str):
            raise SelfloopError(f"{name}: 'response' must be a string, got {response!r:.60}")
        language = rec.get("language") or self.config.default_language
        if instructions_only:
            response = None
        return _Example(instruction, response, language, rec.get("finish_reason"))

    def _first_failure(self, ex: _Example, pool_tokens: list, pool_texts: list[str]) -> Check:
        c = self.config
        checks = [
            (c.instruction_length.enabled, self._length),
            (c.blacklist.enabled, self._blacklisted),
            (c.punctuation_start.enabled, self._punctuation_start),
            (c.non_ascii_start.enabled, self._non_ascii_start),
            (c.banned_prefix.enabled, self._banned_prefix),
            (c.letters.enabled, self._letters),
        ]
        if ex.response is not None:
            checks += [
                (c.empty_response.enabled, self._empty),
                (c.cut_off.enabled, self._cut_off),
                (c.repeats_instruction.enabled, self._repeats_instruction),
                (c.repetition.enabled, self._repetitive),
            ]
        checks.append((c.language.enabled, self._wrong_language))
        for enabled, rule in checks:
            failed = rule(ex) if enabled else None
            if failed:
                return failed
        if c.rouge.enabled:
            return self._similar(ex, pool_tokens, pool_texts)
        return None

    def _length(self, ex: _Example) -> Check:
        rule, n = self.config.instruction_length, count_words(ex.instruction)
        if n < rule.min_words:
            return "instruction_too_short", f"{n} words (min {rule.min_words})"
        if n > rule.max_words:
            return "instruction_too_long", f"{n} words (max {rule.max_words})"
        return None

    def _blacklisted(self, ex: _Example) -> Check:
        m = self._blacklist.search(ex.instruction) if self._blacklist else None
        return ("blacklisted_keyword", f"contains {m.group().lower()!r}") if m else None

    def _punctuation_start(self, ex: _Example) -> Check:
        text = ex.instruction.lstrip()
        if not text or text[0] in self.config.punctuation_start.allowed:
            return None
        ch = text[0]
        if ch in string.punctuation or unicodedata.category(ch).startswith("P"):
            return "starts_with_punctuation", f"starts with {ch!r}"
        return None

    def _non_ascii_start(self, ex: _Example) -> Check:
        text = ex.instruction.lstrip()
        if text and not text[0].isascii() and ex.language in self.config.non_ascii_start.languages:
            return "starts_with_non_ascii", f"starts with {text[0]!r} in a {ex.language} example"
        return None

    def _banned_prefix(self, ex: _Example) -> Check:
        text = ex.instruction.lstrip().lower()
        for prefix in self.config.banned_prefix.prefixes:
            if text.startswith(prefix.lower()):
                return "banned_prefix", f"starts with {prefix!r}"
        return None

    def _letters(self, ex: _Example) -> Check:
        chars = [ch for ch in ex.instruction if not ch.isspace()]
        if not chars:
            return None  # an empty instruction is instruction_too_short's to name
        share = sum(ch.isalpha() for ch in chars) / len(chars)
        if share < self.config.letters.min_letter_fraction:
            return "mostly_non_letters", f"{share:.0%} of its characters are letters"
        return None

    def _empty(self, ex: _Example) -> Check:
        if not ex.response.strip():
            return "empty_response", "only whitespace" if ex.response else "empty"
        if not re.search(r"[^\W_]", ex.response):
            return "empty_response", "no letter or digit"
        return None

    def _cut_off(self, ex: _Example) -> Check:
        if ex.finish_reason == "length":
            return "cut_off", "finish_reason is 'length' (hit the token limit)"
        return None

    def _repeats_instruction(self, ex: _Example) -> Check:
        inst, resp = normalized_words(ex.instruction), normalized_words(ex.response)
        if not inst or not resp:
            return None
        lcs = lcs_length(inst, resp)
        share = lcs / len(resp)
        limit = self.config.repeats_instruction.min_overlap
        if share >= limit and lcs / len(inst) >= limit:
            return "repeats_instruction", f"the instruction makes up {share:.0%} of the response"
        return None

    def _repetitive(self, ex: _Example) -> Check:
        rule = self.config.repetition
        tokens = normalized_words(ex.response)
        if len(tokens) >= rule.min_words:
            frac = repeated_ngram_fraction(tokens, rule.ngram)
            if frac > rule.max_repeated_fraction:
                return "repetitive", f"{frac:.0%} of the words repeat earlier {rule.ngram}-grams"
        segments = Counter(
            " ".join(seg)
            for line in ex.response.splitlines()
            for s in sentences(line)
            if len(seg := normalized_words(s)) >= rule.min_segment_words
        )
        if segments:
            seg, n = segments.most_common(1)[0]
            if n > rule.max_segment_repeats:
                return "repetitive", f"{seg[:60]!r} appears {n} times"
        return None

    def _wrong_language(self, ex: _Example) -> Check:
        expected, rule = ex.language, self.config.language
        if not expected or expected not in lang.known_languages():
            return None
        fields = [("instruction", ex.instruction)]
        exempt = any(k.lower() in ex.instruction.lower() for k in rule.exempt_keywords)
        if ex.response is not None and not exempt:
            fields.append(("response", ex.response))
        for name, text in fields:
            if lang.count_letters(lang.prose(text)) < rule.min_letters:
                continue
            ranked = lang.rank(text)
            top, top_p = next(iter(ranked.items()))
            p = lang.probability(text, expected, ranked)
            if not lang.same_language(expected, top) and p < rule.min_expected_prob:
                return "wrong_language", (
                    f"{name} looks {top} (p={top_p:.2f}), expected {expected} (p={p:.3f})"
                )
        return None

    def _similar(self, ex: _Example, pool_tokens: list, pool_texts: list[str]) -> Check:
        tokens = rouge_tokens(ex.instruction)
        best, best_i = 0.0, -1
        for i, other in enumerate(pool_tokens):
            score = rouge_l(tokens, other)
            if score > best:
                best, best_i = score, i
        if best > self.config.rouge.threshold:
            return "similar_to_pool", f"ROUGE-L {best:.2f} with {pool_texts[best_i]!r:.80}"
        return None


def repeated_ngram_fraction(tokens: list[str], n: int) -> float:
    """Share of positions inside an n-gram that already occurred earlier (see RepetitionRule)."""
    if len(tokens) < n or not tokens:
        return 0.0
    seen: set[tuple[str, ...]] = set()
    covered = bytearray(len(tokens))
    for i in range(len(tokens) - n + 1):
        gram = tuple(tokens[i : i + n])
        if gram in seen:
            covered[i : i + n] = b"\x01" * n
        else:
            seen.add(gram)
    return sum(covered) / len(tokens)
