"""Pruning: which weights to remove (magnitude or learned scores, per layer or global) and when (tfmot schedules)."""
