#!/usr/bin/env python
"""Stage 06: top concepts -> average pulses (high vs low decile) + morphology correlations."""

import sys

from stsae.legacy_scripts import forward

sys.exit(forward(["ground"], __doc__))
