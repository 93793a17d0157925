"""Apply a finished run to a new cohort (`stsae apply`) and measure how well it transfers (`stsae transfer`).

source.py reads run A's frozen models and refuses an incompatible target config; layout.py names the
files an applied run writes; cohort.py encodes cohort B and predicts its ages with A's models;
transfer.py compares A's models with a refit on B; report.py writes B's report.html.
"""
