#!/usr/bin/env python
"""Stage 01: raw PPG -> windows + QC -> cached PaPaGei-S embeddings (z.npy, z_aug.npy)."""

import sys

from stsae.legacy_scripts import forward

sys.exit(forward(["prepare", "extract"], __doc__))
