"""tune: train the round's adapter on what the round kept (warm-started from the champion), or
on the whole accepted pool plus this round from the base model (`tune.warm_start: false`).
Writes `rounds/NNN/adapter/` (PEFT format, with train_metrics.json); step checkpoints in
`adapter.checkpoints/` let a killed run lose at most `tune.save_steps` steps. With
`tune.greedy_pairs` (the recipe's default) an sft round is two steps: sft into
`rounds/NNN/greedy/sft_adapter/`, then RPO from it against its own greedy failures
(`greedy_step`) into `rounds/NNN/adapter/` (with `tune.greedy_steps` > 1, that step again from
the adapter the last one trained, each in `rounds/NNN/greedy/step-K/`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.data import read_json
from loop.context import Context, LoopState
from loop.faults import tune_callbacks
from loop.stages.base import Stage

if TYPE_CHECKING:
    from loop.config import SelfloopConfig
    from loop.rundir import RunDir
    from tuners.config import TuneConfig
    from tuners.train import TrainResult

log = logging.getLogger(__name__)

ADAPTER = "adapter"
GREEDY, GREEDY_ANSWERS, GREEDY_PAIRS = "greedy", "answers.jsonl", "preference_pairs.jsonl"
SFT_ADAPTER = "sft_adapter"  # under GREEDY: the sft step's adapter
TRAIN_METRICS = "train_metrics.json"
_METRICS = ("steps", "final_loss", "tokens", "seconds", "tokens_per_second", "peak_memory_mb")


def run(ctx: Context, state: LoopState) -> dict:
    n = state["round"]
    if ctx.rundir.stage_done(n, "tune"):
        return {"trained": True}
    champion = ctx.rundir.root / state["champion"] if state.get("champion") else None
    exclude = near_eval_seeds(ctx.cfg, lambda: ctx.pool().embedder)
    parts, init = training_parts(
        ctx.rundir, ctx.cfg.tune, n, champion, ctx.cfg.run.seeds_file, exclude
    )
    data = joined(parts)
    if not data:
        return {"trained": False}
    write_data_account(ctx.rundir, n, ctx.cfg.tune, parts, init)
    ctx.release()
    t = ctx.cfg.tune
    if t.greedy_pairs and t.objective == "sft" and t.method in ("lora", "qlora"):
        greedy_step(ctx, state, data, init)
    else:
        fit(ctx.cfg, data, ctx.rundir.adapter_dir(n), init, n, _callbacks(ctx, n))
    return {"trained": True}


def greedy_step(ctx: Context, state: LoopState, data: list[dict], init: Path | None) -> None:
    """sft, then `tune.greedy_objective` against the sft adapter's own greedy failures
    (`tune.greedy_pairs`), `tune.greedy_steps` times: each later step answers the same tasks
    greedily with the adapter the step before trained and trains from it against the failures
    that remain. Each part is kept in `rounds/NNN/greedy/` as it finishes - the sft adapter,
    the greedy answers with their verdicts, the pairs, stats.json (a later step's answers and
    pairs in `step-K/`, beside the adapter it starts from; its counts in stats.json's `later`)
    - so a killed run resumes after the last one; the round's adapter is the last step's (or
    the adapter a step started from, when its failures gave no pair: none failed, or the
    tasks that did have no verified answer)."""
    import shutil

    from agent.atomic import atomic_dir
    from loop.rundir import write_json

    n, cfg = state["round"], ctx.cfg
    out = ctx.rundir.round_dir(n) / GREEDY
    sft_dir = out / SFT_ADAPTER
    if not sft_dir.is_dir():
        fit(cfg, data, sft_dir, init, n, _callbacks(ctx, n))
    verified = [r for r in data if r.get("constraints")]
    final = ctx.rundir.adapter_dir(n)
    sft_metrics = read_json(sft_dir / TRAIN_METRICS)
    start, before = sft_dir, int(sft_metrics.get("steps") or 0)
    stats: dict[str, Any] = {}
    total = cfg.tune.greedy_steps
    for k in range(1, total + 1):
        where = out if k == 1 else out / f"step-{k}"
        label = "sft" if k == 1 else f"greedy{k - 1}"  # the adapter that answers
        answers, pairs, verdicts = _greedy_pairs(ctx, state, start, label, where, verified)
        step = {"answers": len(answers), "verdicts": verdicts, "pairs": len(pairs)}
        if cfg.tune.greedy_repair:
            step["repaired_pairs"] = sum(p.get("source") == "greedy_repair" for p in pairs)
        if k == 1:
            stats = {**step, "sft": {m: sft_metrics[m] for m in _METRICS if m in sft_metrics}}
        else:
            stats.setdefault("later", []).append({"step": k, **step})
        log.info(
            "round %d tune: %d greedy answers of the %s adapter (%s): %d pairs",
            n, len(answers), label,
            ", ".join(f"{v} {c}" for v, c in verdicts.items()), len(pairs),
        )  # fmt: skip
        # The optimizer steps of the trainings before the one that made the round's adapter
        # (loop.metrics.round_steps); with one step its sft steps say as much, as before.
        if not pairs:  # no failure to pair: the adapter this step started from is the round's
            if total > 1:
                stats["before_steps"] = before - _steps(start)
            write_json(out / "stats.json", stats)
            with atomic_dir(final) as tmp:
                shutil.copytree(start, tmp, dirs_exist_ok=True)
            return
        if total > 1:
            stats["before_steps"] = before
        write_json(out / "stats.json", stats)
        adapter = final if k == total else out / f"step-{k + 1}" / "start_adapter"
        if not adapter.is_dir():
            tuned = cfg.model_copy(update={"tune": greedy_step_config(cfg.tune)})
            callbacks = _callbacks(ctx, n, tuned.tune.objective, after=before)
            fit(tuned, pairs, adapter, start, n, callbacks)
        start = adapter
        before += _steps(adapter)


def _steps(adapter: Path) -> int:
    return int(read_json(adapter / TRAIN_METRICS).get("steps") or 0)


def _greedy_pairs(
    ctx: Context, state: LoopState, adapter: Path, label: str, where: Path, verified: list[dict]
) -> tuple[list[dict], list[dict], dict[str, int]]:
    """`adapter`'s greedy answers (loaded as `label`) to the tasks of `verified`, kept in
    `where` and reused on a re-run, and the pairs against its failures (written there too),
    with the verdicts."""
    from agent.backends.base import AdapterHost
    from agent.data import read_jsonl, write_jsonl
    from agent.errors import SelfloopError
    from judges.preference import greedy_pairs, greedy_verdict
    from loop.stages.filter import response_filters

    n, cfg = state["round"], ctx.cfg
    quality = response_filters(cfg.filters).check
    answers_path = where / GREEDY_ANSWERS
    if answers_path.is_file():
        answers = read_jsonl(answers_path)
    else:
        gen = ctx.student(state)
        if not isinstance(gen, AdapterHost):
            raise SelfloopError(
                f"tune.greedy_pairs: backend {cfg.backend.kind} cannot load the sft adapter; "
                "use transformers or vllm, or tune.greedy_pairs: 0"
            )
        name = gen.load_adapter(adapter, f"{label}-{n}")
        answers, said = greedy_answers(gen, name, greedy_tasks(ctx.rundir, verified), cfg, n)
        ctx.release()
        if said.get("backend_errors"):  # those tasks get no greedy answer (and no pair)
            log.warning("round %d tune: %d greedy answers failed", n, said["backend_errors"])
        for a in answers:
            a["greedy_verdict"] = greedy_verdict(a, quality)
        where.mkdir(parents=True, exist_ok=True)
        write_jsonl(answers_path, answers)
    pairs, verdicts = greedy_pairs(
        answers,
        verified,
        quality,
        cfg.tune.greedy_pairs,
        cfg.tune.greedy_match,
        greedy_repairer(cfg, quality),
    )
    write_jsonl(where / GREEDY_PAIRS, pairs)
    return answers, pairs, verdicts


def greedy_repairer(cfg: SelfloopConfig, quality: Callable[[dict], Any]) -> Callable | None:
    """`tune.greedy_repair`: what makes a greedy failure good with the least change (held-out
    types never repaired, the result passing the quality filters `quality`), else None."""
    if not cfg.tune.greedy_repair:
        return None
    from judges.repair import repair_greedy

    never = cfg.augment.held_out_types
    return lambda g: repair_greedy(g, never=never, clean=lambda r: quality(r) is None)


def greedy_step_config(tune: TuneConfig) -> TuneConfig:
    """The tune config of the preference part of the greedy step: `greedy_batch_size` pairs a
    forward pass, accumulated to (at least) the pairs of one of the sft part's optimizer steps."""
    pairs = tune.batch_size * tune.grad_accum
    micro = min(tune.greedy_batch_size, pairs)
    return tune.model_copy(
        update={
            "objective": tune.greedy_objective,
            "learning_rate": tune.greedy_learning_rate,
            "epochs": tune.greedy_epochs,
            "batch_size": micro,
            "grad_accum": -(-pairs // micro),
            "greedy_pairs": 0,
        }
    )


def greedy_tasks(rundir: RunDir, verified: list[dict]) -> list[dict]:
    """The constrained tasks of every round whose verified answers are in `verified`: what
    the sft adapter trained on answers to, and so what its greedy answers are paired on."""
    rounds = sorted({int(r["round"]) for r in verified if "round" in r})
    return [t for k in rounds for t in rundir.input_records(k, "respond") if t.get("constraints")]


def greedy_answers(
    gen: Any, adapter: str, tasks: list[dict], cfg: SelfloopConfig, n: int
) -> tuple[list[dict], dict[str, Any]]:
    """One answer per task from `adapter` (loaded in `gen`) as the IF suite is answered:
    greedy, at the respond stage's length limits; and respond's counts."""
    from loop.stages.respond import answer

    params = cfg.respond.sampling.model_copy(update={"n": 1, "temperature": 0.0, "top_p": 1.0})
    limit = cfg.augment.language_max_tokens
    return answer(gen, tasks, params, limit, adapter=adapter, round_index=n)


def training_data(
    rundir: RunDir,
    cfg: TuneConfig,
    n: int,
    champion: Path | None,
    seeds_file: Path | None = None,
    exclude: Collection[str] = (),
) -> tuple[list[dict[str, Any]], Path | None]:
    """What round `n` trains on under `cfg.objective`, and the adapter it starts from (None: a
    fresh adapter on the base): `training_parts`, in one list. An empty list: nothing to
    train (logged). `bench/objectives.py` calls this too, so a bench trains each objective on
    exactly what the loop would."""
    parts, start = training_parts(rundir, cfg, n, champion, seeds_file, exclude)
    return joined(parts), start


def joined(parts: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """`training_parts`' parts in one list, in training order."""
    return [r for part in parts.values() for r in part]


DATA_ACCOUNT = "tune_data.json"


def write_data_account(
    rundir: RunDir, n: int, cfg: TuneConfig, parts: dict[str, list], start: Path | None
) -> None:
    """`rounds/NNN/tune_data.json`: what the round trained on, part by part (this round's
    examples, those carried from rejected rounds, replayed, anchors, or the earlier pool a
    fresh adapter trains on), by the rounds they came from, and the adapter it started from;
    `selfloop show` prints it."""
    from collections import Counter

    from loop.rundir import write_json

    def by_round(rows: list[dict]) -> dict[str, int]:  # anchors (seed tasks) have no round
        return dict(sorted(Counter(str(r.get("round", "-")) for r in rows).items()))

    account = {
        "objective": cfg.objective,
        "start": None
        if start is None
        else str(start.relative_to(rundir.root) if start.is_relative_to(rundir.root) else start),
        "examples": sum(len(p) for p in parts.values()),
        "parts": {k: {"examples": len(v), "by_round": by_round(v)} for k, v in parts.items()},
    }
    write_json(rundir.round_dir(n) / DATA_ACCOUNT, account)


def training_parts(
    rundir: RunDir,
    cfg: TuneConfig,
    n: int,
    champion: Path | None,
    seeds_file: Path | None = None,
    exclude: Collection[str] = (),
) -> tuple[dict[str, list[dict[str, Any]]], Path | None]:
    """What round `n` trains on under `cfg.objective`, by part (in training order), and the
    adapter it starts from (None: a fresh adapter on the base):

    - sft: the round's kept examples from the champion with `warm_start` - with
      `carry_rejected` also those of the rounds rejected since the champion's, plus `replay`
      of earlier ones - else the whole accepted pool (with `carry_rejected`, rejected rounds'
      examples too) plus this round from the base; plus `anchor` seed tasks (from
      `seeds_file`, None = the bundled ones) with their written answers, less the seed ids in
      `exclude` (`near_eval_seeds`);
    - dpo / rpo: the round's preference pairs from `pair_sources`;
    - grpo: the round's constrained prompts the model passes only sometimes (the filter stage's
      pass rates): a prompt always or never passed gives every answer of a group the same
      reward, so no gradient.
    """
    start = champion if cfg.warm_start else None
    if cfg.objective == "grpo":
        from agent.data import read_jsonl
        from loop.stages.filter import PASS_RATES

        path = rundir.round_dir(n) / "filter" / PASS_RATES
        rates = read_jsonl(path) if path.is_file() else []
        tasks = [r for r in rates if 0 < r.get("pass_rate", 0) < 1 and r.get("constraints")]
        if not tasks:
            log.info("round %d tune: no prompt passed only sometimes: nothing for grpo", n)
        return {"prompts": tasks}, start
    if cfg.objective != "sft":
        pairs = rundir.round_pairs(n, cfg.pair_sources)
        if not pairs:
            log.info("round %d tune: no preference pairs from %s", n, cfg.pair_sources)
        return {"pairs": pairs}, start
    kept = rundir.input_records(n, "tune")
    anchors = anchored(cfg, n, len(kept), seeds_file, exclude) if kept else []
    if start is not None:
        # A rejected round's verified answers were too small a step to clear the gate, not
        # wrong: they add to the next round's, as they do before the first promotion.
        since = rundir.since_champion(n) if cfg.carry_rejected else []
        carried = [r for m in since for r in rundir.input_records(m, "tune")]
        if carried:
            log.info("round %d tune: %d examples of rejected rounds %s carried", n,
                     len(carried), since)  # fmt: skip
        old = replayed(rundir, cfg, n, len(kept))
        return {"new": kept, "carried": carried, "replayed": old, "anchors": anchors}, start
    # fresh: the whole accepted pool plus this round
    earlier = rundir.accepted(before=n, rejected=cfg.carry_rejected)
    return {"earlier": earlier, "new": kept, "anchors": anchors}, None


def fit(
    cfg: SelfloopConfig,
    data: list[dict[str, Any]],
    out: Path,
    init: Path | None,
    n: int,
    callbacks: Sequence[Any] = (),
) -> TrainResult:
    """Train `data` (from `training_data`) into the adapter directory `out` with the objective's
    trainer."""
    from tuners import train
    from tuners.grpo import train_grpo
    from tuners.preference import train_preference

    objective = cfg.tune.objective
    trainer = {"sft": train, "grpo": train_grpo}.get(objective, train_preference)
    result = trainer(
        cfg.model,
        data,
        out,
        cfg.tune,
        init_adapter=init,
        round_index=n,
        callbacks=list(callbacks),
    )
    extra = {"dpo": "rewards/margins", "rpo": "rewards/margins", "grpo": "reward"}.get(objective)
    log.info(
        "round %d tune (%s): %d examples, %d steps, final loss %.4f%s",
        n,
        objective,
        len(data),
        result.steps,
        result.final_loss,
        f", {extra} {result.preference.get(extra)}" if extra else "",
    )
    return result


def _callbacks(ctx: Context, n: int, objective: str | None = None, after: int = 0) -> list[Any]:
    """Progress, step-level metrics for the enabled dashboards, and the kill tests' failpoint.
    A preference step after sft names its own `objective` and logs its steps `after` sft's."""
    from loop.metrics import step_callback
    from loop.progress import training_progress

    steps = step_callback(ctx.rundir, ctx.cfg.metrics, n, after)
    label = f"round {n} tune ({objective or ctx.cfg.tune.objective})"
    return [training_progress(label), *([steps] if steps is not None else []), *tune_callbacks(n)]


def replayed(rundir: RunDir, cfg: TuneConfig, n: int, new: int) -> list[dict[str, Any]]:
    """`cfg.replay` x `new` earlier accepted examples, drawn the same way on a re-run (not
    from the rejected rounds since the champion's, which `training_data` carries whole)."""
    import random

    k = round(cfg.replay * new)
    carried = set(rundir.since_champion(n)) if cfg.carry_rejected else set()
    before = min(carried, default=n)
    pool = rundir.accepted(before=before, rejected=cfg.carry_rejected)
    if k == 0 or not pool:
        return []
    picked = random.Random(f"replay/{cfg.seed}/{n}").sample(pool, min(k, len(pool)))
    log.info("round %d tune: %d new examples + %d replayed", n, new, len(picked))
    return picked


def metrics(round_dir: Path) -> dict[str, Any]:
    path = round_dir / ADAPTER / TRAIN_METRICS
    if not path.is_file():
        return {}
    t = read_json(path)
    extra = {k: t[k] for k in ("objective", "examples", "preference") if k in t}
    greedy = round_dir / GREEDY / "stats.json"
    if greedy.is_file():  # the preference step after sft: its pairs and the sft part
        extra["greedy"] = read_json(greedy)
    return {"tune": {**{k: t[k] for k in _METRICS}, **extra, "losses": t["losses"]}}


STAGE = Stage(
    name="tune",
    run=run,
    writes=(TRAIN_METRICS, "adapter_model.safetensors", "adapter_config.json"),
    reads=("review | dedup", "champion"),
    output=ADAPTER,
    proceed=lambda s: s.get("trained", True),  # a preference round without pairs ends here
    metrics=metrics,
)


def near_eval_seeds(cfg: SelfloopConfig, embedder: Callable[[], Any]) -> set[str]:
    """Ids of the seed tasks near an eval prompt, which `tune.anchor` must not train on: anchors
    join the training data after the dedup stage, so its contamination guard is applied to them
    here (the same embedding and threshold). Empty, and no embedder loaded, without anchors."""
    if cfg.tune.anchor <= 0 or cfg.tune.objective != "sft":
        return set()
    from agent.seeds import load_seed_tasks
    from judges.dedup import near
    from loop.config import eval_prompts

    # As the loop's records carry them, so any `dedup.text_fields` finds its text.
    seeds = [{**t.model_dump(), "response": t.output} for t in load_seed_tasks(cfg.run.seeds_file)]
    hits = near(seeds, eval_prompts(cfg), embedder(), cfg.dedup)
    for sid, hit in sorted(hits.items()):
        log.info(
            "tune.anchor leaves out seed %s: near eval prompt %s (similarity %.3f)",
            sid,
            hit["guard_neighbour"],
            hit["guard_similarity"],
        )
    return set(hits)


def anchored(
    cfg: TuneConfig, n: int, new: int, seeds_file: Path | None, exclude: Collection[str] = ()
) -> list[dict[str, Any]]:
    """`cfg.anchor` x `new` seed tasks with their written answers as training examples (at most
    every seed once), drawn the same way on a re-run; a drawn seed in `exclude` is left out
    (not replaced, so the other draws do not depend on which seeds an eval prompt is near)."""
    import random

    from agent.construct import user_text
    from agent.seeds import load_seed_tasks

    k = round(cfg.anchor * new)
    if k == 0:
        return []
    seeds = load_seed_tasks(seeds_file)
    picked = random.Random(f"anchor/{cfg.seed}/{n}").sample(seeds, min(k, len(seeds)))
    picked = [t for t in picked if t.id not in exclude]
    log.info("round %d tune: %d new examples + %d seed answers (anchor)", n, new, len(picked))
    out = []
    for t in picked:
        out.append(
            {
                "id": f"anchor/{t.id}",
                "source": "anchor",
                "round": n,
                "messages": [
                    {"role": "user", "content": user_text(t.model_dump())},
                    {"role": "assistant", "content": t.output},
                ],
            }
        )
    return out
