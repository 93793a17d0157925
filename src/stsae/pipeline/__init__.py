"""Run directory, stage graph, fingerprints, manifest and lock: the machinery every stage shares."""
