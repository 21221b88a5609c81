"""Everything that decides what is good: filters, LLM judge, verifiable checks, dedup, safety.

Built by issue #4: `filters` (heuristic chain with named reasons) and `verifiable` (IFEval-style
constraint checks) so far, on the shared `text` measures and `lang` identification.
"""
