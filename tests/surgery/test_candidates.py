"""Which layers decompose keeps dense and why; refusals (include, NaN/Inf, meta device)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rankwise.errors import ConfigError
from rankwise.layers import FactorizedLayer
from rankwise.surgery.decompose import decompose


class DynamicSameConv(nn.Conv2d):
    """Like timm's Conv2dSame: pads in forward, so the static padding attribute is 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kh, kw = self.kernel_size
        sh, sw = self.stride
        ph = max((-(-x.shape[-2] // sh) - 1) * sh + kh - x.shape[-2], 0)
        pw = max((-(-x.shape[-1] // sw) - 1) * sw + kw - x.shape[-1], 0)
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class PlainSubclass(nn.Linear):
    """A subclass that does not override forward: a normal candidate."""


def _net() -> nn.Module:
    return nn.Sequential(DynamicSameConv(3, 16, 3, stride=2), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         PlainSubclass(16, 16), nn.Linear(16, 4))


def test_subclass_with_own_forward_is_kept_dense_with_reason():
    torch.manual_seed(0)
    model = _net().eval()
    x = torch.randn(2, 3, 15, 15)
    new, rep = decompose(model, "channel", "ratio:0.25", example_inputs=(x,))
    rows = {r.name: r for r in rep.rows}
    assert rows["0"].format is None and "overrides nn.Conv2d.forward" in rows["0"].note
    assert type(new[0]) is DynamicSameConv
    assert rows["2"].format == "channel" and rows["5"].format == "svd"  # plain subclass is fine
    assert new(x).shape == (2, 4)


def test_tied_linear_is_kept_dense_and_params_counted_once():
    emb = nn.Embedding(50, 16)
    head = nn.Linear(16, 50, bias=False)
    head.weight = emb.weight  # tied, as GPT-2's lm_head and wte
    model = nn.Sequential(emb, nn.Linear(16, 16), head)
    ids = torch.randint(0, 50, (1, 6))
    new, rep = decompose(model, rank="budget:params=0.9", example_inputs=(ids,))
    rows = {r.name: r for r in rep.rows}
    assert rows["2"].format is None and "shared with 0" in rows["2"].note
    assert new[2].weight is new[0].weight
    assert rep.totals["params_before"] == 50 * 16 + 16 * 16 + 16
    assert rep.totals["params_after"] == sum(p.numel() for p in new.parameters())


def test_shared_module_factorized_once():
    shared = nn.Linear(32, 32)
    with torch.no_grad():
        shared.weight.copy_(torch.randn(32, 2) @ torch.randn(2, 32))
    model = nn.Sequential(shared, nn.ReLU(), shared)
    new, rep = decompose(model, rank="energy:1.0")
    assert [r.name for r in rep.rows] == ["0"] and rep.rows[0].rank == 2
    assert new[0] is new[2] and isinstance(new[0], FactorizedLayer)
    assert rep.totals["params_after"] == sum(p.numel() for p in new.parameters())


def test_include_matching_nothing_or_invalid_is_refused():
    model = _net()
    with pytest.raises(ConfigError, match="'layer9.*': it matches no module"):
        decompose(model, include="layer9.*")
    with pytest.raises(ConfigError, match=r"not a valid regex"):
        decompose(model, include="*[")
    with pytest.raises(ConfigError, match="'nothing'"):
        decompose(model, include=["2", "nothing"])


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weight_is_refused_naming_the_layer(bad):
    model = _net()
    with torch.no_grad():
        model[2].weight[0, 0, 0, 0] = bad
    with pytest.raises(ConfigError, match=r"^2: weight contains NaN/Inf"):
        decompose(model, "channel", "energy:0.9")
    decompose(model, "channel", "energy:0.9", exclude="2")  # the named fix works


def test_meta_device_model_is_refused_in_one_line():
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(8, 8))
    with pytest.raises(ConfigError, match="meta device") as e:
        decompose(model, rank=2)
    assert "\n" not in str(e.value)


def test_frozen_params_stay_frozen_and_hooks_move():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    model[0].weight.requires_grad_(False)
    model[0].bias.requires_grad_(False)
    calls: list[tuple[int, ...]] = []
    model[0].register_forward_hook(lambda m, a, out: calls.append(tuple(out.shape)))
    new, rep = decompose(model, rank=4)
    assert isinstance(new[0], FactorizedLayer)
    assert not any(p.requires_grad for p in new[0].parameters())
    assert all(p.requires_grad for p in new[2].parameters())
    assert "forward hooks carried over" in rep.rows[0].note
    new(torch.randn(3, 16))
    assert calls == [(3, 16)]


def test_uncalled_layer_whose_weight_is_read_is_kept_dense():
    class FunctionalUser(nn.Module):  # Swin-style: reads proj.weight instead of calling proj
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(16, 16)
            self.fc = nn.Linear(16, 16)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(F.linear(x, self.proj.weight, self.proj.bias))

    model = FunctionalUser()
    x = torch.randn(2, 16)
    new, rep = decompose(model, rank=4, example_inputs=(x,))
    rows = {r.name: r for r in rep.rows}
    assert rows["proj"].format is None and "not called" in rows["proj"].note
    assert rows["fc"].format == "svd"
    # without example inputs nothing can tell: the factorized layer's .weight keeps it working
    new, rep = decompose(model, rank=4)
    assert isinstance(new.proj, FactorizedLayer)
    w = new.proj.second.weight @ new.proj.first.weight
    assert torch.allclose(new(x), new.fc(F.linear(x, w, model.proj.bias)))


def test_backward_hooks_are_reported_not_dropped_silently():
    model = nn.Sequential(nn.Linear(16, 16))
    model[0].register_full_backward_hook(lambda m, gi, go: None)
    _, rep = decompose(model, rank=4)
    assert "backward hooks NOT carried over" in rep.rows[0].note
