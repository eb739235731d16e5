"""Image models: each trains a step and exports with parity; weights sources; fine-tuning
options; and on real Fashion-MNIST images, pretrained EfficientNet-Lite0 beats random init."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from safetensors.torch import save_file

from core import checkpoint, jobs
from core.config import RunConfig, get_settings
from core.data.ingest import ingest_file
from core.data.samples import fashion_mnist_zip
from core.errors import ConfigError
from core.models import models_for
from core.runtime import Predictor
from core.tasks import get_task
from core.train import BEST, EpochResult, train

TASK = "image-classification"


@pytest.fixture
def tiny_images(home: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Two Fashion-MNIST classes, 10 images each: enough for a step and an export."""
    return ingest_file(fashion_mnist_zip(tmp_path / "tiny.zip", per_class=10, classes=("trouser", "bag")))


def _data(ds, **cfg: object):  # type: ignore[no-untyped-def]
    c = jobs.config_for(ds.id, **{"image_size": 32, "batch_size": 8, "epochs": 1, "workers": 0, **cfg})
    return c, get_task(TASK).prepare(ds, c, "cpu")


def test_registry_offers_the_four_image_models() -> None:
    names = [m.name for m in models_for(TASK)]
    assert names[0] == "efficientnet-lite0"  # the offline default comes first
    assert set(names) == {"efficientnet-lite0", "small-cnn", "resnet18", "mobilenet-v3-small"}


@pytest.mark.parametrize("model", [m.name for m in models_for(TASK)])
def test_every_image_model_trains_a_step_and_exports(tiny_images, tmp_path: Path, model: str) -> None:  # type: ignore[no-untyped-def]
    cfg, data = _data(
        tiny_images, model=model, weights="none" if model != "efficientnet-lite0" else "default"
    )
    before = [p.detach().clone() for p in data.model.parameters()]
    train(cfg, data, device="cpu", run_dir=tmp_path)
    updated = sum(not torch.equal(a, b) for a, b in zip(before, data.model.parameters(), strict=True))
    assert updated == len(before), f"{model}: {len(before) - updated} parameters got no update"
    checkpoint.load_weights(tmp_path / BEST, data.model)
    check = get_task(TASK).export(data, cfg, tiny_images, tmp_path / "model.onnx", run_id=1)
    assert check.top1_agreement == 1.0 and check.max_abs_diff < 1e-3 and check.n_samples == data.n_val
    graph = onnx.load(str(tmp_path / "model.onnx")).graph
    (inp,) = graph.input
    assert inp.name == "image" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [32, 32, 3]


