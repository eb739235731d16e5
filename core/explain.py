"""Which tokens drove a text prediction: integrated gradients through the token embeddings.

The model is rebuilt from the run's best checkpoint (its metadata holds the architecture, the
tokenizer and the classes), so attributions explain the very weights that were exported.
Captum's LayerIntegratedGradients integrates from a baseline of padding tokens (special tokens
such as [CLS] and [SEP] kept) to the text; a token's score is the sum over its embedding.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core import checkpoint
from core.errors import NotFoundError


@dataclass(frozen=True)
class TokenScore:
    token: str
    start: int  # character span in the text; (0, 0) for special tokens
    end: int
    score: float  # attribution towards the explained class, scaled so max |score| = 1


@dataclass(frozen=True)
class Explanation:
    text: str
    label: str
    probability: float
    tokens: list[TokenScore]
    # How well the attributions add up to f(text) - f(baseline); near 0 is a faithful path.
    convergence_delta: float


class TextExplainer:
    """A run's text model in PyTorch with its tokenizer, ready to explain predictions."""

    def __init__(self, run_dir: str | Path) -> None:
        from tokenizers import Tokenizer

        from core.models.text import rebuild

        path = Path(run_dir) / "best.safetensors"
        if not path.exists():
            raise NotFoundError(f"{path} is missing: the run has no checkpoint to explain")
        meta = checkpoint.read_metadata(path)
        if meta.get("task") != "text-classification":
            raise NotFoundError("only text runs can be explained token by token")
        self.classes: list[str] = meta["classes"]
        self.pad_id = int(meta["pad_id"])
        self.model = rebuild(json.loads(meta["arch"])).eval()
        checkpoint.load_weights(path, self.model)
        self.tokenizer: Any = Tokenizer.from_str(meta["tokenizer"])
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(int(meta["max_length"]))
        self.special = {
            i
            for tok in ("[CLS]", "[SEP]", "<s>", "</s>")
            if (i := self.tokenizer.token_to_id(tok)) is not None
        }

    def explain(self, text: str, *, label: str | None = None, steps: int = 32) -> Explanation:
        """Attribution of each token towards `label` (default: the predicted class)."""
        from captum.attr import LayerIntegratedGradients

        enc = self.tokenizer.encode(text)
        ids = torch.tensor([enc.ids], dtype=torch.int64)
        mask = torch.ones_like(ids)
        baseline = torch.tensor(
            [[i if i in self.special else self.pad_id for i in enc.ids]], dtype=torch.int64
        )
        with torch.no_grad():
            probs = torch.softmax(self.model(ids, mask).float(), dim=1)[0]
        target = self.classes.index(label) if label is not None else int(probs.argmax())

        def forward(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.model(input_ids, attention_mask).float(), dim=1)

        lig = LayerIntegratedGradients(forward, self.model.embeddings())  # type: ignore[operator]
        attributions, delta = lig.attribute(
            ids,
            baselines=baseline,
            additional_forward_args=(mask,),
            target=target,
            n_steps=steps,
            internal_batch_size=steps,
            return_convergence_delta=True,
        )
        scores = attributions.sum(dim=-1)[0].detach().numpy()
        scale = float(np.abs(scores).max()) or 1.0
        tokens = [
            TokenScore(tok, int(s), int(e), float(v / scale))
            for tok, (s, e), v in zip(enc.tokens, enc.offsets, scores, strict=True)
        ]
        return Explanation(
            text=text,
            label=self.classes[target],
            probability=float(probs[target]),
            tokens=tokens,
            convergence_delta=float(delta.abs().max()),
        )


# --- tables ---------------------------------------------------------------------------------

SHAPLEY_SAMPLES = 25  # random feature orders averaged per explanation


@dataclass(frozen=True)
class FeatureScore:
    feature: str
    value: Any  # the row's value, as given
    baseline: Any  # what "absent" means for it: the dataset's median or commonest value
    score: float  # signed share of (output - baseline output) this feature accounts for


@dataclass(frozen=True)
class TableExplanation:
    label: str | None  # the class explained (None for regression)
    output: float  # the probability of that class, or the predicted value
    baseline_output: float  # the same for the baseline row (every feature at its baseline)
    features: list[FeatureScore]  # largest |score| first
    method: str
    evaluations: int  # forward passes of the model it took
    seconds: float


@dataclass(frozen=True)
class FeatureImportance:
    feature: str
    drop: float  # mean worsening of the validation metric when the feature is shuffled
    spread: float  # its standard deviation over the shuffles


