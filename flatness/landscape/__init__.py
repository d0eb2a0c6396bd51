"""Loss landscapes: loss and accuracy on 1D/2D slices of weight space.

``directions`` (weight-space directions), ``grid`` (grid specs, visiting order, file names),
``weights`` (moving a model to a point, BatchNorm recalibration), ``surface`` (the point evaluator
and the in-memory ``loss_surface``), ``compute`` (the resumable, rank-parallel surface file).
"""
