"""Training: optimizers, the loop, and recipes.

The AMP and SAM optimizers (drop-in ``step(closure)``), the training loop with its config and
resumable run folders, and named recipes of the published setups.
"""
