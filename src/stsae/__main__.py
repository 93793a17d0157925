"""`python -m stsae` (also what `torchrun -m stsae` runs)."""

from stsae.cli import app

app()
