"""genzoo: a JAX/Flax zoo of generative models with one trainer for every family."""

__version__ = "0.1.0"
