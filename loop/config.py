"""The one YAML config, validated into typed models, with `key.sub=value` command-line overrides.

Every error names the file and the YAML key (`run.yaml: backend.batch_size: Input should be
greater than or equal to 1`). Sections grow as the loop's stages land; today the config says which
model to use, how to run it, how to sample and how to fine-tune.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent.backends import BackendConfig, SamplingParams
from agent.backends.base import section_sampling
from agent.construct import ProposeConfig
from agent.errors import SelfloopError, describe_validation
from agent.models import ModelSpec
from judges.augment import AugmentConfig
from judges.dedup import DedupConfig
from judges.evals import RENAMED, renamed_metric, renamed_suite
from judges.filters import FilterConfig
from judges.llm_judge import JudgeConfig
from judges.safety import SafetyConfig
from loop.gate import GateConfig, Guard, default_guards
from loop.metrics import MetricsConfig
from tuners.config import TuneConfig


class RunConfig(BaseModel):
    """When rounds stop, where their data comes from."""

    model_config = ConfigDict(extra="forbid")

    max_rounds: int = Field(3, ge=1, description="Stop after this many rounds.")
    patience: int = Field(
        3,
        ge=1,
        description="Stop after this many rejected rounds in a row. 3 by default: a rejected "
        "round of verified data still adds to the next (tune.carry_rejected), so the recipe's "
        "3 rounds run even when the first two are rejected.",
    )
    target_metric: str | None = Field(
        None,
        description="Stop once the champion's eval reaches target_value on this metric "
        "(a dotted path into eval.json, e.g. suites.if.metrics.prompt_loose.overall.value).",
    )
    target_value: float | None = Field(None, description="See target_metric.")

    @field_validator("target_metric")
    @classmethod
    def _renamed_suite(cls, v: str | None) -> str | None:
        head, dot, rest = (v or "").partition(".")
        if head == "suites" and rest.partition(".")[0] in RENAMED:  # suites.ifeval.metrics...
            return f"suites.{renamed_metric(rest)}"
        return v

    min_new_examples: int = Field(
        1, ge=0, description="Stop when a round keeps fewer new examples (nothing left to learn)."
    )
    sources: list[Literal["self_instruct", "teacher", "import", "constraints"]] = Field(
        default_factory=lambda: ["constraints"],
        description="Where a round's candidates come from; mixable. constraints (the default "
        "recipe): seed, pool and proposed tasks get verifiable constraints (augment:), the "
        "student answers each respond.n times and the verifier keeps the answers that pass; "
        "self_instruct: the student proposes and answers, and judges itself "
        "(configs/self-instruct.yaml); teacher: the teacher answers the proposals; import: files "
        "below.",
    )
    import_files: list[Path] = Field(
        default_factory=list,
        description="Expert data (Alpaca/ShareGPT/messages...) added in round 1.",
    )
    seeds_file: Path | None = Field(
        None, description="Seed tasks JSONL (default: the bundled 144)."
    )
    review: bool = Field(
        False,
        description="Pause after dedup for human review: the round's kept examples go to "
        "rounds/NNN/review.jsonl and .csv; `selfloop review RUN_DIR --accept FILE` goes on.",
    )

    recursion_limit: int = Field(10_000, ge=50, description="LangGraph step limit (safety net).")


# The model's own distribution, untruncated: fine-tuning on the answers the verifier passes then
# moves the model only as far as that selection asks. At 0.9 / 0.95 the samples were sharper than
# the model and training on them sharpened it too (reference NLL +0.05 nats; bench/README.md).
RESPOND_SAMPLING = SamplingParams(max_tokens=320, temperature=1.0, top_p=1.0)
# Greedy, so two evaluations of a model agree; 400 tokens, as some IF prompts ask 120-200 words.
EVAL_SAMPLING = SamplingParams(max_tokens=400)


class RespondConfig(BaseModel):
    """How responses are written."""

    model_config = ConfigDict(extra="forbid")

    n: int = Field(
        8,
        ge=1,
        description="Responses per instruction: the verifier (constraints) or the judge picks "
        "among them (rejection sampling).",
    )
    sampling: SamplingParams = Field(
        default_factory=lambda: RESPOND_SAMPLING,
        description="Sampling for responses (n is taken from respond.n; keys left out keep "
        "these defaults).",
    )
    teacher: ModelSpec | None = Field(None, description="Teacher model for the teacher source.")
    teacher_backend: BackendConfig | None = Field(None, description="How the teacher runs.")

    @model_validator(mode="before")
    @classmethod
    def _sampling_defaults(cls, data: object) -> object:
        return section_sampling(data, "respond", RESPOND_SAMPLING)


class LoopJudgeConfig(BaseModel):
    """The judge stage."""

    model_config = ConfigDict(extra="forbid")

    rubric: JudgeConfig = Field(
        default_factory=JudgeConfig, description="Scoring mode and retries."
    )
    min_score: float = Field(
        1.0, ge=1, le=5, description="Best-of-n responses scoring lower are dropped."
    )
    keep_top: float = Field(
        1.0,
        gt=0,
        le=1,
        description="Keep only this top share of the best-of-n responses by score (1.0: all; "
        "verified answers need no cut). A small model judging itself scores on a compressed, "
        "shifted scale (SmolLM2-135M: ~1.5-2.2 of 5), so for self_instruct a relative cut (0.5) "
        "works where a fixed threshold keeps all or nothing.",
    )
    per_instruction: int = Field(
        4,
        ge=1,
        description="Answers kept per instruction: its best, then (when above 1) its next-best "
        "distinct answers scoring >= min_score. Several verified answers to a prompt are more "
        "training data from the same samples (rejection-sampling fine-tuning); dedup keeps or "
        "drops an instruction's answers together.",
    )
    model: ModelSpec | None = Field(
        None,
        description="Judge model (a stronger local model, or one behind an OpenAI-compatible "
        "endpoint with backend.kind openai); default the student itself. Also rates harm when "
        "safety.llm is on, and judges the evaluation's win rate (default there: the student's "
        "base weights).",
    )
    backend: BackendConfig | None = Field(
        None, description="How the judge model runs; default the student's backend."
    )


class CustomSuite(BaseModel):
    """A user's own evaluation suite: a JSONL file of records for one of the metrics."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, description="Suite name (gate metrics: NAME.metric).")
    path: Path = Field(..., description="JSONL file; see judges/evals for each metric's keys.")
    metric: Literal["verifiable", "pairwise", "facts", "language", "refusal"] = Field(
        ..., description="How its answers are scored."
    )


