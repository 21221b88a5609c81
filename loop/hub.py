"""Hub-ready datasets and uploads: what `data export --hub-layout` and `--push-to-hub` write.

A dataset directory in the Hub's layout is `README.md` (a dataset card: YAML metadata the Hub
and `huggingface_hub.DatasetCard` read - license, languages, tags, size, the data file of the
`train` split - then what selfloop knows about the data) and `data/train.<ext>`. `datasets`
loads it with `load_dataset(DIR)`. Adapters and merged models already carry their model card
(tuners/card.py); `push_to_hub` uploads either kind of folder through `huggingface_hub`, and
turns offline mode, a missing token or a refused upload into one line.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agent.atomic import atomic_dir, atomic_write
from agent.errors import SelfloopError

# The data file of the train split, per export format (hf's save_to_disk layout is not one the
# Hub reads as a dataset: use parquet there).
DATA_FILE = {
    "messages": "data/train.jsonl",
    "preference": "data/train.jsonl",
    "alpaca": "data/train.json",
    "sharegpt": "data/train.json",
    "parquet": "data/train.parquet",
}
CARD = "README.md"


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if n < limit:
            return name
    return "100K<n<1M" if n < 1_000_000 else "n>1M"


def base_model(name: str) -> tuple[str | None, str | None]:
    """(public Hub id, license) of the model a run generated with, where known, without
    loading or converting it."""
    from agent.models import HUB_ID, PUBLIC

    if name in PUBLIC:
        return PUBLIC[name]
    return (name, None) if HUB_ID.match(name) and not Path(name).exists() else (None, None)


def _counts(records: Sequence[Mapping[str, Any]], key: str) -> Counter:
    return Counter(str(r.get(key)) for r in records if r.get(key) not in (None, ""))


def _table(counter: Counter) -> str:
    return ", ".join(f"{k} {v}" for k, v in counter.most_common()) or "n/a"


def dataset_card(
    records: Sequence[Mapping[str, Any]],
    *,
    fmt: str,
    run: str,
    model: str,
    rounds: Sequence[int],
    reviewed: bool,
) -> str:
    """The dataset card (README.md) of `records` exported as `fmt` from the run `run`."""
    from huggingface_hub import DatasetCard, DatasetCardData

    pairs = fmt == "preference"
    hub_id, license_ = base_model(model)
    languages = sorted(_counts(records, "language")) or ["en"]
    constraints = Counter(
        c.get("type") for r in records for c in r.get("constraints") or [] if isinstance(c, dict)
    )
    data = DatasetCardData(
        license=license_ or "other",
        language=languages,
        tags=["selfloop", "synthetic", *(["dpo", "preference"] if pairs else ["sft"])],
        task_categories=["text-generation"],
        size_categories=[_size_category(len(records))],
        pretty_name=f"selfloop {'preference pairs' if pairs else 'examples'} from {run}",
        configs=[
            {"config_name": "default", "data_files": [{"split": "train", "path": DATA_FILE[fmt]}]}
        ],  # fmt: skip
    )
    what = "preference pairs (TRL format: prompt, chosen, rejected)" if pairs else "examples"
    made_by = f"[{hub_id}](https://huggingface.co/{hub_id})" if hub_id else f"`{model}`"
    licence_note = (
        f"Generated with {made_by}; released under its license ({license_})."
        if license_
        else "The license of the generating model applies; set `license` before publishing."
    )
    body = (
        f"# selfloop {what} from `{run}`\n\n"
        f"{len(records)} {what}, written by a selfloop self-improvement run: instructions "
        f"proposed or constraint-augmented, answered by {made_by} (or a configured teacher), "
        "filtered by heuristics, verifiable checks, a safety screen and a judge, and "
        "near-duplicates removed. "
        + ("A person reviewed each round before training.\n\n" if reviewed else
           "No person reviewed them: read before you train on them.\n\n")
        + f"{licence_note}\n\n"
        f"- rounds: {', '.join(map(str, rounds)) or 'n/a'}\n"
        f"- format: {fmt}, file `{DATA_FILE[fmt]}`\n"
        f"- origin: {_table(_counts(records, 'origin') or _counts(records, 'source'))}\n"
        f"- domain: {_table(_counts(records, 'domain'))}\n"
        f"- language: {_table(_counts(records, 'language'))}\n"
        f"- verifiable constraint types: {_table(constraints)}\n\n"
        "Load it with `datasets.load_dataset(\"<this directory or repo>\")`.\n"
    )  # fmt: skip
    return str(DatasetCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))


def _ours(out: Path) -> bool:
    """A directory this module wrote: README.md and data/ holding train.* files, nothing else."""
    names = {p.name for p in out.iterdir()}
    data = out / "data"
    if data.exists() and not data.is_dir():
        return False
    return names <= {CARD, "data"} and all(
        p.name.startswith("train.") for p in (data.iterdir() if data.exists() else [])
    )


def write_dataset_dir(
    records: Sequence[Mapping[str, Any]], out: Path, fmt: str, card: str, overwrite: bool
) -> Path:
    """Write `records` as a Hub-layout dataset directory at `out`, atomically. An existing
    `out` is replaced only with `overwrite` and only when it is such a directory."""
    from agent.data import write_jsonl
    from agent.formats import export_records

    if fmt not in DATA_FILE:
        raise SelfloopError(
            f"--hub-layout writes {', '.join(DATA_FILE)}; for the Hub use parquet, not {fmt}"
        )
    if out.exists() or out.is_symlink():
        if not out.is_dir() or out.is_symlink():
            raise SelfloopError(f"{out} exists and is not a directory; name a new directory")
        if any(out.iterdir()):
            if not _ours(out):
                raise SelfloopError(
                    f"{out} holds files that are not a selfloop dataset; refusing to replace it"
                )
            if not overwrite:
                raise SelfloopError(f"{out} already exists; pass --overwrite to replace it")
    new = out.with_name(f".{out.name}.new-{os.getpid()}")
    with atomic_dir(new) as tmp:
        target = tmp / DATA_FILE[fmt]
        target.parent.mkdir()
        if fmt == "preference":
            write_jsonl(target, list(records))
        else:
            export_records(records, target, fmt)
        atomic_write(tmp / CARD, card)
    if out.exists():  # empty, or ours (checked above): swapped out, then removed
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(new, out)
        shutil.rmtree(old)
    else:
        os.replace(new, out)
    return out


def push_to_hub(folder: Path, repo_id: str, repo_type: str, private: bool = False) -> str:
    """Upload `folder` to the Hub repo `repo_id` (created if missing); the commit's URL.
    The token comes from huggingface_hub (HF_TOKEN or `hf auth login`)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError, OfflineModeIsEnabled

    from agent.models import HUB_ID

    if not HUB_ID.match(repo_id):
        raise SelfloopError(f"--push-to-hub {repo_id!r}: expected a repo id like user/name")
    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            repo_type=repo_type,
            commit_message=f"selfloop: upload {folder.name}",
        )
    except OfflineModeIsEnabled:
        raise SelfloopError(
            f"cannot push to {repo_id}: HF_HUB_OFFLINE is set (no network); the files are in "
            f"{folder}: push them later with `hf upload {repo_id} {folder} --repo-type {repo_type}`"
        ) from None
    except LocalTokenNotFoundError:
        raise SelfloopError(
            f"cannot push to {repo_id}: no Hub token (set HF_TOKEN or run `hf auth login`)"
        ) from None
    except (HfHubHTTPError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SelfloopError(f"cannot push {folder} to {repo_id}: {first}") from None
    return str(getattr(info, "commit_url", None) or info)