@dataclass(frozen=True)
class GlobalImportance:
    metric: str  # e.g. val_f1_macro
    value: float  # the metric on the validation split as it is
    features: list[FeatureImportance]  # the most important first
    method: str
    rows: int
    evaluations: int
    seconds: float


PERMUTATION_REPEATS = 5  # shuffles per feature


class TableExplainer:
    """A tabular run's model in PyTorch, rebuilt from its best checkpoint on its dataset, ready
    to say which features drove a prediction: Shapley values estimated by captum's
    ShapleyValueSampling (random feature orders), each feature switched between the row's value
    and its baseline, the dataset's median (numbers) or commonest value (categories). Signed
    scores add up to the prediction minus the baseline row's."""

    def __init__(self, run_id: int) -> None:
        from core import jobs
        from core.config import RunConfig
        from core.tasks import get_task
        from core.train import BEST

        run = jobs.get_run(run_id)
        if run.task not in ("tabular-classification", "tabular-regression"):
            raise NotFoundError(f"run {run_id} is {run.task}; this explains table runs")
        path = jobs.run_dir(run_id) / BEST
        if run.status != "succeeded" or not path.is_file():
            raise NotFoundError(f"run {run_id} is {run.status}: only a finished run can be explained")
        dataset = jobs.run_dataset(run)
        cfg = RunConfig.model_validate(run.config)
        data = get_task(cfg.task).prepare(dataset, cfg, "cpu")
        checkpoint.load_weights(path, data.model)
        self.model = data.model.eval()
        self.data = data  # its validation split, metrics and main metric: for importance()
        self.schema = dataset.schema
        self.classes: list[str] = list(data.extra.get("classes") or [])
        self.regression = cfg.task == "tabular-regression"
        self.y_mean, self.y_std = float(data.extra.get("y_mean", 0.0)), float(data.extra.get("y_std", 1.0))
        self.features = [f["name"] for f in self.schema["features"]]
        import pandas as pd

        frame = pd.read_parquet(Path(dataset.path) / "data.parquet")
        self.baseline: dict[str, Any] = {}
        for f in self.schema["features"]:
            column = frame[f["name"]]
            if f["kind"] == "numeric":
                self.baseline[f["name"]] = float(pd.to_numeric(column, errors="coerce").median())
            else:
                common = column.dropna().astype(str).value_counts()
                self.baseline[f["name"]] = str(common.index[0]) if len(common) else ""

    def _encode(self, row: dict[str, Any]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        import pandas as pd

        from core.tasks.tabular import encode_features

        numeric, categorical = encode_features(pd.DataFrame([row]), self.schema)
        return (
            None if numeric is None else torch.tensor(numeric),
            None if categorical is None else torch.tensor(categorical),
        )

    def explain(
        self, row: dict[str, Any], *, label: str | None = None, samples: int = SHAPLEY_SAMPLES
    ) -> TableExplanation:
        """Each feature's signed contribution to the row's prediction (towards `label`, by default
        the predicted class; for regression the value) against the baseline row."""
        import time

        from captum.attr import ShapleyValueSampling

        began = time.perf_counter()
        missing = [f for f in self.features if f not in row]
        if missing:
            raise NotFoundError(
                f"the row lacks the column {missing[0]!r}; the run takes {', '.join(self.features)}"
            )
        num, cat = self._encode(row)
        base_num, base_cat = self._encode(self.baseline)
        kinds = [f["kind"] for f in self.schema["features"]]
        num_at = [i for i, k in enumerate(kinds) if k == "numeric"]
        cat_at = [i for i, k in enumerate(kinds) if k != "numeric"]

        def forward(present: torch.Tensor) -> torch.Tensor:
            """present [n, features] in {0, 1}: each feature the row's value (1) or its baseline."""
            n = present.shape[0]
            nums = cats = None
            if num is not None and base_num is not None:
                keep = present[:, num_at] > 0.5
                nums = torch.where(keep, num.expand(n, -1), base_num.expand(n, -1))
            if cat is not None and base_cat is not None:
                keep = present[:, cat_at] > 0.5
                cats = torch.where(keep, cat.expand(n, -1), base_cat.expand(n, -1))
            with torch.no_grad():
                out = self.model(nums, cats).float()
            if self.regression:
                return out[:, 0] * self.y_std + self.y_mean
            return torch.softmax(out, dim=1)

        full = torch.ones(1, len(self.features))
        first = forward(full)[0]
        target = None
        if not self.regression:
            if label is not None and label not in self.classes:
                raise NotFoundError(
                    f"'{label}' is no class of this run; its classes: {', '.join(self.classes)}"
                )
            target = self.classes.index(label) if label is not None else int(first.argmax())
        counted = 0

        def counting(present: torch.Tensor) -> torch.Tensor:
            nonlocal counted
            counted += present.shape[0]
            return forward(present)

        with torch.random.fork_rng():
            torch.manual_seed(0)  # the same row is explained the same way each time
            scores = ShapleyValueSampling(counting).attribute(
                full,
                baselines=torch.zeros_like(full),
                target=target,
                n_samples=samples,
                perturbations_per_eval=64,
            )[0]
        zero = forward(torch.zeros_like(full))[0]
        pick = (lambda t: float(t)) if self.regression else (lambda t: float(t[target]))
        found = [
            FeatureScore(name, row[name], self.baseline[name], float(scores[i]))
            for i, name in enumerate(self.features)
        ]
        found.sort(key=lambda f: -abs(f.score))
        return TableExplanation(
            label=None if target is None else self.classes[target],
            output=pick(first),
            baseline_output=pick(zero),
            features=found,
            method=f"Shapley values, {samples} random feature orders (captum ShapleyValueSampling); "
            "absent features take the dataset's median or commonest value",
            evaluations=counted,
            seconds=time.perf_counter() - began,
        )

    def importance(
        self, *, repeats: int = PERMUTATION_REPEATS, on_progress: Callable[[float], None] | None = None
    ) -> GlobalImportance:
        """How much the model leans on each feature over the run's validation split: the main
        metric's worsening when that feature's values are shuffled among the validation rows
        (the others kept), averaged over `repeats` seeded shuffles."""
        import time

        from core.tasks import TensorBatches

        began = time.perf_counter()
        val = self.data.val
        assert isinstance(val, TensorBatches)
        nums, cats = val.inputs
        target = val.target
        metric, lower = self.data.main_metric, self.data.mode == "min"

        def score(n: torch.Tensor | None, c: torch.Tensor | None) -> float:
            with torch.no_grad():
                return float(self.data.evaluate(self.model(n, c), target)[metric])

        value = score(nums, cats)
        kinds = [f["kind"] for f in self.schema["features"]]
        column = {
            i: sum(1 for k in kinds[:i] if (k == "numeric") == (kind == "numeric"))
            for i, kind in enumerate(kinds)
        }
        generator = torch.Generator().manual_seed(0)
        found = []
        for i, name in enumerate(self.features):
            drops = []
            for _ in range(repeats):
                order = torch.randperm(len(target), generator=generator)
                n, c = nums, cats
                if kinds[i] == "numeric" and nums is not None:
                    n = nums.clone()
                    n[:, column[i]] = nums[order, column[i]]
                elif cats is not None:
                    c = cats.clone()
                    c[:, column[i]] = cats[order, column[i]]
                shuffled = score(n, c)
                drops.append(shuffled - value if lower else value - shuffled)
            found.append(FeatureImportance(name, float(np.mean(drops)), float(np.std(drops))))
            if on_progress is not None:
                on_progress((i + 1) / len(self.features))
        found.sort(key=lambda f: -f.drop)
        rows = len(target)
        return GlobalImportance(
            metric=metric,
            value=value,
            features=found,
            method=f"permutation importance: each feature's values shuffled among the {rows} validation "
            f"rows, {repeats} times, the others kept; the {'rise' if lower else 'fall'} in {metric} averaged",
            rows=rows,
            evaluations=1 + repeats * len(self.features),
            seconds=time.perf_counter() - began,
        )


# --- images and clips: where the evidence lies ----------------------------------------------

# The methods each task offers, its default first.
MAP_METHODS: dict[str, tuple[str, ...]] = {
    "image-classification": ("grad-cam", "integrated-gradients"),
    "audio-classification": ("integrated-gradients", "grad-cam"),
}
IG_STEPS = 32  # points on the path from the baseline to the input
MIN_CAM_SIDE = 4  # cells on the shorter side of the feature map Grad-CAM prefers
IG_BATCH = 8  # of them per forward and backward pass


@dataclass(frozen=True)
class MapExplanation:
    label: str
    probability: float
    method: str  # what was computed, in words
    # Evidence for the label, the strongest 1, nothing below 0: the model's input pixels
    # [height, width] for an image; for a clip, mel bands (the lowest first) by frames.
    heatmap: np.ndarray
    evaluations: int  # images or clips the model ran forward and back
    seconds: float


def _finished(run_id: int, tasks: dict[str, Any], what: str) -> tuple[str, Path, dict[str, Any], Any]:
    """A finished run's task, best checkpoint, its metadata and its config set to build the model
    without weights (the checkpoint holds every one: nothing is downloaded or read for it)."""
    from core import jobs
    from core.config import RunConfig
    from core.train import BEST

    run = jobs.get_run(run_id)
    if run.task not in tasks:
        raise NotFoundError(f"run {run_id} is {run.task}; this explains {what} runs")
    path = jobs.run_dir(run_id) / BEST
    if run.status != "succeeded" or not path.is_file():
        raise NotFoundError(f"run {run_id} is {run.status}: only a finished run can be explained")
    meta = checkpoint.read_metadata(path)
    cfg = RunConfig.model_validate(meta["config"]).model_copy(update={"weights": "none"})
    return run.task, path, meta, cfg


def feature_layer(model: torch.nn.Module, example: torch.Tensor) -> torch.nn.Module:
    """Grad-CAM's layer: the module that last produces a feature map (batch, channels, rows,
    columns) of at least 4x4 cells in a forward pass (of more than one cell when none has that
    many), called only once in it (a ReLU module reused across blocks would mix them)."""
    calls: dict[torch.nn.Module, int] = {}
    maps: list[tuple[torch.nn.Module, int]] = []  # (module, the smaller side of its map)

    def seen(module: torch.nn.Module, _inputs: Any, output: Any) -> None:
        calls[module] = calls.get(module, 0) + 1
        if isinstance(output, torch.Tensor) and output.dim() == 4 and output.shape[2] * output.shape[3] > 1:
            maps.append((module, min(output.shape[2], output.shape[3])))

    hooks = [m.register_forward_hook(seen) for m in model.modules() if m is not model]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for hook in hooks:
            hook.remove()
    once = [(module, side) for module, side in maps if calls[module] == 1]
    if not once:
        raise NotFoundError("this model has no convolutional feature map to take a Grad-CAM from")
    # A small input leaves the very last map 2x2 or so, which says little about where: then the
    # last one of at least 4x4 cells (EfficientNet-Lite0 at 64 px: stride 16 rather than 32).
    fine = [module for module, side in once if side >= MIN_CAM_SIDE]
    return fine[-1] if fine else once[-1][0]


class MapExplainer:
    """A finished image or audio classification run's model in PyTorch, rebuilt from its best
    checkpoint (the weights that were exported), ready to say where in an image, or where in a
    clip's log-mel spectrogram, the evidence for a class lies.

    Grad-CAM weighs the last feature map's channels by their mean gradient towards the class
    (one pass forward and back; as coarse as that map). Integrated gradients average the
    gradients along the straight path from a baseline (a black image; silence) to the input,
    32 points: finer, and 32 passes. For clips they are taken at the log-mel layer, so each
    cell of the spectrogram gets its share."""

    def __init__(self, run_id: int) -> None:
        from core.models import get_model

        self.task, path, meta, cfg = _finished(run_id, MAP_METHODS, "image and audio")
        self.classes: list[str] = list(meta["classes"])
        spec = get_model(cfg.model, cfg.task)
        if self.task == "image-classification":
            from core.models.vision import ImageClassifier

            self.model: torch.nn.Module = ImageClassifier(spec.build(len(self.classes), cfg))
            self.size = int(meta["image_size"])
        else:
            self.rate, self.samples = int(meta["sample_rate"]), int(meta["samples"])
            self.n_mels = int(cfg.n_mels)
            self.model = spec.build(len(self.classes), cfg, self.samples)
        checkpoint.load_weights(path, self.model)
        self.model.eval()
        self.methods = MAP_METHODS[self.task]
        self._layer: torch.nn.Module | None = None

    def prepare(self, source: Any) -> np.ndarray:
        """An image (uint8 [size, size, 3]) or a clip (float32 [samples]) as the model takes it
        in validation; `source` is a path, bytes or a file object."""
        from core.runtime import load_image, prepare_clip

        if self.task == "image-classification":
            return load_image(source, (self.size, self.size))
        return prepare_clip(source, self.rate, self.samples)

    def explain(
        self,
        prepared: np.ndarray,
        *,
        label: str | None = None,
        method: str | None = None,
        on_progress: Callable[[float], None] | None = None,
    ) -> MapExplanation:
        """Where the evidence for `label` (by default the predicted class) lies in a prepared
        input. `on_progress` hears the share done (integrated gradients take a while)."""
        import time

        began = time.perf_counter()
        method = method or self.methods[0]
        if method not in self.methods:
            raise NotFoundError(f"'{method}' is no method here; give one of: {', '.join(self.methods)}")
        if label is not None and label not in self.classes:
            raise NotFoundError(f"'{label}' is no class of this run; its classes: {', '.join(self.classes)}")
        x = torch.from_numpy(np.ascontiguousarray(prepared)).float()[None]
        with torch.no_grad():
            probs = torch.softmax(self.model(x).float(), dim=1)[0]
        target = self.classes.index(label) if label is not None else int(probs.argmax())
        if method == "grad-cam":
            heat, passes, said = self._grad_cam(x, target)
        else:
            heat, passes, said = self._integrated(x, target, on_progress)
        heat = np.clip(heat, 0.0, None)
        top = float(heat.max())
        return MapExplanation(
            label=self.classes[target],
            probability=float(probs[target]),
            method=said,
            heatmap=(heat / top if top > 0 else heat).astype(np.float32),
            evaluations=passes,
            seconds=time.perf_counter() - began,
        )

    def _grad_cam(self, x: torch.Tensor, target: int) -> tuple[np.ndarray, int, str]:
        from captum.attr import LayerAttribution, LayerGradCam

        if self._layer is None:
            self._layer = feature_layer(self.model, x)
        cam = LayerGradCam(self.model, self._layer).attribute(x, target=target, relu_attributions=True)
        cells = "x".join(str(n) for n in cam.shape[2:])
        if self.task == "image-classification":
            shape: tuple[int, int] = (self.size, self.size)
        else:
            from core.models.audio import frames_for

            shape = (self.n_mels, frames_for(self.samples))
        heat = LayerAttribution.interpolate(cam, shape, "bilinear")[0, 0].detach().numpy()
        which = (
            f"the deepest feature map of at least {MIN_CAM_SIDE}x{MIN_CAM_SIDE} cells"
            if min(cam.shape[2:]) >= MIN_CAM_SIDE
            else "the last feature map"
        )
        return heat, 1, f"Grad-CAM on {which} ({cells})"

    def _integrated(
        self, x: torch.Tensor, target: int, on_progress: Callable[[float], None] | None
    ) -> tuple[np.ndarray, int, str]:
        from captum.attr import IntegratedGradients, LayerIntegratedGradients

        done = 0

        def forward(batch: torch.Tensor) -> torch.Tensor:
            nonlocal done
            if torch.is_grad_enabled():  # the path's passes, not captum's checks
                done += batch.shape[0]
                if on_progress is not None:
                    on_progress(min(1.0, done / IG_STEPS))
            return self.model(batch)

        baseline = torch.zeros_like(x)
        if self.task == "image-classification":
            found = IntegratedGradients(forward).attribute(
                x, baselines=baseline, target=target, n_steps=IG_STEPS, internal_batch_size=IG_BATCH
            )
            heat = found[0].sum(dim=-1).detach().numpy()  # the colour channels together
            said = f"integrated gradients from a black image, {IG_STEPS} steps, the colour channels summed"
        else:
            front = self.model.front
            found = LayerIntegratedGradients(forward, front).attribute(
                x, baselines=baseline, target=target, n_steps=IG_STEPS, internal_batch_size=IG_BATCH
            )
            heat = found[0].detach().numpy()
            said = f"integrated gradients at the log-mel layer from silence, {IG_STEPS} steps"
        return heat, done, said


DENSE_METHODS: dict[str, tuple[str, ...]] = {
    "object-detection": ("grad-cam", "integrated-gradients"),
    "semantic-segmentation": ("grad-cam", "integrated-gradients"),
}
MAX_PARTS = 10  # boxes or classes of one image explained at most
MIN_CLASS_SHARE = 0.01  # of the pixels, for a class to be explained in an image


@dataclass(frozen=True)
class Part:
    """One thing a detector or segmenter found in an image: a box, or a class's pixels."""

    label: str
    index: int  # the class's index
    score: float  # a box's score; a class's share of the pixels
    # Where it is at the model's input size (pixels, rows then columns): the box, or the pixels
    # given the class.
    region: np.ndarray
    box: tuple[float, float, float, float] | None = None  # x1, y1, x2, y2 at the model's input size
    cell: int = -1  # a box's heatmap cell (row * width + column) in the output grid


@dataclass(frozen=True)
class PartExplanation:
    part: Part
    method: str  # what was computed, in words
    target: str  # towards what, in words
    heatmap: np.ndarray  # evidence for the part at the model's input size, the strongest 1
    inside: float  # the share of the evidence inside the part's region
    evaluations: int
    seconds: float


class DenseExplainer:
    """A finished detection or segmentation run's model in PyTorch, rebuilt from its best
    checkpoint, ready to say where in an image the evidence for one box (its class's heatmap
    logit at the box's centre cell) or for one class's pixels (that class's logits averaged over
    the pixels given it) lies.

    Grad-CAM is taken on the detector's merged stride-4 features (what its heads read) or on
    the segmenter's stride-16 features where its head takes them in; integrated gradients from a
    black image, 32 steps, as for images."""

    def __init__(self, run_id: int) -> None:
        from core.models import get_model

        self.task, path, meta, cfg = _finished(run_id, DENSE_METHODS, "detection and segmentation")
        self.classes: list[str] = list(meta["classes"])
        self.size = int(meta["image_size"])
        self.model: Any = get_model(cfg.model, cfg.task).build(len(self.classes), cfg)
        checkpoint.load_weights(path, self.model)
        self.model.eval()
        self.methods = DENSE_METHODS[self.task]
        # Grad-CAM's layer: the detector's merged stride-4 features, which its heads read; the
        # segmenter's stride-16 features where its head takes them in (the backbone's own maps
        # put the evidence for a class on other classes' objects as often as on its own:
        # measured on the squares of tests/test_explain_dense.py).
        if self.task == "object-detection":
            self._layer, self._where = self.model.smooth, "the merged stride-4 features the heads read"
        else:
            self._layer, self._where = self.model.middle, "the head's stride-16 features"

    def prepare(self, source: Any) -> np.ndarray:
        """An image (a path, bytes or a file object) as the model takes it: uint8 [size, size, 3],
        resized as the exported graph resizes."""
        from core.runtime import load_original
        from core.tasks.dense import resize_in_graph

        image = torch.from_numpy(np.ascontiguousarray(load_original(source)))[None]
        return resize_in_graph(image, self.size)[0].numpy()

    def parts(
        self, prepared: np.ndarray, *, threshold: float | None = None, label: str | None = None
    ) -> list[Part]:
        """What the model finds in a prepared image, the most first (at most MAX_PARTS): boxes
        scoring `threshold` or more (the studio's default score when None), or the classes
        given at least MIN_CLASS_SHARE of the pixels (the background last); only those of class
        `label` when given."""
        from torch.nn import functional as F

        if label is not None and label not in self.classes:
            raise NotFoundError(f"'{label}' is no class of this run; its classes: {', '.join(self.classes)}")
        x = torch.from_numpy(np.ascontiguousarray(prepared)).float()[None]
        with torch.no_grad():
            out = self.model(x).float()
        found: list[Part] = []
        if self.task == "object-detection":
            from core.runtime import DEFAULT_THRESHOLD
            from core.tasks.detection import decode, peaks

            boxes, scores, labels = decode(out)
            cells = peaks(out)[2]
            lowest = DEFAULT_THRESHOLD if threshold is None else threshold
            for box, score, c, cell in zip(boxes[0], scores[0], labels[0], cells[0], strict=True):
                if float(score) < lowest or len(found) == MAX_PARTS:
                    break
                if label is not None and self.classes[int(c)] != label:
                    continue
                x1, y1, x2, y2 = (float(v) for v in box)
                region = np.zeros((self.size, self.size), bool)
                region[int(y1) : int(np.ceil(y2)), int(x1) : int(np.ceil(x2))] = True
                found.append(
                    Part(self.classes[int(c)], int(c), float(score), region, (x1, y1, x2, y2), int(cell))
                )
            return found
        full = F.interpolate(out, size=(self.size, self.size), mode="bilinear", align_corners=False)
        given = full.argmax(dim=1)[0].numpy()
        shares = np.bincount(given.reshape(-1), minlength=len(self.classes)) / given.size
        # The classes by their share, the background (class 0, as masks and palettes have it) last.
        for c in sorted(np.argsort(-shares, kind="stable"), key=lambda c: c == 0):
            name = self.classes[int(c)]
            if shares[c] >= MIN_CLASS_SHARE and (label is None or name == label) and len(found) < MAX_PARTS:
                found.append(Part(name, int(c), float(shares[c]), given == c))
        return found

    def explain(
        self,
        prepared: np.ndarray,
        part: Part,
        *,
        method: str | None = None,
        on_progress: Callable[[float], None] | None = None,
    ) -> PartExplanation:
        """Where in the prepared image the evidence for `part` (one of `parts(prepared)`) lies."""
        import time

        from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam
        from torch.nn import functional as F

        began = time.perf_counter()
        method = method or self.methods[0]
        if method not in self.methods:
            raise NotFoundError(f"'{method}' is no method here; give one of: {', '.join(self.methods)}")
        x = torch.from_numpy(np.ascontiguousarray(prepared)).float()[None]
        if part.box is not None:

            def target(batch: torch.Tensor) -> torch.Tensor:  # the box's heatmap logit
                return self.model(batch)[:, part.index].flatten(1)[:, part.cell : part.cell + 1]

            what = f"the {part.label} box's heatmap logit at its centre"
        else:
            with torch.no_grad():
                out = self.model(x)
            given = (out.argmax(dim=1) == part.index).float()  # its pixels in the output grid
            if float(given.sum()) == 0:  # a sliver lost in the output grid: the resized region
                given = F.interpolate(torch.from_numpy(part.region).float()[None, None], size=out.shape[2:])[
                    :, 0
                ]
            cells = given.sum().clamp(min=1.0)

            def target(batch: torch.Tensor) -> torch.Tensor:  # the class's mean logit over them
                return ((self.model(batch)[:, part.index] * given).sum(dim=(1, 2)) / cells)[:, None]

            what = f"the {part.label} logit averaged over its pixels"
        done = 0
        if method == "grad-cam":
            cam = LayerGradCam(target, self._layer).attribute(x, target=0, relu_attributions=True)
            heat = (
                LayerAttribution.interpolate(cam, (self.size, self.size), "bilinear")[0, 0].detach().numpy()
            )
            done = 1
            cells_said = "x".join(str(n) for n in cam.shape[2:])
            said = f"Grad-CAM on {self._where} ({cells_said})"
        else:

            def counted(batch: torch.Tensor) -> torch.Tensor:
                nonlocal done
                if torch.is_grad_enabled():
                    done += batch.shape[0]
                    if on_progress is not None:
                        on_progress(min(1.0, done / IG_STEPS))
                return target(batch)

            found = IntegratedGradients(counted).attribute(
                x, baselines=torch.zeros_like(x), target=0, n_steps=IG_STEPS, internal_batch_size=IG_BATCH
            )
            heat = found[0].sum(dim=-1).detach().numpy()
            said = f"integrated gradients from a black image, {IG_STEPS} steps"
        heat = np.clip(heat, 0.0, None)
        top, total = float(heat.max()), float(heat.sum())
        return PartExplanation(
            part=part,
            method=said,
            target=what,
            heatmap=(heat / top if top > 0 else heat).astype(np.float32),
            inside=float(heat[part.region].sum()) / total if total > 0 else 0.0,
            evaluations=done,
            seconds=time.perf_counter() - began,
        )


def strongest_region(heat: np.ndarray, share: float = 0.5) -> tuple[int, int, int, int]:
    """(first row, last row, first column, last column) of the strongest evidence: the rows, then
    the columns, grown from the peak's towards the stronger neighbour until they hold `share`
    of the evidence summed along them."""

    def span(profile: np.ndarray) -> tuple[int, int]:
        lo = hi = int(profile.argmax())
        need = share * float(profile.sum())
        while float(profile[lo : hi + 1].sum()) < need:
            left = profile[lo - 1] if lo > 0 else -1.0
            right = profile[hi + 1] if hi < len(profile) - 1 else -1.0
            if left >= right:
                lo -= 1
            else:
                hi += 1
        return lo, hi

    rows, cols = span(heat.sum(axis=1)), span(heat.sum(axis=0))
    return rows[0], rows[1], cols[0], cols[1]


def where_in_image(heat: np.ndarray) -> str:
    """'the top left', 'the centre', ... of the image: the third the peak evidence falls in."""
    r0, r1, c0, c1 = strongest_region(heat)
    h, w = heat.shape
    row = ("top", "middle", "bottom")[min(2, int(3 * (r0 + r1) / 2 / h))]
    col = ("left", "centre", "right")[min(2, int(3 * (c0 + c1) / 2 / w))]
    named = [word for word in (row, col) if word not in ("middle", "centre")]
    return f"the {' '.join(named) or 'centre'}"


def mel_centres(rate: int, n_mels: int) -> np.ndarray:
    """The centre frequency (Hz) of each mel band, the lowest first."""
    from core.models.audio import _hz_to_mel, _mel_to_hz

    top = _hz_to_mel(np.array([rate / 2]))[0]
    return _mel_to_hz(np.linspace(0.0, top, n_mels + 2))[1:-1]


def where_in_clip(heat: np.ndarray, rate: int) -> tuple[float, float, float, float]:
    """(start s, end s, lowest Hz, highest Hz) of the strongest evidence in a clip's log-mel."""
    from core.models.audio import HOP

    r0, r1, c0, c1 = strongest_region(heat)
    centres = mel_centres(rate, heat.shape[0])
    return c0 * HOP / rate, (c1 + 1) * HOP / rate, float(centres[r0]), float(centres[r1])


def image_overlay(
    image: np.ndarray, heat: np.ndarray, *, longest: int = 640, shortest: int = 320
) -> np.ndarray:
    """The image (uint8 [H, W, 3], any size) with its heatmap (any size: it is stretched over the
    image, as the model's input was squeezed from it) laid over, the stronger the evidence the
    more colour, none where there is none; scaled so its longer side is between `shortest` and
    `longest` pixels."""
    from matplotlib import colormaps
    from PIL import Image

    h, w = image.shape[:2]
    scale = min(longest / max(h, w), max(1.0, shortest / max(h, w)))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    picture = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC), dtype=np.float32)
    spread = np.asarray(
        Image.fromarray(heat.astype(np.float32), mode="F").resize(size, Image.Resampling.BILINEAR)
    )
    spread = spread.clip(0, 1)
    colours = colormaps["jet"](spread)[..., :3] * 255
    alpha = (0.65 * spread)[..., None]
    return (picture * (1 - alpha) + colours * alpha).clip(0, 255).astype(np.uint8)


