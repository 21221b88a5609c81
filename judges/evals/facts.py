"""Fact matching for the domain suites: does a response state a short checkable fact?

A fact is a short phrase or a number with its unit ("60-100 beats per minute"); `|` separates
alternative wordings ("60-100|60 to 100"). Matching is a case-insensitive substring test after
normalizing whitespace, dashes and a few typographic characters, so "60–100" in a response
matches "60-100" in the fact. Where an alternative begins or ends with a digit, the match must not
run into more digits ("9" is not found in "19" or "9.5"; "4,000" also matches "4000"), so a number
is only found as that number. Letters have no such boundary: "justice" matches "justices".
"""

from __future__ import annotations

import re

_DASHES = str.maketrans({c: "-" for c in "\u2010\u2011\u2012\u2013\u2014\u2015\u2212"})
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})
_SPACE_RE = re.compile(r"\s+")
# Thousands separators inside numbers ("4,000" -> "4000"); a comma followed by 3 digits and a
# non-digit, preceded by a digit.
_THOUSANDS_RE = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


def normalize(text: str) -> str:
    """Lowercased text with single spaces, ASCII dashes and quotes, no thousands separators."""
    text = text.translate(_DASHES).translate(_QUOTES).replace("\u00a0", " ")
    text = _THOUSANDS_RE.sub("", text)
    return _SPACE_RE.sub(" ", text).strip().casefold()


def alternatives(fact: str) -> list[str]:
    """The normalized, non-empty alternatives of a fact ("a|b" -> ["a", "b"])."""
    return [a for a in (normalize(p) for p in fact.split("|")) if a]


def _pattern(alternative: str) -> re.Pattern[str]:
    left = r"(?<!\d)(?<!\d[.,])" if alternative[0].isdigit() else ""
    right = r"(?![.,]?\d)" if alternative[-1].isdigit() else ""
    return re.compile(left + re.escape(alternative) + right)


def fact_match(response: str, fact: str) -> bool:
    """True when `response` contains one of the `|`-separated alternatives of `fact`."""
    text = normalize(response)
    return any(_pattern(a).search(text) for a in alternatives(fact))


def missing_facts(response: str, facts: list[str]) -> list[str]:
    """The facts that `response` does not contain, in order."""
    return [f for f in facts if not fact_match(response, f)]
