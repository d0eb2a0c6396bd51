"""Figures: 1D curves, contours, heatmaps, 3D surfaces, trajectories and spectral densities."""
