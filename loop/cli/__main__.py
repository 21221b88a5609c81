"""`python -m loop.cli` (and `torchrun ... -m loop.cli tune`): the selfloop command line."""

from loop.cli import main

main()
