"""Pruning: which weights to remove (magnitude or learned scores, per layer or global) and when (tfmot schedules).

- `pruning_config`: `PruningConfig`; `pruning_schedules`: tfmot schedules in optimizer steps, iterative targets.
- Criteria: `magnitude` (tfmot's wrappers choose by |w|; per layer, `global_allocation`, or `m_by_n_sparsity`) and
  `scores` (HYDRA's learned masks).
- `wrapping`: tfmot's wrappers (fixed masks, apply, strip); `drivers`: the step counter in a custom training loop;
  `stats`: sparsity and parameter counts; `validation`: the argument checks the configs share.
"""
