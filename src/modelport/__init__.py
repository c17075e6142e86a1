"""modelport: a trained model in, a production service out."""

__version__ = "0.1.0"
