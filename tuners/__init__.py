"""Training: one entry point for the methods lora | prefix | full | qlora.

Built by issue #5; empty until then.
"""
