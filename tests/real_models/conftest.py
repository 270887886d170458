"""Real torchvision / timm / Hugging Face models, small configs with random weights.

With a CPU-only torch, `import torchvision` (and so timm) fails on `register_fake("torchvision::
nms")` because the compiled ops are missing; declaring the two op schemas first lets it import.
The shim lives here, in the tests, never in the library.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

_LIB: list[Any] = []  # keeps the op-schema library alive for the session


def _ensure_torchvision_ops() -> None:
    if _LIB:
        return
    try:
        lib = torch.library.Library("torchvision", "DEF")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _LIB.append(lib)
    except RuntimeError:  # already defined (a real torchvision build, or imported before)
        pass


def import_vision(name: str) -> Any:
    """`pytest.importorskip(name)` for torchvision / timm with the op-schema shim applied."""
    _ensure_torchvision_ops()
    return pytest.importorskip(name)


def _torchvision(builder: Callable[[Any], nn.Module], shape: tuple[int, ...]):
    def make() -> tuple[nn.Module, tuple[Any, ...]]:
        tv = import_vision("torchvision")
        return builder(tv.models), (torch.randn(1, *shape),)
    return make


def _resnet(m: Any) -> nn.Module:
    from torchvision.models.resnet import Bottleneck, ResNet

    class SlimBottleneck(Bottleneck):  # ResNet-50's block, 4× narrower outputs
        expansion = 1

    return ResNet(SlimBottleneck, [1, 1, 1, 1], num_classes=10, width_per_group=16)


def _efficientnet(m: Any) -> nn.Module:
    from torchvision.models.efficientnet import EfficientNet, _efficientnet_conf
    setting, last = _efficientnet_conf("efficientnet_b0", width_mult=0.25, depth_mult=0.25)
    return EfficientNet(setting, 0.2, num_classes=10, last_channel=last)


def _convnext(m: Any) -> nn.Module:
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt
    return ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)], num_classes=10)


def _vit(m: Any) -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer
    vit = VisionTransformer(image_size=32, patch_size=16, num_layers=2, num_heads=2,
                            hidden_dim=32, mlp_dim=64, num_classes=10)
    nn.init.normal_(vit.heads.head.weight)  # zero-initialised: the output would be all zeros
    return vit


def _swin(m: Any) -> nn.Module:
    from torchvision.models.swin_transformer import SwinTransformer
    return SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[2, 2],
                           window_size=[4, 4], num_classes=10)


def _timm(name: str, shape: tuple[int, ...], **kw: Any):
    def make() -> tuple[nn.Module, tuple[Any, ...]]:
        timm = import_vision("timm")
        return timm.create_model(name, pretrained=False, **kw), (torch.randn(1, *shape),)
    return make


def _timm_builder(builder: Callable[[], nn.Module], shape: tuple[int, ...]):
    def make() -> tuple[nn.Module, tuple[Any, ...]]:
        import_vision("timm")
        return builder(), (torch.randn(1, *shape),)
    return make


def _tf_efficientnet() -> nn.Module:
    """timm's `tf_efficientnet_b0` generator (TF 'same' padding: `Conv2dSame` where the padding
    is dynamic), at a quarter of the depth and half the width."""
    from timm.models.efficientnet import _gen_efficientnet
    return _gen_efficientnet("tf_efficientnet_b0", channel_multiplier=0.5, depth_multiplier=0.25,
                             bn_eps=1e-3, pad_type="same", num_classes=10)


def _regnetx() -> nn.Module:
    import dataclasses

    from timm.models.regnet import RegNet, model_cfgs
    return RegNet(dataclasses.replace(model_cfgs["regnetx_002"], depth=7), num_classes=10)


def _bert() -> tuple[nn.Module, tuple[Any, ...]]:
    tr = import_vision("transformers")  # transformers imports torchvision when present
    cfg = tr.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=16)
    ids = torch.randint(0, 100, (1, 8), generator=torch.Generator().manual_seed(0))
    return tr.BertModel(cfg), (ids,)


def _gpt2() -> tuple[nn.Module, tuple[Any, ...]]:
    tr = import_vision("transformers")
    cfg = tr.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=2, n_positions=16)
    ids = torch.randint(0, 100, (1, 8), generator=torch.Generator().manual_seed(0))
    return tr.GPT2LMHeadModel(cfg), (ids,)


# name → (factory returning (model, example args), its convs, its linears)
MODELS: dict[str, Callable[[], tuple[nn.Module, tuple[Any, ...]]]] = {
    "tv_resnet50": _torchvision(_resnet, (3, 32, 32)),
    "tv_mobilenet_v3_small": _torchvision(
        lambda m: m.mobilenet_v3_small(weights=None, width_mult=0.25, num_classes=10),
        (3, 32, 32)),
    "tv_efficientnet_b0": _torchvision(_efficientnet, (3, 32, 32)),
    "tv_convnext_tiny": _torchvision(_convnext, (3, 32, 32)),
    "tv_vit_b_16": _torchvision(_vit, (3, 32, 32)),
    "tv_swin_t": _torchvision(_swin, (3, 32, 32)),
    "timm_tf_efficientnet_b0": _timm_builder(_tf_efficientnet, (3, 33, 33)),
    "timm_regnetx_002": _timm_builder(_regnetx, (3, 32, 32)),
    "timm_deit_tiny": _timm("deit_tiny_patch16_224", (3, 32, 32), img_size=32, depth=2,
                            num_classes=10),
    "hf_bert": _bert,
    "hf_gpt2": _gpt2,
}


def make_low_rank(model: nn.Module, fraction: float = 0.25, seed: int = 0) -> None:
    """Project every conv/linear-like weight onto a random `fraction` of its output space
    (`W ← Q Qᵀ W`, Q orthonormal), in place: exact low-rank weights a lossless policy can
    factorize exactly. HF Conv1D weights `(in, out)` are projected on their out side."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            for p in mod.parameters(recurse=False):
                if p.dim() < 2 or "embed" in type(mod).__name__.lower():
                    continue
                w = p.movedim(1, 0) if type(mod).__name__ == "Conv1D" else p
                n = w.shape[0]
                k = max(1, int(fraction * n))
                q, _ = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))
                flat = w.reshape(n, -1).double()
                proj = (q @ (q.T @ flat)).reshape(w.shape).to(p.dtype)
                p.copy_(proj.movedim(0, 1) if type(mod).__name__ == "Conv1D" else proj)


def calibrate_norms(model: nn.Module, example: tuple[Any, ...], seed: int = 0) -> None:
    """Reset every BatchNorm (γ = 1, β = 0) and set its running statistics from one batch of 4
    inputs like `example`, so that activations of a random network neither vanish nor blow up
    (its output is then far above float32 rounding). Leaves the model in eval mode."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or not isinstance(example[0], torch.Tensor) or not example[0].is_floating_point():
        model.eval()
        return
    for bn in bns:
        bn.reset_parameters()
        bn.momentum = None  # cumulative average: one batch sets the statistics
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((4, *example[0].shape[1:]), generator=g).to(example[0].dtype)
    model.train()
    with torch.no_grad():
        model(x, *example[1:])
    model.eval()


def model_only(name: str) -> nn.Module:
    """`MODELS[name]`'s model alone: the `module:factory` spec the CLI tests save as the
    architecture (`tests.real_models.conftest:model_only` with `name=`)."""
    torch.manual_seed(0)
    return MODELS[name]()[0]
