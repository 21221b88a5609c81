"""Language identification for the filters and the verifiable checks, fully offline.

Uses `py3langid` (a maintained fork of langid.py): a naive Bayes model over byte n-grams for
about 140 languages that ships inside the wheel, so nothing is downloaded at run time. The model
loads once per process on first use (about a second). Before detection, code blocks, inline
code, URLs, e-mail addresses and digits are removed: they say nothing about the language and
pull short answers towards random labels.

The model splits some languages into close variants that an LLM's output is never meant to be
told apart by (Mandarin / Cantonese / Wu, Spanish / Aragonese / Extremaduran, ...); `GROUPS`
folds them together, and `same_language` compares through it.
"""

from __future__ import annotations

import re
import threading
from typing import Any

# Labels of py3langid's model that stand for the same language as far as selfloop cares.
GROUPS: tuple[frozenset[str], ...] = (
    frozenset({"zh", "yue", "wuu"}),
    frozenset({"es", "an", "ext"}),
    frozenset({"no", "nn"}),
    frozenset({"ar", "ary", "arz"}),
    frozenset({"sr", "hr", "bs"}),
    frozenset({"ms", "id"}),
)
_GROUP_OF = {lang: group for group in GROUPS for lang in group}

_NOISE_RE = re.compile(
    r"```.*?(?:```|$)|`[^`\n]*`|https?://\S+|www\.\S+|\S+@\S+\.\w+|\d+", re.DOTALL
)
_LETTER_RE = re.compile(r"[^\W\d_]")

_identifier: Any = None
_lock = threading.Lock()


def group(lang: str) -> frozenset[str]:
    """The set of model labels that count as `lang` (just {lang} for most languages)."""
    return _GROUP_OF.get(lang, frozenset({lang}))


def same_language(a: str, b: str) -> bool:
    return b in group(a)


def prose(text: str) -> str:
    """`text` without code, URLs, e-mail addresses and digits: what detection looks at."""
    return _NOISE_RE.sub(" ", text)


def count_letters(text: str) -> int:
    return len(_LETTER_RE.findall(text))


def _get_identifier() -> Any:
    global _identifier
    with _lock:
        if _identifier is None:
            from py3langid.langid import MODEL_FILE, LanguageIdentifier

            _identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
        return _identifier


def known_languages() -> frozenset[str]:
    """Every label the model can return."""
    return frozenset(_get_identifier().labels)


def rank(text: str) -> dict[str, float]:
    """Probability per model label for the prose of `text`, likeliest first."""
    return dict(_get_identifier().rank(prose(text)))


def detect(text: str) -> tuple[str, float]:
    """(language label, probability) of the likeliest language of `text`'s prose."""
    best, prob = next(iter(rank(text).items()))
    return best, prob


def probability(text: str, lang: str, ranked: dict[str, float] | None = None) -> float:
    """Probability that `text` is in `lang`, its close variants included."""
    ranked = rank(text) if ranked is None else ranked
    return sum(ranked.get(label, 0.0) for label in group(lang))
