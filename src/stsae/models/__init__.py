"""models stage of the stsae pipeline."""
