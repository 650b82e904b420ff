"""Latent world-model planning: data store, JEPA world model, training, solvers, MPC, evaluation."""

__version__ = "0.1.0"
