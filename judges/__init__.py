"""Everything that decides what is good: filters, LLM judge, verifiable checks, dedup, safety.

    filters      `FilterChain(FilterConfig)`: the heuristic chain (Self-Instruct rules, cut-off,
                 empty, repeated-instruction, degenerate-repetition, wrong-language, optional
                 ROUGE-L against the pool); every rejection has a named reason (`FilterReport`)
    llm_judge    `LLMJudge(generator, JudgeConfig)`: pointwise 5-point rubric (logprob expectation
                 or a strictly parsed `Score: N` critique), both-orders pairwise comparison,
                 best-of-n with chosen/rejected pairs; parse failures and backend errors are
                 retried, then counted outcomes (`summarize_scores`, `summarize_pairs`)
    verifiable   IFEval-style constraints attached to instructions as data: `validate`, `render`,
                 `check` / `check_all`, shared by the judges and the evaluation suites
    safety       `SafetyFilter(SafetyConfig, judge)`: rules plus an optional LLM rubric over
                 instructions and responses; harmful instructions dropped or kept with a refusal
                 (marked `safety: "refused"`), unsafe responses dropped, rubric failures dropped
                 as `safety_unjudged` and counted; `is_refusal` for the evaluations
    dedup        `Pool` (persistent FAISS index of the accepted examples, self-repairing on load)
                 and `dedup(candidates, pool)`: near-duplicates against the pool and the batch,
                 one survivor per group, each drop with its kept neighbour and similarity
    embed        `Embedder`: local sentence-transformers model (bundled all-MiniLM-L6-v2) -> unit
                 vectors
    text, lang   shared measures: words, sentences, ROUGE-L; language identification
    evals        the held-out evaluation suites (`load_suites`), their metrics with confidence
                 intervals, and `evaluate` (candidate vs champion, cached outputs)

Each stage returns plain data for the loop's per-round accounting: counts per reason, score
distributions, failure rates, similarity histograms and sample rejections.
"""
