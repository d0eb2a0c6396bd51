"""Studies built on the measurements.

Probing one checkpoint, comparing runs (tables, Welch's t-tests), the written report, and the whole
ERM-versus-AMP experiment.
"""