def clip_overlay_png(logmel: np.ndarray, heat: np.ndarray, rate: int) -> bytes:
    """The clip's log-mel spectrogram in grey with the evidence over it in colour, time in
    seconds along, frequency in Hz up, the strongest region framed: a PNG."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.patches import Rectangle

    from core.models.audio import HOP

    n_mels, frames = logmel.shape
    seconds = frames * HOP / rate
    extent = (0.0, seconds, 0.0, float(n_mels))
    fig, ax = plt.subplots(figsize=(7.0, 3.0), dpi=100)
    try:
        span = 80 / 10 * np.log(10)  # 80 dB, as the spectrogram picture shows it
        ax.imshow(logmel, origin="lower", aspect="auto", extent=extent, cmap="gray",
                  vmin=float(logmel.max()) - span, vmax=float(logmel.max()))  # fmt: skip
        ax.imshow(heat, origin="lower", aspect="auto", extent=extent, cmap="autumn", alpha=0.9 * heat)
        r0, r1, c0, c1 = strongest_region(heat)
        ax.add_patch(Rectangle((c0 * HOP / rate, r0), (c1 + 1 - c0) * HOP / rate, r1 + 1 - r0,
                               fill=False, edgecolor="#00e5ff", linewidth=1.5))  # fmt: skip
        centres = mel_centres(rate, n_mels)
        ticks = np.linspace(0, n_mels - 1, 6).round().astype(int)
        ax.set_yticks(ticks + 0.5, [f"{centres[t]:,.0f}" for t in ticks])
        ax.set_xlabel("time (s)")
        ax.set_ylabel("frequency (Hz)")
        fig.tight_layout()
        out = io.BytesIO()
        fig.savefig(out, format="png")
        return out.getvalue()
    finally:
        plt.close(fig)


def part_overlay(
    original: np.ndarray, found: PartExplanation, classes: list[str], *, longest: int = 640
) -> np.ndarray:
    """The image with the heatmap of one box or class over it (`image_overlay`), and the part
    marked: the box outlined and captioned in its class's colour, or the pixels given the class
    outlined in cyan."""
    from PIL import Image

    picture = image_overlay(original, found.heatmap, longest=longest)
    h, w = picture.shape[:2]
    part = found.part
    size = found.heatmap.shape[0]
    if part.box is not None:
        from core.overlays import draw_boxes

        x1, y1, x2, y2 = part.box
        box = (x1 * w / size, y1 * h / size, x2 * w / size, y2 * h / size)
        return draw_boxes(picture, [box], [part.index], classes, [part.score])
    from scipy.ndimage import binary_dilation

    region = np.asarray(Image.fromarray(part.region).resize((w, h), Image.Resampling.NEAREST))
    edge = region & binary_dilation(~region)  # its pixels beside one outside it
    edge = binary_dilation(edge, iterations=max(1, round(min(h, w) / 240)))
    picture = picture.copy()
    picture[edge] = (0, 229, 255)
    return picture
