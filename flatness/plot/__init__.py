"""Figures of surfaces and spectra.

``style`` (canvas, saving, labels, colour scales), ``loading`` (reading surface and probe files),
``curves`` (1D), ``maps`` (2D and 3D), ``spectra``, ``vtp`` (ParaView export) and ``figures``
(``plot_files``, the driver of ``flatness plot``).
"""
