"""The public Python API behind `tfrobprune.robust_prune`, `tfrobprune.Objective`, ... (exported lazily by the
top-level package): the settings objects, the data and model the caller hands over, and the public bound rules."""
