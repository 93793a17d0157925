#!/usr/bin/env python
"""Stage 07: Pareto, ablation bars, delta-age scatter, concept cards -> figures/ and report.html."""

import sys

from stsae.legacy_scripts import forward

sys.exit(forward(["figures", "report"], __doc__))
