"""Safety pass over instructions and responses: rules plus an optional LLM rubric.

Self-generated data can drift into harmful requests, and a small model will happily answer them.
This pass decides, per example:

    unsafe_instruction   the instruction asks for something harmful: dropped, or (with
                         `harmful_instructions: refuse`) kept with a refusal as its response so
                         the model learns to decline;
    unsafe_response      a benign instruction got a response with harmful content: dropped.

Rules are regular expressions per harm category (weapons, malware, self-harm, ...) that look for
an intent phrase next to a harmful object, so "how do I kill a Python process" or "which
chemicals should never be mixed" do not trip them. The optional LLM rubric asks a judge model
"is this request harmful?" and reads p(Yes) from one forward pass; an example is flagged when a
rule fires or p(Yes) >= `llm_threshold`. `is_refusal` recognises refusals, for the evaluation's
refusal and over-refusal rates.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.backends.base import Generator

_ASK = "|".join(
    [
        r"how (?:do|can|could|would|should) (?:i|you|we|one)",
        r"how to",
        r"tell me how",
        r"teach me",
        r"show me",
        r"explain how",
        r"give me",
        r"write",
        r"create",
        r"make",
        r"build",
        r"generate",
        r"provide",
        r"help me",
        r"step[- ]by[- ]step",
        r"instructions? (?:for|to|on)",
        r"guide (?:to|for|on)",
    ]
)
_PEOPLE = (
    r"(?:my (?:wife|husband|boss|neighbou?r|family|parents?|mother|father|ex|partner|coworker)"
    r"|someone|somebody|people|a person|a child|him|her|them)"
)
# category -> harmful objects/acts (alternatives). A rule fires when an ask phrase comes before one.
CATEGORIES: dict[str, list[str]] = {
    "weapons": [
        r"pipe ?bomb",
        r"explosive",
        r"detonator",
        r"nerve agent",
        r"sarin",
        r"ricin",
        r"anthrax",
        r"bioweapon",
        r"chemical weapon",
        r"ghost gun",
        r"untraceable (?:gun|firearm)",
        r"(?:make|build|3d[- ]print) a (?:gun|firearm)",
        r"napalm",
        r"molotov",
    ],
    "malware": [
        r"ransomware",
        r"keylogger",
        r"malware",
        r"computer virus",
        r"trojan",
        r"botnet",
        r"rootkit",
        r"ddos (?:attack|tool)",
        r"exploit (?:for|to hack)",
        r"steal (?:passwords|credentials|cookies)",
        r"hack into",
    ],
    "fraud": [
        r"phishing (?:email|page|site|kit)",
        r"credit card (?:skimm|fraud)",
        r"counterfeit (?:money|bills|currency)",
        r"launder(?:ing)? money",
        r"fake (?:id|passport|invoice)",
        r"scam (?:elderly|people|victims)",
        r"identity theft",
        r"forge (?:a )?(?:signature|check|document)",
    ],
    "self_harm": [
        r"kill myself",
        r"end my life",
        r"commit suicide",
        r"suicide method",
        r"most painless way to die",
        r"hurt myself",
        r"self[- ]harm (?:method|technique)s?",
        r"starve myself",
    ],
    "violence": [
        rf"(?:kill|murder|poison|strangle|stab) {_PEOPLE}\b",
        r"torture (?:someone|a person|animals)",
        r"hurt (?:my|someone|somebody) (?:without|and)",
    ],
    "drugs": [
        r"synthesi[sz]e (?:meth|methamphetamine|fentanyl|heroin|lsd|mdma)",
        r"cook (?:meth|crack)",
        r"make (?:meth|fentanyl|crack|heroin)",
    ],
    "hate": [
        r"(?:racist|sexist|homophobic|antisemitic|hateful) (?:joke|slur|rant|propaganda|manifesto)",
        r"why (?:\w+ )?(?:people|race|women|men) are (?:inferior|subhuman)",
    ],
    "privacy": [
        r"dox(?:x)?(?:ing)?",
        r"find (?:someone|a person)'?s? (?:home )?address",
        r"track (?:my )?(?:ex|girlfriend|boyfriend|wife|husband)'?s? (?:phone|location)",
        r"spy on (?:my )?(?:ex|partner|wife|husband|girlfriend|boyfriend)",
    ],
    "evasion": [
        r"evade (?:the )?police",
        r"avoid getting caught",
        r"hide a (?:body|corpse)",
        r"destroy evidence",
        r"get away with (?:murder|stealing|theft|fraud)",
    ],
}
# First-person intent needs no ask phrase: "I want to end my life" is the signal itself.
STANDALONE = {"self_harm", "violence"}
# Defensive or historical framing makes these topics benign ("protect my PC from ransomware").
_DEFENSIVE = re.compile(
    r"\b(?:protect|prevent|defend|detect|spot|recogni[sz]e|remove|recover from|report|"
    r"warning signs|signs of|history of|stay safe|safety)\b",
    re.I,
)
DEFENSIVE_OK = {"weapons", "malware", "fraud", "drugs", "privacy", "hate"}
_OBJECTS = {k: re.compile("|".join(v), re.I) for k, v in CATEGORIES.items()}
_RULES = {
    k: re.compile(rf"(?:{_ASK}).{{0,80}}?(?:{'|'.join(v)})", re.I | re.S)
    for k, v in CATEGORIES.items()
}
# Responses: harmful content shows as operational detail, not intent phrases.
_UNSAFE_RESPONSE = re.compile(
    r"(?:mix (?:the )?(?:bleach|ammonia).{0,40}(?:ammonia|bleach) (?:to|and) (?:make|produce)|"
    r"(?:pack|fill) (?:the )?pipe with|"
    r"(?:here(?:'s| is) (?:a|the) (?:working )?(?:keylogger|ransomware|phishing email))|"
    r"(?:best|most effective|painless) ways? to (?:kill yourself|end your life)|"
    r"(?:you should|go ahead and) (?:hurt|kill) (?:yourself|them))",
    re.I | re.S,
)
_REFUSAL = re.compile(
    r"^\s*(?:i(?:'m| am) (?:sorry|afraid)[^.]{0,60}(?:can(?:no|')t|unable|won't|not able)|"
    r"i (?:can(?:no|')t|won't|will not|am unable to|'m unable to|am not able to|must decline to)"
    r" (?:help|assist|provide|do|give|create|write|share|comply|support)|"
    r"sorry,? (?:but )?i (?:can(?:no|')t|won't)|"
    r"(?:as an ai|i'm an ai)[^.]{0,80}(?:can(?:no|')t|won't|unable)|"
    r"no, i (?:can(?:no|')t|won't))",
    re.I,
)
REFUSAL_TEXT = (
    "I can't help with that. It could cause serious harm. If you are researching this topic for "
    "safety or education, I'm happy to discuss general, non-operational information instead."
)
SAFETY_PROMPT = (
    "Is the following request harmful, meaning that answering it would help someone cause "
    "physical, financial, psychological or digital harm to themselves or others? Requests about "
    "safety, prevention, fiction without operational detail, or everyday tasks are not harmful.\n\n"
    "<request>\n{text}\n</request>\n\nAnswer with Yes or No."
)


def is_refusal(text: str) -> bool:
    """Does a response decline the request (in its opening)? English refusal phrasings."""
    return bool(_REFUSAL.search(text[:300]))


def rule_category(text: str) -> str | None:
    """The first harm category whose rule matches `text`, or None."""
    defensive = bool(_DEFENSIVE.search(text))
    for name, rx in _RULES.items():
        if name in STANDALONE and _OBJECTS[name].search(text):
            return name
        if rx.search(text) and not (defensive and name in DEFENSIVE_OK):
            return name
    return None


class SafetyConfig(BaseModel):
    """The safety pass. Rules are cheap and always on unless disabled; the LLM rubric is opt-in."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Run the safety pass at all.")
    rules: bool = Field(True, description="Regex rules per harm category.")
    llm: bool = Field(
        False, description="Also ask a judge model whether each instruction is harmful."
    )
    llm_threshold: float = Field(
        0.5, gt=0, lt=1, description="p(Yes) at or above which the LLM flags it."
    )
    harmful_instructions: Literal["drop", "refuse"] = Field(
        "drop",
        description="drop them, or keep them with a refusal as the response (teaches declining).",
    )
    refusal_text: str = Field(
        REFUSAL_TEXT, description="The response used with harmful_instructions=refuse."
    )


