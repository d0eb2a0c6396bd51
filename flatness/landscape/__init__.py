"""Loss landscapes: directions in weight space, the grid of a 1D/2D slice, in-memory surfaces
(``loss_surface``) and the resumable, rank-parallel surface file (``compute_surface``)."""