class EvalConfig(BaseModel):
    """Held-out evaluation of each candidate against the champion."""

    model_config = ConfigDict(extra="forbid")

    suites: list[str] = Field(
        default_factory=lambda: ["if", "helpfulness", "domains", "multilingual", "safety"],
        description="Bundled suites to run.",
    )
    custom: list[CustomSuite] = Field(
        default_factory=list,
        description="Your own suites, evaluated with the bundled ones and guarded against "
        "contamination the same way.",
    )
    limit_per_suite: int | None = Field(
        24,
        ge=1,
        description="Evaluate on N prompts per suite, spread over its slices; null = every prompt "
        "(744; right on a GPU; the recipe's 594 take about 10 minutes a model on 2 CPU cores "
        "with native bfloat16).",
    )
    suite_limits: dict[str, int | None] = Field(
        default_factory=lambda: {"if": None, "domains": None, "multilingual": None},
        description="Per-suite override of limit_per_suite (null = every prompt). By default "
        "the IF suite, the gate's primary, is evaluated whole (344 prompts): a paired test needs "
        "them all to resolve a few points; and the domain (90) and multilingual (112) suites, "
        "whose fact recall and response-language accuracy guard with a 0.05 tolerance that 24 "
        "prompts cannot resolve (one prompt is 0.042). {} applies limit_per_suite to every "
        "suite.",
    )
    sampling: SamplingParams = Field(
        default_factory=lambda: EVAL_SAMPLING,
        description="How evaluation answers are generated: greedy (temperature 0) by default, so "
        "two evaluations of one model agree and the champion's answers can be cached; "
        "max_tokens at least 8; one answer per prompt.",
    )
    pairwise: bool | None = Field(
        None,
        description="Judge the candidate's helpfulness answers against the champion's (the "
        "win rate). null = only where it can tell something: when the gate reads a win rate "
        "(primary or guard) or judge.model names a judge. The student judging itself at 135M "
        "flips every verdict with the order, so its win rate is a constant 0.5; judging it and "
        "answering as the champion cost about a minute a round.",
    )
    cache_dir: Path | None = Field(
        None,
        description="Where evaluation answers are cached; null = the run's eval_cache/. Entries "
        "are keyed by model, adapter, prompt and settings, so runs of the same model may share "
        "one directory: the base model is then evaluated once, not once per run.",
    )

    @model_validator(mode="before")
    @classmethod
    def _flat_sampling(cls, data: object) -> object:
        return section_sampling(data, "eval", EVAL_SAMPLING, flat=("max_tokens",))

    @field_validator("suites", mode="before")
    @classmethod
    def _renamed_suites(cls, v: Any) -> Any:
        return (
            [renamed_suite(x) if isinstance(x, str) else x for x in v] if isinstance(v, list) else v
        )

    @field_validator("suite_limits", mode="before")
    @classmethod
    def _renamed_limits(cls, v: Any) -> Any:
        return (
            {renamed_suite(k) if isinstance(k, str) else k: x for k, x in v.items()}
            if isinstance(v, dict)
            else v
        )

    @field_validator("sampling")
    @classmethod
    def _one_answer(cls, v: SamplingParams) -> SamplingParams:
        if v.max_tokens < 8:
            raise ValueError("sampling.max_tokens must be >= 8")
        if v.n != 1:
            raise ValueError("sampling.n must be 1: each prompt gets one scored answer")
        return v

    def cache(self, run_root: Path) -> Path:
        """The eval cache directory of a run rooted at `run_root`."""
        return self.cache_dir if self.cache_dir is not None else run_root / "eval_cache"

    def limits(self) -> dict[str, int | None]:
        """Prompts to evaluate per suite name (None = all)."""
        names = [*self.suites, *(c.name for c in self.custom)]
        return {n: self.suite_limits.get(n, self.limit_per_suite) for n in names}