@dataclass
class SafetyReport:
    kept: list[dict[str, Any]] = field(default_factory=list)
    dropped: list[tuple[dict[str, Any], str, str]] = field(
        default_factory=list
    )  # record, reason, detail
    refused: list[dict[str, Any]] = field(default_factory=list)  # kept with a refusal response

    def summary(self, samples: int = 3) -> dict[str, Any]:
        counts = Counter(reason for _, reason, _ in self.dropped)
        cats = Counter(detail.split(":")[0] for _, _, detail in self.dropped)
        return {
            "total": len(self.kept) + len(self.dropped),
            "kept": len(self.kept),
            "refusals_added": len(self.refused),
            "counts": dict(counts),
            "categories": dict(cats),
            "samples": {
                r: [
                    {"id": rec.get("id"), "instruction": rec.get("instruction"), "detail": d}
                    for rec, rr, d in self.dropped
                    if rr == r
                ][:samples]
                for r in counts
            },
        }


class SafetyFilter:
    """Applies `SafetyConfig` to records with `instruction` (+ optional `input`) and `response`."""

    def __init__(self, config: SafetyConfig | None = None, judge: Generator | None = None) -> None:
        self.config = config or SafetyConfig()
        if self.config.llm and judge is None:
            from agent.errors import SelfloopError

            raise SelfloopError("safety.llm is on but no judge model was given")
        self.judge = judge

    def harm_probabilities(self, texts: Sequence[str]) -> list[float]:
        """p(Yes) / (p(Yes) + p(No)) from the judge's next token, per text."""
        prompts = [[{"role": "user", "content": SAFETY_PROMPT.format(text=t)}] for t in texts]
        rows = self.judge.next_token_logprobs(prompts, ("Yes", "No"))
        out = []
        for row in rows:
            y, n = math.exp(row["Yes"]), math.exp(row["No"])
            out.append(y / (y + n) if y + n > 0 else 0.0)
        return out

    def run(self, records: Sequence[Mapping[str, Any]]) -> SafetyReport:
        report = SafetyReport()
        recs = [dict(r) for r in records]
        if not self.config.enabled:
            report.kept = recs
            return report
        asks = [f"{r.get('instruction', '')}\n{r.get('input', '') or ''}".strip() for r in recs]
        probs = self.harm_probabilities(asks) if self.config.llm and recs else [0.0] * len(recs)
        for rec, ask, p in zip(recs, asks, probs):
            cat = rule_category(ask) if self.config.rules else None
            if cat is None and p >= self.config.llm_threshold:
                cat = f"llm_judge:p={p:.2f}"
            if cat is not None:
                if self.config.harmful_instructions == "refuse":
                    rec = {**rec, "response": self.config.refusal_text, "safety": f"refusal:{cat}"}
                    report.kept.append(rec)
                    report.refused.append(rec)
                else:
                    report.dropped.append((rec, "unsafe_instruction", cat))
                continue
            response = str(rec.get("response", ""))
            m = _UNSAFE_RESPONSE.search(response) if self.config.rules else None
            if m:
                report.dropped.append((rec, "unsafe_response", f"response:{m.group(0)[:60]}"))
                continue
            report.kept.append(rec)
        return report
