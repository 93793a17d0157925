"""grounding stage of the stsae pipeline."""
