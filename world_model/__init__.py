"""Tensors in, tensors out: camera geometry, the latent cache, backbones, training, metrics.

Imports none of ``mirage_env``, ``editors`` or ``agents``, so it can be used on its own.
"""
