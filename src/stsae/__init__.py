"""stsae: Spatio-Temporal Sparse Autoencoder concepts and vascular age from PPG."""

__version__ = "0.1.0"
