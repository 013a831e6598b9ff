"""Triton kernels of wae_fast, installed as ``wae_fast.kernels``.

Importing this package does not import Triton; the backend module (``wae_fast.kernels.backend``)
does, and is loaded lazily by :mod:`wae_fast.dispatch` when ``backend="triton"`` is asked for.
"""
