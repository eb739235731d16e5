"""Audio classification: raw waveform in, log-mel and CNN inside the model.

Every clip is prepared once, as prediction prepares it (`core.runtime.prepare_clip`: decode,
mix to mono, resample to the run's rate, centre in a fixed length), and kept in memory.
Training adds SpecAugment masks inside the model and a random time shift of up to 10 %.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from core.config import RunConfig
from core.data.audio import clip_seconds
from core.export import ExportConfig, check_parity, export_onnx
from core.models import get_model
from core.models.audio import AudioClassifier, seconds_to_samples
from core.runtime import prepare_clip
from core.tasks import (
    ExportCheck,
    Probabilities,
    Reference,
    TaskData,
    TensorBatches,
    calibration_rows,
    classification_metrics,
    cross_entropy,
    export_metadata,
    init_from_run,
    read_index,
    split_indices,
)
from db.queries import DatasetInfo

TASKS: tuple[str, ...] = ("audio-classification",)
MAX_PARITY_CLIPS = 256


class _Shifted(TensorBatches):
    """Training batches with each clip rolled by a random offset (up to 10 % of its length)."""

    def __iter__(self):  # type: ignore[no-untyped-def]
        for (wave,), y in super().__iter__():
            assert wave is not None
            n = wave.shape[1]
            shift = int(torch.randint(-n // 10, n // 10 + 1, ()).item())
            yield (torch.roll(wave, shift, dims=1),), y


def load_clips(dataset: DatasetInfo, rate: int, samples: int) -> tuple[np.ndarray, list[str], list[str]]:
    """(waveforms float32 [N, samples], labels, relative paths) of a stored audio dataset."""
    root = Path(dataset.path)
    index = read_index(dataset, "clip")
    waves = np.stack([prepare_clip(root / "clips" / p, rate, samples) for p in index["path"]])
    return waves, index["label"].tolist(), index["path"].tolist()


def prepare(dataset: DatasetInfo, cfg: RunConfig, device: str, run_dir: Path | None = None) -> TaskData:
    torch.manual_seed(cfg.seed)
    seconds = cfg.clip_seconds or float(dataset.schema.get("clip_seconds") or clip_seconds(1.0))
    samples = seconds_to_samples(seconds, cfg.sample_rate)
    waves, labels, _ = load_clips(dataset, cfg.sample_rate, samples)
    classes: list[str] = dataset.schema["classes"]
    y = np.array([classes.index(label) for label in labels], dtype=np.int64)
    train_idx, val_idx = split_indices(y, stratify=True, val_fraction=cfg.val_fraction, seed=cfg.seed)
    model: AudioClassifier = get_model(cfg.model, cfg.task).build(len(classes), cfg, samples)
    if cfg.init_from_run is not None:
        init_from_run(
            model, cfg.init_from_run, lambda c: None if c.get("task") == cfg.task else "is not an audio run"
        )
    x = torch.from_numpy(waves).to(device)
    target = torch.from_numpy(y).to(device)
    tr, va = torch.from_numpy(train_idx).to(device), torch.from_numpy(val_idx).to(device)
    batches = _Shifted if cfg.augment else TensorBatches
    print(f"clips: {len(waves)} of {seconds:g} s at {cfg.sample_rate} Hz ({samples} samples)", flush=True)
    return TaskData(
        model=model,
        train=batches((x[tr],), target[tr], cfg.batch_size, shuffle=True, seed=cfg.seed),
        val=TensorBatches((x[va],), target[va], max(cfg.batch_size, 64), shuffle=False),
        n_train=len(train_idx),
        n_val=len(val_idx),
        val_ids=val_idx,
        loss_fn=cross_entropy,
        evaluate=classification_metrics,
        main_metric="val_f1_macro",
        mode="max",
        extra={
            "task": cfg.task,
            "classes": classes,
            "sample_rate": cfg.sample_rate,
            "samples": samples,
            "n_mels": cfg.n_mels,
        },
    )


def export(data: TaskData, cfg: RunConfig, dataset: DatasetInfo, path: Path, run_id: int) -> ExportCheck:
    """model.onnx: float32 mono waveform in, class probabilities out; checked on validation clips."""
    assert isinstance(data.val, TensorBatches)
    (waves,) = data.val.inputs
    assert waves is not None
    clips = waves[:MAX_PARITY_CLIPS].cpu().numpy()
    rate, samples = data.extra["sample_rate"], data.extra["samples"]
    wrapper = Probabilities(data.model.to("cpu")).eval()
    spec = [
        {
            "name": "waveform",
            "dtype": "float32",
            "shape": ["batch", samples],
            "sample_rate": rate,
            "n_mels": data.extra["n_mels"],
        }
    ]
    metadata = export_metadata(
        cfg,
        dataset,
        run_id,
        spec,
        (
            f"decode WAV/FLAC to float32 in [-1, 1], average the channels, resample to {rate} Hz, "
            f"centre in {samples} samples (pad with zeros or keep the middle); the log-mel front end is in the graph"
        ),
    )
    export_onnx(
        wrapper,
        (torch.from_numpy(clips[:2].copy()),),
        path,
        input_names=["waveform"],
        output_name="probabilities",
        metadata=metadata,
    )
    return check_parity(path, wrapper, (clips,), classification=True, cfg=ExportConfig(batch_size=32))


def reference(data: TaskData, cfg: RunConfig, dataset: DatasetInfo) -> Reference:
    assert isinstance(data.val, TensorBatches)
    (waves,) = data.val.inputs
    assert waves is not None
    assert isinstance(data.train, TensorBatches)
    (train,) = data.train.inputs
    assert train is not None
    calibration = train[torch.from_numpy(calibration_rows(len(train), cfg.seed))].cpu().numpy()
    module = Probabilities(data.model.to("cpu")).eval()
    return Reference(module, (waves.cpu().numpy(),), data.val.target.cpu().numpy(), True, (calibration,))
