"""stages stage of the stsae pipeline."""
