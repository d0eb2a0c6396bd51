"""Does flatness predict generalisation? Baselines and rank statistics.

Baseline measures (norms, margin) and the rank statistics (Kendall's τ, the granulated Ψ, Holm's
adjustment) of ``flatness correlate``.
"""
