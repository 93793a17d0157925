"""aging stage of the stsae pipeline."""
