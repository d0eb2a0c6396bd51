"""Data: the dataset registry (built-in and torchvision datasets), on-device tensor data, and the
probe data every measurement runs on (``as_probe_data`` turns any user data into it).
"""
