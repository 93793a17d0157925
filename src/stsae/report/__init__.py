"""report stage of the stsae pipeline."""
