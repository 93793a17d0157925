#!/usr/bin/env python
"""Stage 05: age prediction from concepts, bias-corrected delta-age, HTN/T2D associations."""

import sys

from stsae.legacy_scripts import forward

sys.exit(forward(["age"], __doc__))
