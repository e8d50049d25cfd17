"""cdgan: contrastive-divergence GANs as a reproducible pipeline."""

__version__ = "0.1.0"
