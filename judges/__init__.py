"""Everything that decides what is good: filters, LLM judge, verifiable checks, dedup, safety.

Built by issue #4; empty until then.
"""
