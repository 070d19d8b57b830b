"""tfrobprune: compact and robust Keras models (Sehwag et al., 2019).

One sub-package per pipeline stage, in the order a run goes through them:

  data/ -> models -> robust/ (attacks, bounds, objectives) -> prune/ -> train/ -> evaluate/ -> deploy/ -> report

`pipeline.run(config, output_dir)` runs them all; `cli` turns flags into that config.
"""

__version__ = "0.1.0"
