"""rankwise: low-rank training and compression of neural networks in PyTorch."""

__version__ = "0.1.0"
