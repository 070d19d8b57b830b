"""A phase's best weights so far, on disk: where `--on_overfit=stop` goes back to after a collapse.

Wong et al.'s early stopping ends single-step training at catastrophic overfitting with the weights of the best
epoch (by held-out PGD accuracy), not the collapsed ones. The overfitting monitor writes a snapshot here at every new
best epoch, atomically, next to the phase's checkpoints; so a phase killed after its best epoch and resumed goes back
to the same weights as an uninterrupted one. Plain arrays (`np.savez`, read without pickle).
"""

import io
import os

import numpy as np

from tfrobprune import report


class BestWeights:
  """The snapshot file of one phase's best weights."""

  def __init__(self, path):
    self.path = path

  def save(self, model):
    """Writes `model.get_weights()` (all its weights, in order) atomically."""
    buffer = io.BytesIO()
    np.savez(buffer, *model.get_weights())
    os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
    report.atomic_write(self.path, buffer.getvalue(), mode="wb")

  def restore(self, model):
    """Sets `model`'s weights to the snapshot; returns False (and leaves the model as it is) when there is none.

    Raises:
      ValueError: the snapshot does not fit the model (another architecture), naming the file.
    """
    if not os.path.exists(self.path):
      return False
    with np.load(self.path, allow_pickle=False) as arrays:
      weights = [arrays[f"arr_{index}"] for index in range(len(arrays.files))]
    try:
      model.set_weights(weights)
    except ValueError as error:
      raise ValueError(f"{self.path} does not hold weights of this model: {error}") from error
    return True
