"""utils stage of the stsae pipeline."""
