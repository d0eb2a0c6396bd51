"""Sources: what a command line (or a run folder's record) names, turned into a model and data.

Flatness checkpoints, a user's state_dict/.safetensors with ``--model``, ``.pt2`` programs, built-in
and user datasets; and the security rule that only code the command line names is ever run.
"""
