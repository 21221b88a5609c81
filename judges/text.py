"""Text measures shared by the filters and the verifiable checks: words, sentences, ROUGE-L.

Counting works across scripts: a word is a run of letters and digits (inner apostrophes and
hyphens allowed, so "don't" and "well-known" count once), and each CJK ideograph, kana or hangul
syllable counts as one word, since those scripts do not separate words with spaces. Sentences
are split by a regex (no NLTK: its punkt model has to be downloaded at first use, which fails
offline). ROUGE-L is the F-measure of the longest common subsequence of tokens, computed with a
bit-parallel LCS; on ASCII text it tokenizes and scores like the `rouge-score` package that
Self-Instruct used, and unlike that package it keeps non-ASCII words instead of dropping them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# Ideographs, kana, hangul: one character is one word.
_CJK = r"\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_CJK_RE = re.compile(f"[{_CJK}]")
_WORD_RE = re.compile(f"[{_CJK}]|[^\\W_{_CJK}]+(?:['’\\-][^\\W_{_CJK}]+)*")
_TOKEN_RE = re.compile(f"[{_CJK}]|[^\\W_{_CJK}]+")

# Abbreviations whose period does not end a sentence (lowercased, without the final period).
_ABBREVIATIONS = frozenset(
    ("mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "cf", "fig",
     "no", "approx", "dept", "est", "inc", "ltd", "co", "jan", "feb", "mar", "apr", "jun", "jul",
     "aug", "sep", "sept", "oct", "nov", "dec", "a.m", "p.m", "u.s", "u.k")
)  # fmt: skip
# A sentence ends at . ! ? (or an ellipsis), maybe followed by closing quotes or brackets, then
# whitespace; CJK full stops end one with or without a following space; a blank line always does.
_SENT_END_RE = re.compile(r"(?:[.!?]+|…)[\"'”’)\]]*\s+|[。！？]+[」』”’)]*\s*|\n\s*\n")


def is_cjk(ch: str) -> bool:
    return bool(_CJK_RE.match(ch))


def words(text: str) -> list[str]:
    """The words of `text` in order (see the module docstring for what a word is)."""
    return _WORD_RE.findall(text)


def count_words(text: str) -> int:
    return len(words(text))


def normalized_words(text: str) -> list[str]:
    """Lowercased words: what repetition and overlap measures compare."""
    return [w.lower() for w in words(text)]


def sentences(text: str) -> list[str]:
    """Split `text` into sentences; fragments without a letter or digit (a lone "-") are dropped."""
    out: list[str] = []
    start = 0
    for m in _SENT_END_RE.finditer(text):
        if m.group().lstrip().startswith(".") and "\n" not in m.group():
            before = text[start : m.start()]
            last = before.rsplit(None, 1)[-1].lower() if before.strip() else ""
            line = before.rsplit("\n", 1)[-1]
            # "Dr. Smith", "e.g. this", "J. K. Rowling", a "1." list marker: not a sentence end.
            if (
                last in _ABBREVIATIONS
                or (len(last) == 1 and last.isalpha())
                or re.fullmatch(r"\s*\d{1,3}", line)
            ):
                continue
        out.append(text[start : m.end()])
        start = m.end()
    out.append(text[start:])
    return [s.strip() for s in out if re.search(r"[^\W_]", s)]


def count_sentences(text: str) -> int:
    return len(sentences(text))


def rouge_tokens(text: str) -> list[str]:
    """Lowercased letter/digit runs, CJK characters one by one (rouge-score's tokens on ASCII)."""
    return _TOKEN_RE.findall(text.lower())


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token sequences.

    Bit-parallel (Allison-Dix / Hyyro): one big-integer update per token of `b` instead of a
    len(a) x len(b) table, which keeps a Self-Instruct style check against a whole pool cheap.
    """
    if not a or not b:
        return 0
    masks: dict[str, int] = {}
    for i, tok in enumerate(a):
        masks[tok] = masks.get(tok, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for tok in b:
        u = v & masks.get(tok, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def rouge_l(a: Sequence[str], b: Sequence[str]) -> float:
    """ROUGE-L F-measure (beta = 1) of two token sequences, as in rouge-score's `rougeL`."""
    lcs = lcs_length(a, b)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(b), lcs / len(a)
    return 2 * precision * recall / (precision + recall)