# Sources whose data needs no LLM judge: a rejected round's examples stay training data
# (tune.carry_rejected's default).
VERIFIED_SOURCES = {"constraints", "import"}

# The loop's gate where it differs from GateConfig's defaults (which callers of loop.gate.decide
# outside a run keep). margin 0: promote when the paired 95% interval of the gain is above zero,
# a significance test over the prompts; a margin of 0.02 on the interval's lower end asked a
# 344-prompt suite for +6 to +8 points before any promotion. The reference answers' NLL on the
# helpfulness and domain suites may rise by at most 0.05 nats a round: training on its own answers
# drifts the model from well-written text (+0.05-0.09 nats seen in rounds that sampled sharper
# than the model; bench/README.md). Every guard also holds against the run's starting model
# with the same tolerance: per round alone, k promotions that each rose just under it could
# drift k tolerances (seed 1's rounds 2 and 3 each rose +0.05 nats over their champion).
LOOP_GATE: dict[str, Any] = {
    "primary": "if.prompt_loose",
    "margin": 0.0,
    "guards": [
        {**g.model_dump(), "start_tolerance": g.tolerance}
        for g in [
            *default_guards(),
            Guard(metric="helpfulness.reference_nll", tolerance=0.05, slices=False),
            Guard(metric="domains.reference_nll", tolerance=0.05, slices=False),
        ]
    ],
}


