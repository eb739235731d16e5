"""Text classification: fine-tune a transformer or train a small CNN; token ids and mask in.

Texts are tokenised once (cut at the run's maximum length); each batch is padded to its own
longest text (dynamic padding). Validation texts are sorted by length so their batches carry
little padding. The export writes `tokenizer.json` beside `model.onnx` and names it, with the
maximum length and the padding id, in the file's metadata.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from core import atomic
from core.config import RunConfig
from core.errors import ConfigError, DatasetError
from core.export import FUSED_MODEL_TYPES, ExportConfig, check_parity, export_onnx, fuse_transformer
from core.models import get_model
from core.models.text import PAD, TextNet, arch_json
from core.tasks import (
    DeviceLoader,
    ExportCheck,
    Probabilities,
    Reference,
    TaskData,
    classification_metrics,
    cross_entropy,
    export_metadata,
    features_key,
    init_from_run,
    split_indices,
)
from db.queries import DatasetInfo

TASKS: tuple[str, ...] = ("text-classification",)
DEFAULT_MAX_LENGTH = 256
MAX_PARITY_TEXTS = 512
TOKENIZER_FILE = "tokenizer.json"


class TokenDataset(Dataset[tuple[np.ndarray, int]]):
    def __init__(self, ids: list[np.ndarray], labels: np.ndarray) -> None:
        self.ids, self.labels = ids, labels

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.ids[i], int(self.labels[i])


def pad_batch(ids: list[np.ndarray], pad_id: int, length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """int64 ids and attention mask, padded on the right to the longest (or `length`)."""
    width = length or max(len(x) for x in ids)
    out = np.full((len(ids), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(ids), width), dtype=np.int64)
    for row, x in enumerate(ids):
        out[row, : len(x)] = x
        mask[row, : len(x)] = 1
    return out, mask


class _Collate:
    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, batch: list[tuple[np.ndarray, int]]) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        ids, mask = pad_batch([b[0] for b in batch], self.pad_id)
        return (torch.from_numpy(ids), torch.from_numpy(mask)), torch.tensor([b[1] for b in batch])


def choose_max_length(cfg: RunConfig, p95: float, positions: int) -> int:
    """The run's length in tokens: as set, else the data's 95th percentile rounded up to 8."""
    if cfg.max_length is not None:
        if cfg.max_length > positions:
            raise ConfigError(f"--max-length {cfg.max_length} is over this model's {positions} positions")
        return cfg.max_length
    return int(min(positions, DEFAULT_MAX_LENGTH, max(16, 8 * math.ceil(p95 / 8))))


def encode(tokenizer: Any, texts: list[str], max_length: int) -> list[np.ndarray]:
    tokenizer.enable_truncation(max_length)
    return [np.asarray(e.ids, dtype=np.int64) for e in tokenizer.encode_batch(texts)]


def pad_id(tokenizer: Any) -> int:
    for token in (PAD, "<pad>", "<PAD>"):
        found = tokenizer.token_to_id(token)
        if found is not None:
            return int(found)
    return 0


def _freeze(net: TextNet, n_layers: int) -> None:
    if n_layers == 0:
        return
    if n_layers > len(net.layers) - 1:
        raise ConfigError(
            f"--freeze-layers {n_layers}: this model has {len(net.layers) - 1} layers above its embeddings; "
            "freeze at most that many (the head always trains)"
        )
    for group in net.layers[: n_layers + 1]:  # the embeddings and n layers above them
        for param in group:
            param.requires_grad_(False)


def prepare(dataset: DatasetInfo, cfg: RunConfig, device: str, run_dir: Path | None = None) -> TaskData:
    torch.manual_seed(cfg.seed)
    try:
        frame = pd.read_parquet(Path(dataset.path) / "data.parquet")
    except Exception as exc:
        raise DatasetError(
            f"dataset {dataset.id}'s texts cannot be read ({exc}); add the file again"
        ) from exc
    classes: list[str] = dataset.schema["classes"]
    lookup = {c: i for i, c in enumerate(classes)}
    y = frame["label"].map(lookup).to_numpy(np.int64)
    texts = frame["text"].tolist()
    train_idx, val_idx = split_indices(y, stratify=True, val_fraction=cfg.val_fraction, seed=cfg.seed)

    spec = get_model(cfg.model, cfg.task)
    net: TextNet = spec.build(len(classes), cfg, [texts[i] for i in train_idx])
    saved = run_dir / TOKENIZER_FILE if run_dir is not None else None
    if saved is not None and saved.exists():
        # The tokenizer this run learnt before (WordPiece training is not deterministic),
        # so a resumed run and its certificate see the ids its weights were trained on.
        from tokenizers import Tokenizer

        from core.models.text import prepare_tokenizer, rebuild

        net.tokenizer = prepare_tokenizer(Tokenizer.from_file(str(saved)))
        if net.arch["kind"] == "text-cnn":
            net.arch["vocab"] = net.tokenizer.get_vocab_size()
            net.module = rebuild(net.arch)
            net.layers = [list(net.module.get_submodule("embed").parameters())]
    elif saved is not None:
        saved.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(saved, net.tokenizer.to_str())
    if cfg.init_from_run is not None:
        init_from_run(
            net.module,
            cfg.init_from_run,
            lambda c: (
                None
                if c.get("model") == cfg.model != "text-cnn"
                else "cannot seed this run: fine-tune the same transformer model"
            ),
        )
    _freeze(net, cfg.freeze_layers)
    max_length = choose_max_length(cfg, float(dataset.schema.get("p95_tokens", 128)), net.max_positions)
    ids = encode(net.tokenizer, texts, max_length)
    pad = pad_id(net.tokenizer)
    collate = _Collate(pad)
    val_order = sorted(val_idx.tolist(), key=lambda i: len(ids[i]))

    generator = torch.Generator()
    train_set = TokenDataset([ids[i] for i in train_idx], y[train_idx])
    cuda = device.startswith("cuda")
    train_loader = DataLoader(
        train_set,
        batch_size=cfg.batch_size,
        sampler=RandomSampler(train_set, generator=generator),
        drop_last=len(train_idx) > cfg.batch_size,
        collate_fn=collate,
        pin_memory=cuda,
    )
    val_loader = DataLoader(
        TokenDataset([ids[i] for i in val_order], y[val_order]),
        batch_size=max(cfg.batch_size, 32),
        shuffle=False,
        collate_fn=collate,
        pin_memory=cuda,
    )
    # The new head learns at the run's rate, a pretrained body at a fraction of it.
    head_ids = {id(p) for p in net.head}
    body = [p for p in net.module.parameters() if p.requires_grad and id(p) not in head_ids]
    head = [p for p in net.head if p.requires_grad]
    mult = cfg.backbone_lr_mult if cfg.backbone_lr_mult is not None else (0.1 if net.pretrained else 1.0)
    lengths = np.array([len(ids[i]) for i in train_idx])
    print(
        f"tokens per text: median {int(np.median(lengths))}, max length {max_length} "
        f"({int((lengths >= max_length).sum())} training texts cut)",
        flush=True,
    )
    return TaskData(
        model=net.module,
        train=DeviceLoader(train_loader, device, generator, cfg.seed),
        val=DeviceLoader(val_loader, device),
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
            "max_length": max_length,
            "pad_id": pad,
            "pretrained": net.pretrained,
            "arch": arch_json(net.arch),
            "tokenizer": net.tokenizer.to_str(),
        },
        param_groups=[
            g for g in ({"params": body, "lr_mult": mult}, {"params": head, "lr_mult": 1.0}) if g["params"]
        ],
        **_head_first(net, cfg, dataset, train_set, collate, device, max_length, train_idx),
    )


def _head_first(
    net: TextNet,
    cfg: RunConfig,
    dataset: DatasetInfo,
    train_set: TokenDataset,
    collate: Any,
    device: str,
    max_length: int,
    train_idx: np.ndarray,
) -> dict[str, Any]:
    """A pretrained transformer's classification layer and the plain training split, for the
    loop to fit that layer on the frozen pooled features first (cfg.head_first)."""
    head = getattr(getattr(net.module, "hf", None), "classifier", None)
    if not (cfg.head_first and net.pretrained and isinstance(head, torch.nn.Linear)):
        return {}
    loader = DataLoader(train_set, batch_size=max(cfg.batch_size, 32), shuffle=False, collate_fn=collate)
    key = features_key(dataset, cfg, max_length, train_idx)
    return {"head": head, "plain_train": DeviceLoader(loader, device), "features_key": key}


def tokenizer_metadata(extra: dict[str, Any]) -> dict[str, Any]:
    return {"file": TOKENIZER_FILE, "max_length": extra["max_length"], "pad_id": extra["pad_id"]}


def export(data: TaskData, cfg: RunConfig, dataset: DatasetInfo, path: Path, run_id: int) -> ExportCheck:
    """model.onnx (ids and mask in, probabilities out) and tokenizer.json beside it."""
    assert isinstance(data.val, DeviceLoader)
    val_set = data.val.loader.dataset
    assert isinstance(val_set, TokenDataset)
    extra = data.extra
    atomic.write_text(path.parent / TOKENIZER_FILE, extra["tokenizer"])
    wrapper = Probabilities(data.model.to("cpu")).eval()
    spec = [
        {"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"]},
        {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "sequence"]},
    ]
    metadata = export_metadata(
        cfg,
        dataset,
        run_id,
        spec,
        (
            f"tokenize with {TOKENIZER_FILE} beside this file (cut at {extra['max_length']} tokens), "
            f"pad each batch on the right with id {extra['pad_id']}, attention_mask 1 for real tokens"
        ),
        tokenizer=tokenizer_metadata(extra),
    )
    example = tuple(
        torch.from_numpy(x) for x in pad_batch([np.arange(5, 12), np.arange(5, 9)], extra["pad_id"])
    )
    export_onnx(
        wrapper,
        example,
        path,
        input_names=["input_ids", "attention_mask"],
        output_name="probabilities",
        metadata=metadata,
        sequence=True,
    )
    arch = json.loads(extra["arch"])
    config = arch.get("config", {})
    if arch["kind"] == "hf" and config.get("model_type") in FUSED_MODEL_TYPES:
        fused = fuse_transformer(
            path, num_heads=int(config["num_attention_heads"]), hidden_size=int(config["hidden_size"])
        )
        print(f"fused for ONNX Runtime: {', '.join(f'{n} {k}' for k, n in fused.items())}", flush=True)
    # Parity with heavy padding: every validation text padded to the longest one.
    n = min(len(val_set), MAX_PARITY_TEXTS)
    picked = [val_set.ids[i] for i in np.linspace(0, len(val_set) - 1, n).astype(int)]
    ids, mask = pad_batch(picked, extra["pad_id"])
    return check_parity(path, wrapper, (ids, mask), classification=True, cfg=ExportConfig(batch_size=32))


def reference(data: TaskData, cfg: RunConfig, dataset: DatasetInfo) -> Reference:
    assert isinstance(data.val, DeviceLoader)
    val_set = data.val.loader.dataset
    assert isinstance(val_set, TokenDataset)
    ids, mask = pad_batch(val_set.ids, data.extra["pad_id"])
    module = Probabilities(data.model.to("cpu")).eval()
    # No calibration samples: int8 is dynamic for every text model. The text CNN's weights are
    # mostly its embedding, which static quantisation leaves float (it comes before the first
    # convolution): its static file came out larger than fp32.
    return Reference(module, (ids, mask), val_set.labels.astype(np.int64), classification=True)
