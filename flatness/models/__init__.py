"""Models: the registry of built-in architectures, each rebuilt from a small JSON-safe spec."""