def test_prediction_resizes_exactly_as_validation(tiny_images, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg, data = _data(tiny_images, model="small-cnn")
    train(cfg, data, device="cpu", run_dir=tmp_path)
    checkpoint.load_weights(tmp_path / BEST, data.model)
    get_task(TASK).export(data, cfg, tiny_images, tmp_path / "model.onnx", run_id=1)
    val_set = data.val.loader.dataset  # type: ignore[union-attr]
    with torch.no_grad():
        expected = torch.softmax(data.model.eval()(torch.from_numpy(val_set.image(0))[None]), 1)[0].numpy()
    predictor = Predictor(tmp_path / "model.onnx")
    assert predictor.image_size == (32, 32)
    (pred,) = predictor.predict_images([val_set.files[0]])
    got = np.array([pred.probabilities[c] for c in predictor.labels])
    assert np.abs(got - expected).max() < 1e-4
    assert pred.top(1)[0][0] == pred.label


def test_weights_from_files_and_refused_sources(
    tiny_images, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    from torchvision.models import resnet18

    source = resnet18(num_classes=1000)
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")
    save_file(
        {k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "resnet18.safetensors")
    )
    for name in ("resnet18.pth", "resnet18.safetensors"):
        _, data = _data(tiny_images, model="resnet18", weights=str(tmp_path / name))
        loaded = data.model.net.layer1[0].conv1.weight  # type: ignore[union-attr]
        assert torch.equal(loaded, source.layer1[0].conv1.weight) and data.extra["pretrained"]
        assert data.model.net.fc.out_features == 2  # type: ignore[union-attr]
        assert data.param_groups is not None and data.param_groups[0]["lr_mult"] == 0.1

    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (print, ("pickle code ran",))

    torch.save({"weight": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(ConfigError, match="not a PyTorch weights file we can load safely"):
        _data(tiny_images, model="resnet18", weights=str(tmp_path / "evil.pth"))
    with pytest.raises(ConfigError, match="matches only"):
        _data(tiny_images, model="mobilenet-v3-small", weights=str(tmp_path / "resnet18.pth"))
    # Offline, the ImageNet download fails with a message that says what to do instead.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    with pytest.raises(
        ConfigError, match="could not download the ImageNet weights of resnet18.*--weights PATH"
    ):
        _data(tiny_images, model="resnet18", weights="imagenet")


def test_freeze_epochs_train_only_the_head_first(tiny_images, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg, data = _data(tiny_images, model="small-cnn", freeze_epochs=1, epochs=2)
    model = data.model
    backbone0 = [p.detach().clone() for p in model.backbone_parameters()]  # type: ignore[operator]
    head0 = [p.detach().clone() for p in model.head_parameters()]  # type: ignore[operator]
    snapshots: list[list[torch.Tensor]] = []
    train(
        cfg,
        data,
        device="cpu",
        run_dir=tmp_path,
        on_epoch=lambda r: snapshots.append([p.detach().clone() for p in model.backbone_parameters()]),
    )  # type: ignore[operator]
    assert all(torch.equal(a, b) for a, b in zip(backbone0, snapshots[0], strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(backbone0, snapshots[1], strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(head0, model.head_parameters(), strict=True))  # type: ignore[operator]


def test_fine_tune_an_earlier_run_with_new_classes(home: Path, tmp_path: Path) -> None:
    four = ingest_file(
        fashion_mnist_zip(tmp_path / "four.zip", per_class=8, classes=("bag", "coat", "dress", "sandal"))
    )
    two = ingest_file(fashion_mnist_zip(tmp_path / "two.zip", per_class=8, classes=("trouser", "sneaker")))
    cfg, data = _data(four, model="small-cnn")
    earlier = get_settings().runs_dir / "41"
    train(cfg, data, device="cpu", run_dir=earlier)
    checkpoint.load_weights(earlier / BEST, data.model)
    _, tuned = _data(two, model="small-cnn", init_from_run=41)
    assert torch.equal(tuned.model.net[0][0].weight, data.model.net[0][0].weight)  # type: ignore[index]
    assert tuned.model.net[6].out_features == 2 and tuned.extra["pretrained"]  # type: ignore[index]
    with pytest.raises(ConfigError, match="trained small-cnn; fine-tune it with --model small-cnn"):
        _data(two, model="resnet18", weights="none", init_from_run=41)
    with pytest.raises(ConfigError, match="no checkpoint"):
        _data(two, model="small-cnn", init_from_run=999)


def _fit(ds, run_dir: Path, **cfg: object) -> list[EpochResult]:  # type: ignore[no-untyped-def]
    c, data = _data(ds, **cfg)
    seen: list[EpochResult] = []
    train(c, data, device="cpu", run_dir=run_dir, on_epoch=seen.append)
    return seen


def test_pretrained_efficientnet_beats_random_init_on_fashion_mnist(home: Path, tmp_path: Path) -> None:
    classes = ("t-shirt", "trouser", "pullover", "sneaker", "bag")
    ds = ingest_file(fashion_mnist_zip(tmp_path / "fm.zip", per_class=48, classes=classes))
    budget = {"model": "efficientnet-lite0", "image_size": 96, "epochs": 3, "batch_size": 16, "seed": 0}
    tuned = max(r.metrics["val_accuracy"] for r in _fit(ds, tmp_path / "tuned", weights="default", **budget))
    scratch = max(r.metrics["val_accuracy"] for r in _fit(ds, tmp_path / "scratch", weights="none", **budget))
    assert tuned >= 0.7, tuned
    assert tuned > scratch + 0.2, (tuned, scratch)


def test_small_cnn_learns_a_real_set_from_scratch(home: Path, tmp_path: Path) -> None:
    classes = ("trouser", "sneaker", "bag", "dress")
    ds = ingest_file(fashion_mnist_zip(tmp_path / "fm.zip", per_class=60, classes=classes))
    results = _fit(
        ds, tmp_path / "run", model="small-cnn", image_size=32, epochs=6, batch_size=16, patience=0
    )
    assert max(r.metrics["val_accuracy"] for r in results) >= 0.75
    assert results[-1].metrics["val_loss"] < results[0].metrics["val_loss"]


def test_run_config_rejects_bad_image_options() -> None:
    with pytest.raises(ValueError, match="image_size"):
        RunConfig(task=TASK, dataset_id=1, image_size=8)
    with pytest.raises(ValueError, match="cache"):
        RunConfig(task=TASK, dataset_id=1, cache="sometimes")  # type: ignore[arg-type]
