"""What the training modules share without importing each other: the complete-checkpoint
marker, the fingerprint's file name and the error a guard raises (tuners.train and
tuners.guards both use them)."""

from __future__ import annotations

from agent.errors import SelfloopError

# Written into a checkpoint directory once the Trainer has finished saving it: only a marked
# checkpoint is resumed from (a kill while saving leaves an unmarked one, which is discarded).
MARKER = "selfloop-complete"
# The checkpoints' fingerprint: `tuners.train.resume_point` writes and compares it,
# `tuners.guards.recorded_precision` reads the precision it recorded.
FINGERPRINT = "selfloop-train-args.json"


class TrainingAborted(SelfloopError):
    """Training hit a non-finite loss or an exploding gradient."""
