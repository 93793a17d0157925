"""train stage of the stsae pipeline."""
