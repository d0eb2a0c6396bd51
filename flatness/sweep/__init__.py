"""Hyperparameter sweeps: a grid of training runs.

Each cell is trained and measured in its own run folder (``flatness sweep``);
``flatness.generalization`` correlates their measures with generalisation.
"""
