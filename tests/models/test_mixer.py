"""Tiny MLP-Mixer: all weights in nn.Linear, token/channel mixing shapes."""

from __future__ import annotations

import torch

from rankwise.models import create_model


def test_only_linear_and_layernorm_weights() -> None:
    model = create_model("mlpmixer", depth=3)
    weighted = {type(m) for m in model.modules() if getattr(m, "weight", None) is not None}
    assert weighted == {torch.nn.Linear, torch.nn.LayerNorm}
    assert model.blocks[0].token_mlp.fc1.in_features == 64  # (32/4)^2 tokens
    assert model.blocks[0].channel_mlp.fc1.in_features == 64  # dim
    assert model.embed.in_features == 3 * 4 * 4 and len(model.blocks) == 3


def test_patch_order_matters() -> None:
    """Token mixing sees spatial structure: permuting patches changes the output."""
    torch.manual_seed(0)
    model = create_model("mlpmixer", image_size=16, patch=4).eval()
    x = torch.randn(1, 3, 16, 16)
    shuffled = torch.cat([x[..., 8:], x[..., :8]], dim=-1)
    assert not torch.allclose(model(x), model(shuffled))