class SelfloopConfig(BaseModel):
    """A whole selfloop config file."""

    model_config = ConfigDict(extra="forbid")

    model: ModelSpec = Field(default_factory=ModelSpec, description="The model being improved.")
    backend: BackendConfig = Field(default_factory=BackendConfig, description="How it is run.")
    sampling: SamplingParams = Field(
        default_factory=SamplingParams, description="Default sampling for generation."
    )
    run: RunConfig = Field(default_factory=RunConfig, description="Rounds and data sources.")
    propose: ProposeConfig = Field(default_factory=ProposeConfig, description="Self-instruct.")
    augment: AugmentConfig = Field(
        default_factory=AugmentConfig, description="Constraint augmentation (constraints source)."
    )
    respond: RespondConfig = Field(default_factory=RespondConfig, description="Responses.")
    filters: FilterConfig = Field(default_factory=FilterConfig, description="Heuristic filters.")
    safety: SafetyConfig = Field(default_factory=SafetyConfig, description="Safety pass.")
    judge: LoopJudgeConfig = Field(default_factory=LoopJudgeConfig, description="LLM judge.")
    dedup: DedupConfig = Field(default_factory=DedupConfig, description="FAISS dedup.")
    tune: TuneConfig = Field(default_factory=TuneConfig, description="How rounds fine-tune.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Held-out evaluation.")
    metrics: MetricsConfig = Field(
        default_factory=MetricsConfig, description="TensorBoard / MLflow besides metrics.jsonl."
    )
    gate: GateConfig = Field(
        default_factory=lambda: GateConfig.model_validate(copy.deepcopy(LOOP_GATE)),
        description="Promotion rule. The loop's default primary metric is the verifiable "
        "IFEval-style pass rate of selfloop's own IF suite, not the pairwise win rate: judged "
        "by the bundled SmolLM2-135M, every pair "
        "flipped with the order (consistency 0 of 24 in a real quickstart round), so the win rate "
        "is a constant 0.5 there. Use gate.primary=helpfulness.win_rate with a stronger model. "
        "Promotion needs the paired 95% interval of the gain above zero (margin 0), and guards "
        "the reference answers' NLL besides GateConfig's own guards. Keys left out of a `gate:` "
        "section keep these loop defaults.",
    )

    @model_validator(mode="before")
    @classmethod
    def _loop_gate(cls, data: object) -> object:
        # Key by key: a section written in part (`gate: {margin: 0.01}`) keeps the loop's other
        # defaults. Filled in as a whole section, it fell back to GateConfig's own, and
        # `--set gate.margin=0` silently made the pairwise win rate the primary metric.
        if not isinstance(data, dict) or not isinstance(data.get("gate", {}), dict):
            return data  # not mappings: let validation name them
        return {**data, "gate": {**copy.deepcopy(LOOP_GATE), **data.get("gate", {})}}

    @model_validator(mode="after")
    def _auto_tune(self) -> SelfloopConfig:
        # Resolved here, where the sources are known: verified data (constraints checked by
        # code, imported expert data) stays right when its round is rejected; judged data not.
        if self.tune.carry_rejected is None:
            self.tune.carry_rejected = set(self.run.sources) <= VERIFIED_SOURCES
        t = self.tune
        if t.greedy_pairs is None:  # it pairs answers to constrained tasks, after sft, by dpo
            lora = t.method in ("lora", "qlora")
            on = "constraints" in self.run.sources and t.objective == "sft" and lora
            t.greedy_pairs = 2 if on else 0
        return self


class ConfigError(SelfloopError):
    """A config file or override that does not validate."""


class _Loader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping: YAML would keep the last
    silently, and a section written twice (two `run:` blocks) would lose the first's keys."""


