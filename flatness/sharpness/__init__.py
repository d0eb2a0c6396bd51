"""Sharpness metrics of trained weights (docs/metrics.md, "Sharpness"): Keskar ε-sharpness,
worst-case and adaptive sharpness, average-case sharpness and PAC-Bayes flatness."""
