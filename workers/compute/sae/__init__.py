"""Sparse autoencoders: the model, its files, training, quality and feature relations (pure torch)."""
