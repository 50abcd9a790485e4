"""Optimizers with torch.optim's numerics, as optax-compatible transformations."""
