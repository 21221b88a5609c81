"""The state machine that drives rounds, its config, run directory and the `selfloop` CLI."""
