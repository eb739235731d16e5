"""Detection and segmentation: every dense model trains a step and exports with parity on images
of any size; the targets, decoding and metrics on known boxes and masks; a whole run from a
synthetic scenes zip to its certificate and `predict --json` (boxes, and palette masks written to
--out)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from streamlit.testing.v1 import AppTest

from core import certificate, checkpoint, jobs, summary
from core.config import RunConfig
from core.data import scenes
from core.data.ingest import ingest_file
from core.errors import ConfigError
from core.execute import execute_run
from core.models import get_model, models_for
from core.runtime import Predictor
from core.tasks import get_task
from core.tasks.detection import box_agreement, coco_eval, decode, detection_loss
from core.tasks.segmentation import scores
from core.train import BEST, train
from core.worker import Worker

DETECTION, SEGMENTATION = "object-detection", "semantic-segmentation"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def boxes_set(home: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    return ingest_file(scenes.detection_zip(tmp_path / "boxes.zip", 16, size=96, seed=1))


@pytest.fixture
def masks_set(home: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    return ingest_file(
        scenes.segmentation_zip(tmp_path / "masks.zip", 16, size=96, seed=2), task=SEGMENTATION
    )


def _data(ds, **cfg: object):  # type: ignore[no-untyped-def]
    c = jobs.config_for(ds.id, **{"image_size": 64, "batch_size": 8, "epochs": 1, "workers": 0, **cfg})
    return c, get_task(ds.task).prepare(ds, c, "cpu")


def test_registry_offers_two_models_per_task() -> None:
    assert [m.name for m in models_for(DETECTION)] == [
        "centernet-mobilenet-v2",
        "centernet-efficientnet-lite0",
    ]
    assert [m.name for m in models_for(SEGMENTATION)] == ["lraspp-mobilenet-v2", "lraspp-efficientnet-lite0"]


@pytest.mark.parametrize(
    "task,model",
    [(t, m.name) for t in (DETECTION, SEGMENTATION) for m in models_for(t)],
)
def test_every_dense_model_trains_a_step(boxes_set, masks_set, tmp_path: Path, task: str, model: str) -> None:  # type: ignore[no-untyped-def]
    ds = boxes_set if task == DETECTION else masks_set
    cfg, data = _data(ds, model=model)
    assert data.extra["pretrained"]  # ImageNet weights from the packages on disk
    before = [p.detach().clone() for p in data.model.parameters()]
    train(cfg, data, device="cpu", run_dir=tmp_path)
    updated = sum(not torch.equal(a, b) for a, b in zip(before, data.model.parameters(), strict=True))
    assert updated == len(before), f"{model}: {len(before) - updated} parameters got no update"


# The default models export in test_a_run_from_scenes_to_predictions, through a worker's path.
OTHERS = [(t, m.name) for t in (DETECTION, SEGMENTATION) for m in models_for(t)[1:]]


@pytest.mark.parametrize("task,model", OTHERS)
def test_the_other_models_export_for_any_image_size(  # type: ignore[no-untyped-def]
    boxes_set, masks_set, tmp_path: Path, task: str, model: str
) -> None:
    ds = boxes_set if task == DETECTION else masks_set
    cfg, data = _data(ds, model=model)
    train(cfg, data, device="cpu", run_dir=tmp_path)
    checkpoint.load_weights(tmp_path / BEST, data.model)
    path = tmp_path / "model.onnx"
    check = get_task(task).export(data, cfg, ds, path, run_id=1)
    assert check.top1_agreement == 1.0 and check.n_samples == data.n_val
    assert check.agreement == ("box_agreement" if task == DETECTION else "pixel_agreement")
    _takes_any_size(path, task, sorted((Path(ds.path) / "images").rglob("*.png"))[0], tmp_path)


def _takes_any_size(path: Path, task: str, original: Path, tmp_path: Path) -> None:
    """The file's image input has free sides, its outputs are named as the contract says, and an
    image twice as large gives boxes twice as far out, or a mask of its own size."""
    graph = onnx.load(str(path)).graph
    (inp,) = graph.input
    assert [d.dim_param for d in inp.type.tensor_type.shape.dim[:3]] == ["batch", "height", "width"]
    names = [o.name for o in graph.output]
    assert names == (["boxes", "scores", "labels"] if task == DETECTION else ["mask", "confidence"])
    predictor = Predictor(path)
    big = tmp_path / "big.png"
    Image.open(original).convert("RGB").resize((192, 192), Image.Resampling.NEAREST).save(big)
    if task == DETECTION:
        small = predictor._run_image(original)
        large = predictor._run_image(big)
        assert small[0].shape == (100, 4) and large[0].shape == (100, 4)
        # Near-tied peaks of a barely trained model may swap places: match each box to any other.
        doubled = small[0][:20] * 2
        for box in large[0][:3]:
            assert np.abs(doubled - box).max(axis=1).min() < 3.0, (box, doubled[:3])
    else:
        seg = predictor.segment(big)
        assert seg.mask.shape == (192, 192) and seg.confidence.shape == (192, 192)
        assert abs(sum(seg.shares.values()) - 1.0) < 1e-6


def test_centernet_targets_and_decoding_find_known_boxes() -> None:
    """A dense output built from the targets' own encoding decodes back to the boxes, scores
    1 where the box is, and the loss is lower there than at random outputs."""
    y = torch.tensor([[[1, 8.0, 12.0, 40.0, 30.0], [0, 44.0, 40.0, 60.0, 62.0], [-1, -1, -1, -1, -1]]])
    k, h, w = 2, 16, 16
    from core.tasks.detection import _render

    t = _render(y, k, h, w)
    out = torch.full((1, k + 4, h, w), -12.0)
    out[:, :k] = torch.logit(t["heat"].clamp(1e-6, 1 - 1e-6))
    reg = out[:, k:].flatten(2)
    for i in range(2):
        cell = t["cell"][0, i]
        reg[0, 0:2, cell] = t["size"][0, i]
        reg[0, 2:4, cell] = torch.logit(t["offset"][0, i].clamp(1e-4, 1 - 1e-4))
    out[:, k:] = reg.view(1, 4, h, w).clone()
    boxes, found_scores, labels = decode(out, top_k=2)
    order = labels[0].argsort(descending=True)
    assert torch.allclose(boxes[0][order], y[0, :2, 1:], atol=0.05)
    assert torch.allclose(found_scores, torch.ones(1, 2), atol=1e-4)
    assert detection_loss(out, y) < detection_loss(torch.randn_like(out), y)


def test_coco_metrics_and_agreement_on_known_boxes() -> None:
    truth = [(np.array([[0.0, 0, 10, 10], [20, 20, 30, 30]]), np.array([0, 1]))]
    perfect = [(truth[0][0], np.array([0.9, 0.8]), truth[0][1])]
    result = coco_eval(truth, perfect, ["a", "b"])
    assert result["map50"] == pytest.approx(1.0) and result["map"] == pytest.approx(1.0)
    shifted = [(np.array([[3.0, 0, 13, 10], [20, 20, 30, 30]]), np.array([0.9, 0.8]), np.array([0, 1]))]
    half = coco_eval(truth, shifted, ["a", "b"])  # the first box at IoU 7/13: found at 0.5 only
    assert half["map50"] == pytest.approx(1.0) and half["map"] < 0.8
    assert half["per_class_ap50"] == pytest.approx([1.0, 1.0])
    wrong_label = [(truth[0][0], np.array([0.9, 0.8]), np.array([1, 1]))]
    assert coco_eval(truth, wrong_label, ["a", "b"])["per_class_ap50"][0] == 0.0
    assert box_agreement(perfect, perfect) == 1.0
    assert box_agreement(perfect, shifted) == 0.5  # IoU 7/13 is below the 0.9 agreement
    # Low-scoring peaks count only as an image's best box (so an untrained model is judged too).
    faint = [(truth[0][0], np.array([0.9, 0.1]), truth[0][1])]
    moved = [(np.array([[0.0, 0, 10, 10], [25, 25, 35, 35]]), np.array([0.9, 0.1]), truth[0][1])]
    assert box_agreement(faint, moved) == 1.0
    unsure = [(shifted[0][0], np.array([0.2, 0.1]), truth[0][1])]
    assert box_agreement(unsure, perfect) == 0.0


def test_weights_from_the_hugging_face_hub_or_a_folder(
    boxes_set, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """hub:ORG/NAME fetches a repo's best.safetensors (here from the hub's local cache, offline);
    a repo or folder without weights, and an unreachable hub, are refused in words."""
    import huggingface_hub.constants as hub

    cfg, data = _data(boxes_set, weights="none")
    shared = {n: t + 0.5 if t.is_floating_point() else t for n, t in data.model.state_dict().items()}
    revision = "0" * 40
    repo = tmp_path / "hub" / "models--someone--boxes"
    (repo / "snapshots" / revision).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    save_file(shared, str(repo / "snapshots" / revision / "best.safetensors"))
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    k = len(boxes_set.schema["classes"])
    fetched = cfg.model_copy(update={"weights": "hub:someone/boxes"})
    built = get_model(cfg.model, DETECTION).build(k, fetched).state_dict()
    assert all(torch.equal(built[n], shared[n]) for n in shared)
    with pytest.raises(ConfigError, match="could not be reached .offline.. and its"):
        get_model(cfg.model, DETECTION).build(k, cfg.model_copy(update={"weights": "hub:someone/else"}))
    with pytest.raises(ConfigError, match="holds no model.safetensors or best.safetensors"):
        jobs.submit(cfg.model_copy(update={"weights": str(tmp_path)}))


def test_segmentation_scores_count_each_class() -> None:
    matrix = torch.tensor([[8, 2, 0], [0, 4, 0], [0, 0, 0]])  # class 2 neither labelled nor predicted
    result = scores(matrix)
    assert result["iou"] == [pytest.approx(0.8), pytest.approx(4 / 6), None]
    assert result["miou"] == pytest.approx((0.8 + 4 / 6) / 2)
    assert result["pixel_accuracy"] == pytest.approx(12 / 14)


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "core", *args], capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.parametrize("task", [DETECTION, SEGMENTATION])
def test_a_run_from_scenes_to_predictions(home: Path, tmp_path: Path, task: str) -> None:
    make = scenes.detection_zip if task == DETECTION else scenes.segmentation_zip
    ds = ingest_file(make(tmp_path / "set.zip", 24, size=96, seed=3), task=task)
    # Segmentation trains in two gloo processes (DistributedDataParallel) under a real worker,
    # detection in this process.
    processes = 2 if task == SEGMENTATION else 1
    run = jobs.submit(jobs.config_for(ds.id, image_size=64, epochs=1, batch_size=8, processes=processes))
    if processes == 1:
        claimed = jobs.claim("test")  # what a worker does before it runs the run in its child
        assert claimed is not None and claimed.id == run.id
        assert execute_run(run.id) == 0
    else:
        Worker(poll_s=0.1, idle_exit_s=0.3).run()
    done = jobs.get_run(run.id)
    assert done.status == "succeeded", done.error
    if processes == 2:  # the worker keeps the run's log
        log = (jobs.run_dir(run.id) / "run.log").read_text()
        assert "in 2 processes (gloo)" in log, log[-2000:]
    key = "export_box_agreement" if task == DETECTION else "export_pixel_agreement"
    assert done.metrics[key] == 1.0
    files = {a.kind: Path(a.path) for a in jobs.artifacts(run.id)}
    _takes_any_size(files["onnx"], task, sorted((Path(ds.path) / "images").rglob("*.png"))[0], tmp_path)
    report = json.loads(files["report"].read_text())
    assert report["kind"] == ("detection" if task == DETECTION else "segmentation")
    assert [c["label"] for c in report["per_class"]] == ds.schema["classes"]

    # Its weights start another model: named by its run folder (another installation's, say),
    # the whole model loads; as a detector's start for a segmenter, the backbone alone.
    best = load_file(str(jobs.run_dir(run.id) / BEST))
    k = len(ds.schema["classes"])
    again = jobs.config_for(ds.id, image_size=64, weights=str(jobs.run_dir(run.id)))
    rebuilt = get_model(again.model, task).build(k, again).state_dict()
    assert rebuilt.keys() == best.keys() and all(torch.equal(rebuilt[n], best[n]) for n in best)
    other_task = SEGMENTATION if task == DETECTION else DETECTION
    crossed = RunConfig(task=other_task, dataset_id=ds.id, image_size=64, weights=again.weights)
    mixed = get_model("lraspp-mobilenet-v2" if task == DETECTION else "centernet-mobilenet-v2", other_task)
    state = mixed.build(k, crossed.model_copy(update={"model": mixed.name})).state_dict()
    shared = [n for n in best if n.startswith("backbone.")]
    assert shared and all(torch.equal(state[n], best[n]) for n in shared)

    # The certificate: fp32 reproduces PyTorch exactly and scores what training measured on the
    # same validation images; int8 (detection) and fp16 (segmentation) are judged the same way.
    other = "int8" if task == DETECTION else "fp16"
    records = {r.variant: r for r in certificate.certify(run.id, ("fp32", other))}
    metric = "map50" if task == DETECTION else "miou"
    assert {r.metric_name for r in records.values()} == {metric}
    assert records["pytorch"].metric_value == pytest.approx(done.best_metrics[f"val_{metric}"], abs=1e-6)
    assert records["fp32"].top1_agreement == 1.0 and records["fp32"].metric_change == pytest.approx(
        0, abs=1e-9
    )
    assert records["fp32"].n_samples == done.metrics["export_n_samples"]
    assert 0.5 <= (records[other].top1_agreement or 0) <= 1
    agreement = "box agreement" if task == DETECTION else "pixel agreement"
    if task == DETECTION:
        assert f"chosen with {agreement}" in records["int8"].method

    # The studio: the dataset's overlays, the run's detail with its worst images drawn.
    datasets = AppTest.from_file(str(ROOT / "pages" / "datasets.py"), default_timeout=60).run()
    assert not datasets.exception and not datasets.error
    shown = [label.value for label in datasets.markdown if label.value.startswith("**")]
    assert {f"**{summary.md(c)}**" for c in ds.schema["classes"] if c != "background"} <= set(shown)
    runs = AppTest.from_file(str(ROOT / "pages" / "runs.py"), default_timeout=60).run()
    runs.multiselect[0].set_value([run.id]).run()
    assert not runs.exception and not runs.error
    quality = "Detection quality" if task == DETECTION else "Segmentation quality"
    assert any(h.value.startswith(quality) for h in runs.subheader)
    table = next(d.value for d in runs.dataframe if agreement in getattr(d.value, "columns", []))
    assert list(table.index) == ["pytorch", "fp32", other]
    pictures = runs.get("image")
    assert pictures, "the worst validation images are drawn"

    image = next((Path(ds.path) / "images").rglob("*.png"))
    out = tmp_path / "masks"
    args = ["predict", "--run", str(run.id), str(image), "--json"]
    result = _cli(home, *args, *(["--threshold", "0"] if task == DETECTION else ["--out", str(out)]))
    assert result.returncode == 0, result.stderr
    (pred,) = json.loads(result.stdout)["predictions"]
    if task == DETECTION:
        assert len(pred["boxes"]) == 100  # threshold 0: the file's whole top-K
        first = pred["boxes"][0]
        assert first["label"] in ds.schema["classes"] and 0 <= first["score"] <= 1
        x1, y1, x2, y2 = first["box"]
        assert 0 <= x1 <= x2 <= 96 and 0 <= y1 <= y2 <= 96
    else:
        mask = Image.open(pred["mask"])
        assert mask.mode == "P" and mask.size == (96, 96)
        assert abs(sum(pred["shares"].values()) - 1.0) < 1e-3
        assert set(pred["shares"]) <= set(ds.schema["classes"])
        refused = _cli(home, "predict", "--run", str(run.id), str(image))
        assert refused.returncode != 0 and "give --out DIR" in refused.stderr
