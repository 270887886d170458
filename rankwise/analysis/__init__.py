"""Measuring a model: params/MACs/latency (`profile.py`), per-layer spectra and ranks
(`layer_ranks.py`)."""
