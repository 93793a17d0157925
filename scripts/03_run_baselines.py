#!/usr/bin/env python
"""Stage 03: fit the PCA / ICA / NMF baselines on the train split."""

import sys

from stsae.legacy_scripts import forward

sys.exit(forward(["baselines"], __doc__))
