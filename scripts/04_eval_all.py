#!/usr/bin/env python
"""Stage 04: full evaluation suite on the test split -> eval/leaderboard.json, eval/pareto.json."""

import sys

from stsae.legacy_scripts import forward

sys.exit(forward(["evaluate"], __doc__))
