#!/usr/bin/env python
"""Stage 02: train the ST-SAE grid (full, five ablations, K-sweep, seeds)."""

import sys

from stsae.legacy_scripts import forward

sys.exit(forward(["train"], __doc__))
