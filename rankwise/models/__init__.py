"""Model zoo: `create_model(name, num_classes=10, in_channels=None, **kw)`, `list_models()`,
`default_input_shape(name)`; any model by spec string: `build_model(spec, **kw)` (zoo names,
`tv:NAME`, `timm:NAME`, `hf:NAME_OR_PATH`, `package.module:factory`).

Families: CIFAR ResNet-20/32/44/56/110 (option A, `resnet_cifar`), VGG-16-BN (`vgg`), LeNet-5 /
small CNN / MLP for 28x28 (`small`), ImageNet ResNet-18/50 (`resnet_imagenet`), tiny MLP-Mixer
(`mixer`).
"""

from rankwise.models.registry import MODELS, create_model, default_input_shape, list_models
from rankwise.models.resolve import build_model, recorded_arch

__all__ = ["MODELS", "build_model", "create_model", "default_input_shape", "list_models",
           "recorded_arch"]
