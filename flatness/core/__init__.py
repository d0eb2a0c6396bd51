"""The small core every other room builds on.

Errors, devices and processes, the flat parameter vector, full-data evaluation, atomic files and
locks, progress bars.
"""
