"""tfrobprune: compact and robust Keras models (Sehwag et al., 2019).

One sub-package per pipeline stage, in the order a run goes through them:

  data/ -> models -> robust/ (attacks, bounds, objectives) -> prune/ -> train/ -> evaluate/ -> deploy/ -> report

`pipeline.run(config, output_dir)` runs them all; `cli` turns flags into that config.

The public Python API (see the README):

  robust_prune(model, train_data, test_data, objective=Objective(...), pruning=Pruning(...), ...)
      the whole run for a model and data of one's own; returns (pruned model, report)
  Objective, Pruning, Training, Evaluation     its settings, mirroring the CLI's flags
  RobustModel, prune_for_fit, strip            robust training and pruning through `model.fit`
  bounds.register_layer                        bound rules (IBP, CROWN-IBP) for layer classes of one's own
  load_model, keras                            safe loading of saved models; the Keras (`tf_keras`) to build with

The names are imported on first use, so `import tfrobprune` does not import TensorFlow (the CLI sets TensorFlow's
log level before that happens).
"""

import importlib

__version__ = "0.1.0"

# Public name -> (module, attribute in it; None for the module itself).
_PUBLIC = {
    "robust_prune": ("tfrobprune.api.robust_prune", "robust_prune"),
    "Objective": ("tfrobprune.api.settings", "Objective"),
    "Pruning": ("tfrobprune.api.settings", "Pruning"),
    "Training": ("tfrobprune.api.settings", "Training"),
    "Evaluation": ("tfrobprune.api.settings", "Evaluation"),
    "RobustModel": ("tfrobprune.train.keras_fit", "RobustModel"),
    "prune_for_fit": ("tfrobprune.api.fit", "prune_for_fit"),
    "strip": ("tfrobprune.prune.wrapping", "strip"),
    "bounds": ("tfrobprune.api.bounds", None),
    "load_model": ("tfrobprune.model_files", "load_model_file"),
    "keras": ("tfrobprune.keras_compat", "keras"),
}

__all__ = sorted(_PUBLIC)


def __getattr__(name):
  if name not in _PUBLIC:
    raise AttributeError(f"module 'tfrobprune' has no attribute {name!r}")
  module_name, attribute = _PUBLIC[name]
  module = importlib.import_module(module_name)
  value = module if attribute is None else getattr(module, attribute)
  globals()[name] = value  # later lookups skip __getattr__
  return value


def __dir__():
  return sorted(set(globals()) | set(_PUBLIC))
