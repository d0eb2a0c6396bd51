"""File formats, one owner each; nothing else reads or writes them.

Checkpoints and run folders (``checkpoint``), probe JSON (``probe_file``), loss-surface HDF5
(``surface_file``).
"""
