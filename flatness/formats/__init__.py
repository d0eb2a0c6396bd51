"""File formats, one owner each: checkpoints and run folders (``checkpoint``), probe JSON
(``probe_file``), loss-surface HDF5 (``surface_file``). Nothing else reads or writes them.
"""
