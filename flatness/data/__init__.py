"""Data: datasets, on-device tensor data and the probe data every measurement runs on.

The dataset registry holds built-in and torchvision datasets; ``as_probe_data`` turns any user data
into probe data.
"""
