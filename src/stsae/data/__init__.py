"""Raw PPG → records → 10 s windows: the synthetic cohort, the real-data loaders, windowing, QC, augmentation."""
