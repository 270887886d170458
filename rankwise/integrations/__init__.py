"""Thin adapters that drive a `rankwise.methods` object from other training loops.

- `rankwise.integrations.lightning.RankwiseCallback(method)`: a Lightning `Callback`
  (extra `rankwise[lightning]`);
- `rankwise.integrations.huggingface.RankwiseTrainerCallback(method)`: a Hugging Face
  `TrainerCallback` (extra `rankwise[hf]`).

Importing this package imports neither framework; each submodule imports its own.
"""
