"""tfrobprune: compact and robust Keras models (Sehwag et al., 2019).

The pipeline, one module per stage:
  data -> models -> objectives (attacks, bounds) -> training (pruning) -> evaluation -> export -> report.
"""

__version__ = "0.1.0"
