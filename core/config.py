"""Settings for Ascent, read from ASCENT_* environment variables."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The runtime reads the same two limits from the environment itself (it imports no settings).
from core.runtime import DEFAULT_MAX_CLIP_SECONDS, DEFAULT_MAX_IMAGE_PIXELS


class Settings(BaseSettings):
    """Where data lives, which database to use and how runs are supervised."""

    model_config = SettingsConfigDict(env_prefix="ASCENT_")

    # Datasets, run folders and the default SQLite database live here.
    home: Path = Path.home() / ".ascent"
    # Pretrained models converted once for every installation on this machine (the offline
    # language model's Hugging Face folder).
    model_cache: Path = Path.home() / ".cache" / "ascent"
    # Any SQLAlchemy URL; empty means SQLite at $ASCENT_HOME/ascent.db.
    database_url: str = ""
    # "auto" picks CUDA when present, else CPU; "cpu" or "cuda" force one.
    device: str = "auto"
    # Uploads larger than this are refused before they are read.
    max_upload_bytes: int = 500 * 1024 * 1024
    # Zip uploads: at most this many bytes once unpacked, and this many entries.
    max_unpacked_bytes: int = 2 * 1024 * 1024 * 1024
    max_zip_entries: int = 200_000
    # Tables: at most this many columns (checked on the header, before the rows are read),
    # and this many characters in one cell.
    max_columns: int = 2_000
    max_cell_chars: int = 100_000
    # A dataset's schema and its quality report are each at most this many bytes of JSON
    # (every page loads them); long lists inside them are cut to their first entries.
    max_schema_bytes: int = 2_000_000
    # Images with more pixels than this are left out at ingest and refused at prediction.
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    # Clips longer than this are left out at ingest (listed in the report) and refused at
    # prediction.
    max_clip_seconds: float = DEFAULT_MAX_CLIP_SECONDS
    # Export certificates measured at once across the installation (each times models in
    # fresh processes, so they would disturb each other's figures too).
    max_measurements: int = 2
    # How long a run, a worker or the CLI keeps retrying the database when it is unreachable
    # (a restart, a network blip) before giving up.
    db_retry_s: float = 60.0
    # A signed-in studio session lasts this long (the cookie expires with it).
    session_hours: float = 12.0
    # Seconds between heartbeats of a running run and of a worker.
    heartbeat_s: float = 2.0
    # A running run whose heartbeat is older than this is lost.
    lost_after_s: float = 30.0
    # A worker started on demand by `train --wait` exits after this long without work.
    worker_idle_exit_s: float = 300.0
    # Where the worker runs what it claims: "local" (here, one run at a time; a run of several
    # processes is launched on this machine) or "ray" (placed on a Ray cluster, side by side as
    # far as its resources allow; docs/scale.md).
    executor: Literal["local", "ray"] = "local"
    # The Ray cluster: empty to start a local one in the worker, "auto" for the one `ray start`
    # began on this machine, or an address such as 10.0.0.5:6379.
    ray_address: str = ""
    # CPUs a run's process asks Ray for (each GPU run's process also asks for one GPU); the
    # process uses that many threads.
    ray_cpus_per_process: float = Field(default=1.0, gt=0, le=256)
    # CPUs of a local Ray cluster the worker starts (0: all of this machine's).
    ray_cpus: int = Field(default=0, ge=0, le=4096)

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'ascent.db'}"

    @property
    def datasets_dir(self) -> Path:
        return self.home / "datasets"

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"


def get_settings() -> Settings:
    """Settings as the environment says now (cheap; tests change the environment)."""
    return Settings()


def resolve_device(requested: str = "auto") -> str:
    """The torch device a run should use: CUDA when asked for or available, else CPU."""
    import torch

    if requested == "auto":
        requested = get_settings().device
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        from core.errors import ConfigError

        raise ConfigError("the run asks for CUDA but no GPU is visible here; use --device cpu or auto")
    return requested


def describe_device() -> str:
    """The device runs use by default, in words: the GPU's name, or the CPU."""
    import torch

    if get_settings().device == "cpu" or not torch.cuda.is_available():
        return "CPU (no GPU visible)"
    return f"{torch.cuda.get_device_name(0)} (CUDA)"


def database() -> str:
    """Point db/ at the configured database and return its URL."""
    from db import session

    url = get_settings().resolved_database_url
    session.configure(url)
    return url


# The keywords `weights` takes besides a file, folder or hub id.
WEIGHT_WORDS = ("default", "none", "imagenet")


