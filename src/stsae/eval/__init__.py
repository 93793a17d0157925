"""eval stage of the stsae pipeline."""
