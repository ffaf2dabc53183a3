"""The FieldFlow reconstruction model (after AGFlow): a space-time transformer over S2 and S1
frames at their own acquisition dates, predicting a correction to per-pixel interpolation, with a
rectified-flow head that samples the residual for uncertainty.

Modules: ``config`` (dataclasses saved in checkpoints), ``features`` (cube -> model inputs),
``network`` (the torch modules), ``flow`` (probability path and ODE solvers), ``checkpoint``,
``training`` and ``inference`` (the ``model`` method of the reconstruction contract).
"""