class RunConfig(BaseModel):
    """Everything a run needs, stored with the run and with its checkpoint."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task: str
    dataset_id: int
    model: str = "mlp"
    name: str = ""
    epochs: int = Field(30, ge=1, le=10_000)
    batch_size: int = Field(64, ge=1, le=65_536)
    lr: float = Field(1e-3, gt=0, le=10)
    weight_decay: float = Field(1e-4, ge=0)
    # Fraction of all optimiser steps spent warming the learning rate up from zero.
    warmup_fraction: float = Field(0.05, ge=0, le=0.5)
    # Stop after this many epochs without a better validation metric (0 = never).
    patience: int = Field(8, ge=0)
    val_fraction: float = Field(0.2, gt=0, lt=0.9)
    seed: int = 0
    # "auto": bf16 autocast on GPUs that support it, fp16 on other GPUs, fp32 on the CPU.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: str = "auto"
    # Model options read by the registered builder (e.g. hidden sizes of the MLP).
    hidden: tuple[int, ...] = (256, 128)
    dropout: float = Field(0.1, ge=0, lt=1)
    # Continue from the run's last checkpoint instead of starting afresh.
    resume: bool = False
    # Seconds from the run's start to its exported model (None: no limit, the epochs decide).
    # After a timed warm-up the run plans how many epochs fit; `epochs` stays the most it runs.
    budget_s: float | None = Field(None, ge=0, le=7 * 24 * 3600)
    # Pretrained backbones: fit the new head on the frozen backbone's features first (cached
    # per dataset, model and input size; seconds), then fine-tune the whole network from it.
    head_first: bool = True
    # Processes training this run together with DistributedDataParallel (core.distributed): one
    # per GPU, or gloo processes on the CPU. batch_size stays the global batch (and the learning
    # rate the one for it): each process takes batch_size / processes of every batch.
    processes: int = Field(1, ge=1, le=64)
    # A sweep's trial (core.sweeps): the Optuna study and trial number it reports to.
    sweep_id: int | None = None
    trial_number: int | None = None

    # --- images -------------------------------------------------------------------------
    # Initial weights: "default" (the model's offline default: ImageNet where a package ships
    # them, else random), "none" (random init), "imagenet" (download), or a weights file path.
    weights: str = "default"
    # Start from the best checkpoint of an earlier run (a new head when the classes differ).
    init_from_run: int | None = None
    image_size: int = Field(224, ge=16, le=1024)
    # Set when image_size was fitted to the data rather than given: a run with a time budget
    # may then lower it (after timing a training step) so that its epochs fit the budget.
    fit_image_size: bool = False
    # Random resized crops and light colour jitter while training.
    augment: bool = True
    # Random horizontal flips too: off by default, they break digits, letters and documents.
    flip: bool = False
    # Train only the head for this many epochs first.
    freeze_epochs: int = Field(0, ge=0)
    # Learning rate of the backbone relative to the head; None: 0.1 when starting from
    # pretrained weights, 1 otherwise.
    backbone_lr_mult: float | None = Field(None, gt=0, le=1)
    # DataLoader processes; None picks from the dataset size and CPU count.
    workers: int | None = Field(None, ge=0, le=32)
    # Keep decoded, resized images in memory ("auto": when they fit in 1 GB).
    cache: Literal["auto", "on", "off"] = "auto"

    # --- text ---------------------------------------------------------------------------
    # Tokens per text (longer ones are cut); None: the data's 95th percentile, at most 256.
    max_length: int | None = Field(None, ge=8, le=4096)
    # Freeze the embeddings and this many lower transformer layers (0: train everything).
    freeze_layers: int = Field(0, ge=0, le=100)
    # Optimiser step every this many batches (a larger effective batch in the same memory).
    grad_accum: int = Field(1, ge=1, le=1024)

    # --- text generation ------------------------------------------------------------------
    # "lora": low-rank adapters on the frozen model (peft); "full": every weight (small models).
    finetune: Literal["lora", "full"] = "lora"
    lora_rank: int = Field(16, ge=1, le=512)
    # The adapters' scale is lora_alpha / lora_rank; None: twice the rank.
    lora_alpha: int | None = Field(None, ge=1, le=4096)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    # Layers that get adapters: "all-linear", or module names separated by commas (q_proj,v_proj).
    lora_targets: str = "all-linear"

    # --- audio --------------------------------------------------------------------------
    # Clips are resampled to this rate and mixed to mono.
    sample_rate: int = Field(16_000, ge=4_000, le=48_000)
    # Seconds per clip (padded or cut around the middle); None: the data's 95th percentile.
    clip_seconds: float | None = Field(None, gt=0.1, le=30)
    n_mels: int = Field(64, ge=16, le=256)

    @model_validator(mode="after")
    def _splits_over_processes(self) -> RunConfig:
        if self.processes > 1:
            if self.batch_size % self.processes:
                raise ValueError(
                    f"a batch of {self.batch_size} does not split over {self.processes} processes; "
                    f"give a batch size that is a multiple of {self.processes}"
                )
            if self.freeze_epochs:
                raise ValueError(
                    "head-only epochs do not run over several processes yet; give 0 or 1 process"
                )
        return self

    @field_validator("budget_s")
    @classmethod
    def _usable_budget(cls, value: float | None) -> float | None:
        if value is not None and 0 < value < 10:
            raise ValueError(
                "a time budget under 10 s leaves no time to train; give 10 or more, or 0 for none"
            )
        return value or None

    @field_validator("lora_targets")
    @classmethod
    def _target_names(cls, value: str) -> str:
        names = [n.strip() for n in value.split(",")]
        if value.strip() == "all-linear":
            return "all-linear"
        if not all(re.fullmatch(r"[A-Za-z_][\w.]*", n) for n in names):
            raise ValueError(
                f"'{value}' names no layers; give all-linear or module names separated by commas (q_proj,v_proj)"
            )
        return ",".join(names)

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
            raise ValueError(f"'{value}' is no device; use auto, cpu, cuda or cuda:N")
        return value

    def params(self) -> dict[str, str]:
        """A flat string copy for the params table."""
        return {k: json.dumps(v) if not isinstance(v, str) else v for k, v in self.model_dump().items()}
