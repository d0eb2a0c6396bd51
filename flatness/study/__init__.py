"""Studies built on the measurements: probing one checkpoint, comparing runs (tables, Welch's
t-tests), the written report, and the whole ERM-versus-AMP experiment.
"""
