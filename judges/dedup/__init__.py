"""FAISS embedding dedup against a persistent pool of accepted examples.

A candidate is a plain mapping with an `id` and the text fields named by the config (by default
`instruction` and `input`: dedup is about tasks, so the response is not embedded). Texts become
unit vectors (judges.embed), so the inner product FAISS computes is the cosine similarity; a
candidate is a duplicate when a kept neighbour scores at or above `threshold` (or in the
paraphrase band below it, see below).

Decision rule: candidates are decided one at a time in priority order (best score first when
scores are given, else input order; ties keep input order), and one is kept when neither the
pool nor any candidate kept before it is at or above the threshold. Of a group of mutual near
duplicates exactly one survives, the best-scored or the first. For a chain A~B~C where A and C
are not near each other, A and C both survive: C duplicates nothing that was kept. Pool members
are never evicted: a candidate scoring better than its pool neighbour is still dropped. The
greedy rule was chosen over clustering because it is what Self-Instruct's ROUGE-L filter does,
so the two can be compared, and because it makes a re-run over the same pool give the same
answer. It runs with batched FAISS/BLAS searches: the pool is searched once for the whole batch,
and the batch is decided in chunks, each chunk searched against the candidates kept so far
(a temporary index) and against itself (one small matrix product).

Second stage (`contrast`, on by default): embeddings put near-misses ("List 3 ..." / "List 10
...", "with" / "without sugar", "in Python" / "in Rust") as close as paraphrases, so a neighbour
at or above the threshold is checked by judges.contrast before it counts; a pair told apart is
kept (listed in `contrasted`, with the reason) and the next-nearest neighbours (up to 4) are
checked in turn. The check reads words only, so the cost stays one embedding per candidate.

Paraphrase band (`paraphrase_threshold`, 0.5 by default): a task reworded in other words scores
0.5-0.85, as low as a template with its content swapped, so a neighbour in that band counts only
when the contrast stage does not tell them apart and what differs embeds alike too - the words
outside their shared frame, or, with no frame, sentence by sentence (`decide.Parts`); English
texts only (`paraphrase_languages`). At the threshold and above, a pair that shares a sentence
word for word while the rest embeds unlike (one task, other constraints) is kept apart too. The
band's extra embeddings (of the differing words) are batched per chunk and bounded per
candidate, so the cost stays linear in new candidates.

Self-matches never count: a candidate is never compared with itself, and a candidate whose id
is already in the pool (a round re-run after its examples were added) is kept, listed in
`already_in_pool`, not compared with anything and not added again.

The pieces: `judges.dedup.config` (the settings, what is embedded), `judges.dedup.pool` (the
persisted pool and its FAISS index), `judges.dedup.decide` (the decision).
"""

from judges.dedup.config import DedupConfig, HNSWParams, IVFParams, Record, record_text
from judges.dedup.decide import DedupReport, Drop, dedup, near, pair_is_duplicate
from judges.dedup.pool import FINGERPRINT_FILE, INDEX_FILE, RECORDS_FILE, Pool

__all__ = [
    "FINGERPRINT_FILE",
    "INDEX_FILE",
    "RECORDS_FILE",
    "DedupConfig",
    "DedupReport",
    "Drop",
    "HNSWParams",
    "IVFParams",
    "Pool",
    "Record",
    "dedup",
    "near",
    "pair_is_duplicate",
    "record_text",
]
