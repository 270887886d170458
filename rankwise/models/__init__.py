"""Model zoo: `create_model(name, num_classes=10, in_channels=None, **kw)`, `list_models()`,
`default_input_shape(name)`.

Families: CIFAR ResNet-20/32/44/56/110 (option A, `resnet_cifar`), VGG-16-BN (`vgg`), LeNet-5 /
small CNN / MLP for 28x28 (`small`), ImageNet ResNet-18/50 (`resnet_imagenet`), tiny MLP-Mixer
(`mixer`).
"""

from rankwise.models.registry import MODELS, create_model, default_input_shape, list_models

__all__ = ["MODELS", "create_model", "default_input_shape", "list_models"]
