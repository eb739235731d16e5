"""The fast first phase of fine-tuning: fit a pretrained network's new head on its frozen features.

The features of the training split are computed once, without augmentation, and cached on disk
per dataset, model, weights and input size (`TaskData.features_key`); a multinomial logistic
regression on them (L-BFGS, full batch, seconds) becomes the head's weights. Fine-tuning then
starts from a head that already classifies, instead of a random one that sends large gradients
into the pretrained backbone.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.nn import functional as F

from core import atomic
from core.tasks import TaskData

# L2 penalty on the standardised features' weights, per training sample.
L2 = 1e-3


@torch.no_grad()
def frozen_features(data: TaskData) -> tuple[torch.Tensor, torch.Tensor]:
    """The head's inputs (float32, on the CPU) and the targets over the plain training split."""
    assert data.head is not None and data.plain_train is not None
    captured: list[torch.Tensor] = []
    hook = data.head.register_forward_pre_hook(lambda _m, args: captured.append(args[0].float().cpu()))
    data.model.eval()
    targets = []
    try:
        for inputs, y in data.plain_train:
            data.model(*inputs)
            targets.append(y.cpu())
    finally:
        hook.remove()
    return torch.cat(captured), torch.cat(targets)


def cached_features(data: TaskData, cache_dir: Path) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Frozen features from the cache when this data, network and size were seen before."""
    from safetensors.torch import load_file, save_file

    path = cache_dir / f"{data.features_key}.safetensors"
    if data.features_key and path.exists():
        try:
            stored = load_file(str(path))
            return stored["features"], stored["targets"], True
        except Exception:  # a damaged cache file is computed again
            path.unlink(missing_ok=True)
    features, targets = frozen_features(data)
    if data.features_key:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tensors = {"features": features.contiguous(), "targets": targets.contiguous()}
        atomic.write_with(path, lambda tmp: save_file(tensors, str(tmp)))
    return features, targets, False


def fit_linear(
    head: torch.nn.Linear, features: torch.Tensor, targets: torch.Tensor, *, iterations: int = 100
) -> None:
    """Set `head` to the L2-regularised logistic regression of targets on features."""
    mean = features.mean(0)
    # One scale for all features (not one per feature: a near-constant feature would get a
    # huge weight, and fine-tuning then moves it off that constant).
    std = features.std(0).pow(2).mean().sqrt().clamp(min=1e-6).expand_as(mean)
    x = ((features - mean) / std).double()
    k, d = head.out_features, head.in_features
    weight = torch.zeros(k, d, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=iterations, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, targets) + L2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        # Undo the standardisation: w.(f - mean)/std + b == (w/std).f + (b - (w/std).mean).
        scaled = (weight / std.double()).float()
        head.weight.copy_(scaled.to(head.weight.device))
        head.bias.copy_((bias.float() - scaled @ mean).to(head.bias.device))


def freeze_norm_statistics(model: torch.nn.Module) -> None:
    """Batch-norm layers keep the statistics the head was fitted with (call after .train())."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()


def fit_head(data: TaskData, cache_dir: Path) -> tuple[int, bool]:
    """Fit `data.head` on the frozen features; returns (samples, whether they came from the cache)."""
    assert data.head is not None
    features, targets, hit = cached_features(data, cache_dir)
    fit_linear(data.head, features, targets)
    return len(targets), hit