def _unique_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> Any:
    first_line: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden below
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            line = first_line.setdefault(key, key_node.start_mark.line + 1)
        except TypeError:  # an unhashable key: construct_mapping says so
            continue
        if line != key_node.start_mark.line + 1:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} given twice (first on line {line})", key_node.start_mark
            )
    return loader.construct_mapping(node, deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def read_yaml(path: Path, what: str = "config file") -> dict[str, Any]:
    """A YAML file whose top level is a mapping; anything else is a one-line ConfigError naming
    the file (and the line, for bad YAML or a duplicate key)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{what} {path} is not UTF-8 text ({e.reason} at byte {e.start})"
        ) from None
    if not text.strip():  # an empty file named on purpose is a mistake, not "all defaults"
        hint = "; leave out the file for the defaults" if what == "config file" else ""
        raise ConfigError(f"{what} {path} is empty{hint}")
    try:
        loaded = yaml.load(text, Loader=_Loader)  # a SafeLoader: no arbitrary objects
    except RecursionError:
        raise ConfigError(f"{what} {path} is nested too deeply to be a config") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', e)})") from e
    if loaded is None:  # comments only
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return loaded


def _non_finite(data: Any, where: str = "") -> str | None:
    """The dotted key of the first float that is inf or nan in `data`, else None."""
    import math

    if isinstance(data, float) and not math.isfinite(data):
        return where
    if isinstance(data, list):
        data = {f"[{k}]": v for k, v in enumerate(data)}
    for k, v in data.items() if isinstance(data, dict) else ():
        k = str(k)
        key = f"{where}{k}" if k.startswith("[") else f"{where}.{k}" if where else k
        if (found := _non_finite(v, key)) is not None:
            return found
    return None


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (["a", "b"], value parsed as YAML, so 3 is an int and [x, y] a list)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r}: expected key.sub=value")
    try:
        value = yaml.load(raw, Loader=_Loader) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({e.problem})") from e
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
            node = child
        node[path[-1]] = value
    return data


def _before_the_band(data: dict[str, Any]) -> None:
    """A run's config.yaml written before dedup's paraphrase band (every dedup key dumped, none of
    the band's) keeps deciding as it did: resumed, a run must give the result it would have
    given uninterrupted, and its pool was built with the threshold alone."""
    dd = data.get("dedup")
    if (
        isinstance(dd, dict)
        and {"approximate_above", "histogram_bins", "samples"} <= dd.keys()
        and "paraphrase_threshold" not in dd
    ):
        dd["paraphrase_threshold"] = None


def _before_the_bits_masks(data: dict[str, Any]) -> None:
    """A run's config.yaml written before `tune.dropout_masks` (every tune key dumped, not that
    one) keeps nn.Dropout's masks: the same distribution, but resumed, a run must draw what it
    would have drawn uninterrupted."""
    tune = data.get("tune")
    if (
        isinstance(tune, dict)
        and {"abort_grad_norm", "save_total_limit", "logging_steps", "lora_dropout"} <= tune.keys()
        and "dropout_masks" not in tune
    ):
        tune["dropout_masks"] = "bernoulli"


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None
) -> SelfloopConfig:
    """Read `path` (None = all defaults), apply overrides, validate. Errors name file and key."""
    data: dict[str, Any] = {}
    source = "config"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        data = read_yaml(path)
        _before_the_band(data)
        _before_the_bits_masks(data)
    data = apply_overrides(data, overrides or [])
    try:
        cfg = SelfloopConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{source}: {describe_validation(e)}{_suggestion(e)}") from e
    # pydantic takes .inf and .nan for a float: no setting means either (a learning rate of
    # inf trains to nan), so every one is refused, however it was written.
    if (key := _non_finite(cfg.model_dump(mode="python"))) is not None:
        raise ConfigError(f"{source}: {key}: must be a finite number")
    # A missing seed or import file would otherwise surface only when its round reaches it.
    bases = cfg.augment.base_tasks
    for key, f in [
        ("run.seeds_file", cfg.run.seeds_file),
        ("augment.base_tasks", None if bases in (None, "bundled") else bases),
        *((f"run.import_files[{k}]", p) for k, p in enumerate(cfg.run.import_files)),
        *((f"eval.custom[{k}].path", c.path) for k, c in enumerate(cfg.eval.custom)),
    ]:
        if f is not None and not Path(f).is_file():
            raise ConfigError(f"{source}: {key}: file not found: {f}")
    if cfg.eval.custom:  # a bad record should stop the run now, not at round 1's evaluation
        try:
            eval_suites(cfg)
        except SelfloopError as e:
            raise ConfigError(f"{source}: eval.custom: {e}") from None
    evaluated = [*cfg.eval.suites, *(c.name for c in cfg.eval.custom)]
    for name, limit in cfg.eval.suite_limits.items():
        if name not in evaluated and "suite_limits" not in cfg.eval.model_fields_set:
            continue  # the default's {if: null, ...} in a run that leaves that suite out
        if name not in evaluated:
            raise ConfigError(f"{source}: eval.suite_limits: {name!r} is not an evaluated suite")
        if limit is not None and limit < 1:
            raise ConfigError(f"{source}: eval.suite_limits.{name}: must be >= 1 or null")
    if cfg.eval.pairwise is False and (key := gate_reads_pairwise(cfg)) is not None:
        raise ConfigError(
            f"{source}: {key} reads a pairwise metric, but eval.pairwise is false: no round "
            "would have it; set eval.pairwise to true or null, or gate on another metric"
        )
    if cfg.gate.primary.partition(".")[0] not in evaluated:
        raise ConfigError(
            f"{source}: gate.primary: {cfg.gate.primary} is on a suite that is not evaluated "
            f"(eval.suites + eval.custom: {', '.join(evaluated)})"
        )
    return cfg


PAIRWISE_METRICS = ("win_rate", "consistency_rate")


def gate_reads_pairwise(cfg: SelfloopConfig) -> str | None:
    """The key (gate.primary, gate.guards[k], run.target_metric) that reads a pairwise metric,
    else None."""
    keys = [("gate.primary", cfg.gate.primary)]
    keys += [(f"gate.guards[{k}]", g.metric) for k, g in enumerate(cfg.gate.guards)]
    reads = [k for k, m in keys if m.partition(".")[2] in PAIRWISE_METRICS]
    target = cfg.run.target_metric or ""  # suites.helpfulness.metrics.win_rate.overall.value
    reads += ["run.target_metric"] if any(f".{x}." in target for x in PAIRWISE_METRICS) else []
    return reads[0] if reads else None


def eval_pairwise(cfg: SelfloopConfig) -> bool:
    """Whether a round's evaluation judges candidate vs champion (eval.pairwise, null = auto)."""
    if cfg.eval.pairwise is not None:
        return cfg.eval.pairwise
    return gate_reads_pairwise(cfg) is not None or cfg.judge.model is not None


def eval_suites(cfg: SelfloopConfig) -> dict[str, tuple[str, list[dict[str, Any]]]]:
    """The run's evaluation suites, bundled and custom, loaded and validated together."""
    from judges.evals import load_suites

    return load_suites(cfg.eval.suites, {c.name: (c.path, c.metric) for c in cfg.eval.custom})


def eval_prompts(cfg: SelfloopConfig) -> list[tuple[str, str]]:
    """(suite/id, prompt) of every eval prompt: what training data must never come near."""
    return [
        (f"{name}/{r['id']}", r["prompt"])
        for name, (_, suite) in eval_suites(cfg).items()
        for r in suite
    ]


def check_run(cfg: SelfloopConfig, source: str = "config") -> None:
    """Everything a run refuses beyond the schema, checked before anything is written; the one
    path used by `selfloop config`, `run` and `resume`, so `config` never prints a config that
    `run` would refuse."""
    from loop.metrics import check_available

    check_available(cfg.metrics)
    check_loop_tune(cfg, source)


def check_loop_tune(cfg: SelfloopConfig, source: str = "config") -> None:
    """Refuse tuning settings the loop cannot run (they stay valid for a one-off `selfloop tune`),
    and a student backend that cannot load the adapters a round makes.

    A round's output is evaluated and promoted as an adapter loaded onto the student, and the
    next round warm-starts from it, so the round must produce an adapter the student's backend
    can load. Called when a run starts or resumes, before anything is written.
    """
    t, kind = cfg.tune, cfg.backend.kind
    if t.method == "full":
        raise ConfigError(
            f"{source}: tune.method: full trains a whole model, but the loop evaluates, promotes "
            "and warm-starts from adapters; use lora, qlora or prefix, or `selfloop tune --method "
            "full` for a one-off full fine-tune"
        )
    if t.fsdp:
        raise ConfigError(
            f"{source}: tune.fsdp: a run trains in its own single process, which cannot shard; "
            "use `torchrun ... -m loop.cli tune --set tune.fsdp=true` for an FSDP fine-tune"
        )
    if kind == "auto":
        from agent.backends import auto_kind

        kind = auto_kind()
    if cfg.judge.backend is not None and cfg.judge.model is None:
        # The student then judges itself on its own backend: judge.backend would be ignored,
        # and the user believe a stronger judge at work.
        raise ConfigError(
            f"{source}: judge.backend is set but judge.model is not: the student judges itself "
            "on its own backend; set judge.model (the model that backend runs) or drop "
            "judge.backend"
        )
    if kind == "openai":
        raise ConfigError(
            f"{source}: backend.kind: openai cannot be the student's backend in a run: each round "
            "evaluates its new adapter on the student, and an OpenAI-compatible endpoint cannot "
            "load one; use transformers or vllm (an endpoint can judge: judge.model + "
            "judge.backend)"
        )
    if kind == "vllm" and t.method == "prefix":
        raise ConfigError(
            f"{source}: tune.method: prefix adapters cannot be served by vLLM (LoRA only); use "
            "backend.kind: transformers or tune.method: lora"
        )
    if kind == "vllm" and t.lora_r > cfg.backend.max_lora_rank:
        raise ConfigError(
            f"{source}: tune.lora_r: {t.lora_r} exceeds backend.max_lora_rank "
            f"{cfg.backend.max_lora_rank}, the largest adapter vLLM will serve; raise that or "
            "lower tune.lora_r"
        )
    _check_vllm_neighbours(cfg, kind, source)
    # What this machine cannot train (qlora without CUDA, bf16 without native bfloat16, a CUDA
    # model.device without a GPU): refused now rather than at round 1's tune stage, after
    # proposing, answering and judging. The same check `tuners.train` makes, on the device it
    # will pick.
    from agent.models import pick_device
    from tuners.guards import check_settings

    try:
        check_settings(t, pick_device(cfg.model), None)
    except SelfloopError as e:
        raise ConfigError(f"{source}: {e}") from e


# vLLM sizes its KV cache to its share of the GPU's memory at start-up; two engines in one
# process need shares that fit together, with room left for the CUDA context and activations.
VLLM_SHARED_LIMIT = 0.95


def _check_vllm_neighbours(cfg: SelfloopConfig, student_kind: str, source: str) -> None:
    """A judge or teacher on vLLM beside a vLLM student runs a second engine in the same process
    on the same GPU while the student's is alive; with both at their default share the second
    fails to start, rounds into the run. Refused at start unless the shares fit together."""
    if student_kind != "vllm":
        return
    from agent.backends import auto_kind

    others = []
    if cfg.judge.model is not None:
        others.append(("judge", "judge.backend", cfg.judge.backend))
    if "teacher" in cfg.run.sources and cfg.respond.teacher is not None:
        others.append(("teacher", "respond.teacher_backend", cfg.respond.teacher_backend))
    mine = cfg.backend.gpu_memory_utilization
    for role, key, backend in others:
        b = backend or cfg.backend  # unset: it runs like the student
        if (b.kind if b.kind != "auto" else auto_kind()) != "vllm":
            continue
        if mine + b.gpu_memory_utilization > VLLM_SHARED_LIMIT:
            theirs = (
                f"{key}.gpu_memory_utilization {b.gpu_memory_utilization}"
                if backend is not None
                else f"{b.gpu_memory_utilization} ({key} unset: it runs like the student)"
            )
            raise ConfigError(
                f"{source}: the {role} runs a second vLLM engine beside the student's, in one "
                f"process on one GPU: backend.gpu_memory_utilization {mine} + {theirs} exceeds "
                f"{VLLM_SHARED_LIMIT}; give each a share, e.g. backend.gpu_memory_utilization: "
                f"0.45 and {key}: {{kind: vllm, gpu_memory_utilization: 0.45}}, or run the "
                f"{role} with {key}.kind transformers or openai"
            )


def _suggestion(e: ValidationError) -> str:
    """`; did you mean 'max_rounds'?` for a misspelt key (the first error's), else ''."""
    import difflib

    first = e.errors()[0]
    if first.get("type") != "extra_forbidden":
        return ""
    *parents, key = [p for p in first["loc"] if isinstance(p, str)]
    model: Any = SelfloopConfig
    for part in parents:
        field = getattr(model, "model_fields", {}).get(part)
        kinds = [field.annotation, *get_args(field.annotation)] if field else []
        model = next((t for t in kinds if isinstance(t, type) and issubclass(t, BaseModel)), None)
        if model is None:
            return ""
    close = difflib.get_close_matches(key, list(model.model_fields), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def dump_config(cfg: SelfloopConfig) -> str:
    """The resolved config as YAML (what a run saves next to its data)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
