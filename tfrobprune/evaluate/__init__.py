"""Evaluation: benign, adversarial and verified accuracy of a model on fixed test examples."""
