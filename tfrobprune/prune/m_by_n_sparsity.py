"""m:n sparsity (e.g. 2:4): m zeros in every n consecutive input-channel weights of each output.

tfmot computes the mask itself (`sparsity_m_by_n` of its wrappers, by magnitude within each group, once, at the
first training step, whatever the schedule); `magnitude.prune_model` asks for it. This module checks the (m, n)
pattern and that a layer's kernel can take it exactly.
"""

from tfrobprune.keras_compat import keras


def check_m_by_n(m_by_n):
  """Raises a ValueError repeating `m_by_n` unless it is two integers (m, n) with 0 < m < n."""
  valid = (len(m_by_n) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in m_by_n) and
           0 < m_by_n[0] < m_by_n[1])
  if not valid:
    raise ValueError(f"m_by_n must be two integers (m, n) with 0 < m < n (m zeros in every n weights), "
                     f"got {m_by_n!r}.")


def check_layer(layer, m_by_n):
  """Raises unless tfmot's m:n mask can give `layer` exactly m zeros in every n input-channel weights.

  tfmot rearranges a Dense [in, out] or Conv2D [h, w, in, out] kernel so that each output's input-channel
  weights are consecutive, and groups them by n, zero-padding the last group: an input-channel count that is not
  a multiple of n is silently left denser (a 1-channel image conv gets no zeros at all).
  """
  m, n = m_by_n
  if type(layer) not in (keras.layers.Dense, keras.layers.Conv2D):
    raise ValueError(f"Layer {layer.name!r} ({type(layer).__name__}) cannot take {m}:{n} sparsity: tfmot's m:n "
                     "masks assume a Dense or Conv2D kernel layout. Add it to exclude_layers.")
  channels = layer.kernel.shape[-2]
  if channels % n:
    raise ValueError(f"Layer {layer.name!r} cannot take {m}:{n} sparsity: its kernel {tuple(layer.kernel.shape)} "
                     f"has {channels} input channels, not a multiple of {n}, so tfmot would leave it denser than "
                     f"{m}:{n}. Add {layer.name!r} to exclude_layers.")
