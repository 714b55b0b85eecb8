"""euclip: contrastive language-image pre-training under different embedding geometries."""

__version__ = "0.1.0"
