"""data stage of the stsae pipeline."""
