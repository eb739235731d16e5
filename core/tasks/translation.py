"""Translation: an encoder-decoder (Marian) trained on pairs of sentences.

The module the loop trains takes the source's token ids and mask and the decoder's input and
target tokens (the start token, then the target, then the end); the loss counts the target's
tokens and the end. In evaluation it also translates each source greedily with the very modules
the export writes (core.models.translation.encoder_of and step_of), so the validation
scores are the exported model's, and the export check compares ONNX Runtime's translations
with those.

Metrics: val_bleu (main, higher is better) and val_chrf, corpus-level, from sacrebleu with its
default settings (13a tokenisation, cased); val_loss per token. The run report also scores the
sources copied unchanged: a model must beat that to have learnt anything.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, RandomSampler

from core.config import RunConfig
from core.errors import ConfigError, DatasetError
from core.models import get_model
from core.tasks import (
    Adaptable,
    DeviceLoader,
    ExportCheck,
    Reference,
    TaskData,
    decode_ids,
    sequence_loss,
    split_indices,
)
from db.queries import DatasetInfo

TASKS: tuple[str, ...] = ("translation",)
IGNORE = -100
SAMPLE_PAIRS = 3  # validation sources translated before training and after each epoch
HARDEST = 10  # validation pairs the run report lists, the lowest chrF first
SCORER = "sacrebleu 2.6: corpus BLEU (13a tokens, cased) and chrF (character 6-grams)"


def scores(references: list[str], hypotheses: list[str]) -> dict[str, float]:
    """Corpus BLEU and chrF (0-100)."""
    import sacrebleu

    if not references:
        return {"bleu": math.nan, "chrf": math.nan}
    return {
        "bleu": float(sacrebleu.corpus_bleu(hypotheses, [references]).score),
        "chrf": float(sacrebleu.corpus_chrf(hypotheses, [references]).score),
    }


def sentence_chrf(reference: str, hypothesis: str) -> float:
    import sacrebleu

    return float(sacrebleu.sentence_chrf(hypothesis, [reference]).score)


class Collate:
    """Sources padded with the pad token (mask 0), decoder inputs with the pad token, targets
    with IGNORE; the target the loop counts samples by is each pair's number of learnt tokens."""

    def __init__(self, pad: int, start: int) -> None:
        self.pad, self.start = pad, start

    def __call__(
        self, batch: list[tuple[list[int], list[int]]]
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        width = max(len(s) for s, _ in batch)
        length = max(len(t) for _, t in batch)
        source = torch.full((len(batch), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        inputs = torch.full((len(batch), length), self.pad, dtype=torch.long)
        labels = torch.full((len(batch), length), IGNORE, dtype=torch.long)
        for row, (src, tgt) in enumerate(batch):
            source[row, : len(src)] = torch.tensor(src)
            mask[row, : len(src)] = 1
            inputs[row, : len(tgt)] = torch.tensor([self.start, *tgt[:-1]])
            labels[row, : len(tgt)] = torch.tensor(tgt)
        return (source, mask, inputs, labels), (labels != IGNORE).sum(1).float()


class TranslationLoss(Adaptable):
    """(source ids, source mask, decoder inputs, targets) -> [batch, 2 + max_tokens]: each
    pair's summed negative log-likelihood of its target tokens, their count, then (in
    evaluation) its greedy translation's token ids, -1 after the end. Its checkpoints keep the
    tied embeddings once, or with LoRA (`adapters_only`) the adapters alone."""

    def __init__(
        self, model: Any, tokenizer: Any, smoothing: float = 0.0, adapters_only: bool = False
    ) -> None:
        super().__init__()
        self.model = model
        self.adapters_only = adapters_only
        self.tokenizer = tokenizer
        self.smoothing = smoothing  # label smoothing of the training loss (not of val_loss)
        self.start = int(model.config.decoder_start_token_id)
        self.end = int(model.config.eos_token_id)
        self.suppress = [int(model.config.pad_token_id)]
        self.max_tokens = 64  # set by prepare from the longest validation target

    def forward(
        self, source: torch.Tensor, mask: torch.Tensor, inputs: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        logits = self.model(input_ids=source, attention_mask=mask, decoder_input_ids=inputs).logits.float()
        flat = logits.reshape(-1, logits.shape[-1])
        nll = F.cross_entropy(flat, labels.reshape(-1), ignore_index=IGNORE, reduction="none").view(
            labels.shape
        )
        if self.training and self.smoothing:
            smooth = -torch.log_softmax(flat, dim=-1).mean(-1).view(labels.shape) * (labels != IGNORE)
            nll = (1 - self.smoothing) * nll + self.smoothing * smooth
        found = torch.stack([nll.sum(1), (labels != IGNORE).sum(1).to(nll.dtype)], dim=1)
        if self.training:
            return found
        return torch.cat([found, self.translate(source, mask).to(found.dtype)], dim=1)

    @torch.no_grad()
    def translate(self, source: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Greedy token ids [batch, max_tokens] (-1 after the end) from the export's modules."""
        from core.models.seq2seq import greedy
        from core.models.translation import encoder_of, step_of

        cross = encoder_of(self.model)(source, mask)
        step = step_of(self.model)
        return greedy(step, cross, [self.start], self.end, self.max_tokens, self.suppress, extra=(mask,))


def translations(out: torch.Tensor, tokenizer: Any) -> list[str]:
    """The decoded greedy translations of TranslationLoss's evaluation outputs."""
    return decode_ids(out[:, 2:], tokenizer)


def build(cfg: RunConfig, train_texts: list[str], run_dir: Path | None) -> Any:
    """The run's model and tokenizer. A tokenizer learnt from scratch is kept in the run's
    folder, so a resumed attempt reads the same one."""
    from core.models.translation import load_tokenizer

    saved = run_dir / "tokenizer.json" if run_dir is not None else None
    tokenizer = load_tokenizer(str(saved)) if saved is not None and saved.exists() else None
    net = get_model(cfg.model, cfg.task).build(cfg, train_texts, tokenizer)
    if saved is not None and net.source == "scratch" and not saved.exists():
        saved.parent.mkdir(parents=True, exist_ok=True)
        net.tokenizer.backend_tokenizer.save(str(saved))
    return net


def prepare(dataset: DatasetInfo, cfg: RunConfig, device: str, run_dir: Path | None = None) -> TaskData:
    from core.data.translation import load

    torch.manual_seed(cfg.seed)
    sources, targets = load(Path(dataset.path))
    if len(sources) < 4:
        raise DatasetError(f"dataset {dataset.id} has {len(sources)} pairs; a run needs at least 4")
    train_idx, val_idx = split_indices(
        np.zeros(len(sources)), stratify=False, val_fraction=cfg.val_fraction, seed=cfg.seed
    )
    train_rows, val_rows = [int(i) for i in train_idx], [int(i) for i in val_idx]
    net = build(cfg, [sources[i] for i in train_rows] + [targets[i] for i in train_rows], run_dir)
    model, tokenizer = net.module, net.tokenizer
    lora = cfg.finetune == "lora"
    if lora:
        from core.models.seq2seq import add_adapters

        if net.source == "scratch":
            raise ConfigError(
                "LoRA adapts pretrained weights and marian-small starts from scratch; use --finetune full"
            )
        add_adapters(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets)
    from core.models.seq2seq import shape_of

    positions = shape_of(model.config)["positions"]
    limit = cfg.max_length or positions
    if limit > positions:
        raise ConfigError(f"--max-length {limit} is over the model's {positions} positions")
    src_ids = [_cut(list(x), limit) for x in tokenizer(sources)["input_ids"]]
    tgt_ids = [_cut(list(x), limit) for x in tokenizer(text_target=targets)["input_ids"]]
    module = TranslationLoss(
        model, tokenizer, smoothing=0.1 if net.source == "scratch" else 0.0, adapters_only=lora
    )
    longest = max(len(tgt_ids[i]) for i in val_rows)
    module.max_tokens = min(positions, int(longest * 1.5) + 8)
    collate = Collate(int(model.config.pad_token_id), module.start)
    cuda = device.startswith("cuda")
    generator = torch.Generator()
    train_set = [(src_ids[i], tgt_ids[i]) for i in train_rows]
    train_loader: DataLoader[Any] = DataLoader(
        train_set,  # type: ignore[arg-type]
        batch_size=cfg.batch_size,
        sampler=RandomSampler(train_set, generator=generator),
        collate_fn=collate,
        pin_memory=cuda,
    )
    val_set = [(src_ids[i], tgt_ids[i]) for i in val_rows]
    val_loader: DataLoader[Any] = DataLoader(
        val_set,  # type: ignore[arg-type]
        batch_size=cfg.batch_size,
        shuffle=False,
        collate_fn=collate,
    )
    val_sources = [sources[i] for i in val_rows]
    references = [targets[i] for i in val_rows]

    def evaluate(out: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        found = scores(references, translations(out, tokenizer))
        return {"val_bleu": found["bleu"], "val_chrf": found["chrf"]}

    def samples() -> list[dict[str, str]]:
        shown = list(range(min(SAMPLE_PAIRS, len(val_rows))))
        (source, mask, _inputs, _labels), _ = collate([val_set[i] for i in shown])
        was = module.training
        module.eval()
        where = next(module.parameters()).device
        found = decode_ids(module.translate(source.to(where), mask.to(where)).cpu(), tokenizer)
        module.train(was)
        return [{"prompt": val_sources[i], "expected": references[i], "answer": found[i]} for i in shown]

    trained = [p for p in model.parameters() if p.requires_grad]  # sinusoidal positions stay fixed
    return TaskData(
        model=module,
        train=DeviceLoader(train_loader, device, generator, cfg.seed),
        val=DeviceLoader(val_loader, device),
        n_train=len(train_rows),
        n_val=len(val_rows),
        loss_fn=sequence_loss,
        evaluate=evaluate,
        main_metric="val_bleu",
        mode="max",
        extra={
            "task": cfg.task,
            "arch": json.dumps({"source": net.source, "finetune": cfg.finetune}),
            "val_rows": json.dumps(val_rows),
            "scorer": SCORER,
        },
        param_groups=[{"params": trained, "lr_mult": 1.0}],
        samples=samples,
        report=lambda out, y: translation_report(out, val_sources, references, tokenizer),
    )


def _cut(ids: list[int], limit: int) -> list[int]:
    """At most `limit` tokens, the end token kept last."""
    return ids if len(ids) <= limit else [*ids[: limit - 1], ids[-1]]


def translation_report(
    out: torch.Tensor, val_sources: list[str], references: list[str], tokenizer: Any
) -> dict[str, Any]:
    """The best model's translations of the validation sources: BLEU and chrF beside the
    sources copied unchanged, and the pairs of lowest chrF beside their references."""
    found = translations(out, tokenizer)
    per_pair = [sentence_chrf(r, h) for r, h in zip(references, found, strict=True)]
    order = sorted(range(len(found)), key=lambda i: per_pair[i])
    copied = scores(references, val_sources)
    return {
        "kind": "translation",
        "pairs": len(found),
        "scorer": SCORER,
        **scores(references, found),
        "copy_bleu": copied["bleu"],
        "copy_chrf": copied["chrf"],
        "hardest": [
            {
                "source": val_sources[i],
                "reference": references[i],
                "translation": found[i],
                "chrf": per_pair[i],
            }
            for i in order[:HARDEST]
        ],
    }


def export(data: TaskData, cfg: RunConfig, dataset: DatasetInfo, path: Path, run_id: int) -> ExportCheck:
    """The model as model.onnx and decoder.onnx (core.export.export_translator), checked on the
    validation pairs: the share of sources whose ONNX Runtime translation has exactly PyTorch's
    tokens, and the largest difference of the encoder's outputs."""
    from core.export import export_translator
    from core.models.translation import encoder_of
    from core.runtime import Translator
    from core.tasks import export_metadata

    module = data.model
    assert isinstance(module, TranslationLoss)
    module.to("cpu").eval()
    meta = export_metadata(
        cfg,
        dataset,
        run_id,
        [{"name": "input_ids"}, {"name": "attention_mask"}],
        "text to token ids with tokenizer.json (the end token appended); decode with decoder.onnx "
        "(ascent.translation)",
        output="cross",
    )
    model = module.merged()
    export_translator(model, module.tokenizer, path, meta)
    translator = Translator(path)
    encode = encoder_of(model).eval()
    same = total = 0
    largest = 0.0
    for (source, mask, _inputs, _labels), _ in data.val:
        assert source is not None and mask is not None
        source, mask = source.cpu(), mask.cpu()
        with torch.no_grad():
            theirs = [t.numpy() for t in encode(source, mask)]
        ours = translator.encoder.run(None, {"input_ids": source.numpy(), "attention_mask": mask.numpy()})
        largest = max(largest, *(float(np.abs(a - b).max()) for a, b in zip(ours, theirs, strict=True)))
        expected = module.translate(source, mask).tolist()
        got = translator.tokens(source.numpy(), mask.numpy(), module.max_tokens)
        for want, have in zip(expected, got, strict=True):
            same += [t for t in want if t >= 0] == have
            total += 1
    return ExportCheck(
        path=str(path),
        max_abs_diff=largest,
        top1_agreement=same / total if total else 1.0,
        n_samples=total,
        provider=translator.provider,
        bytes=sum(f.stat().st_size for f in (path, path.with_name("decoder.onnx"))),
        agreement="translation_agreement",
    )


def reference(data: TaskData, cfg: RunConfig, dataset: DatasetInfo) -> Reference:
    """The certificate's view of the run: the validation sources translated greedily by
    PyTorch's graphs (the export's modules) or a variant's, scored by BLEU."""
    from core.data.translation import load
    from core.export import translator_settings
    from core.models.seq2seq import TorchGraph, shape_of
    from core.models.translation import encoder_of, step_of
    from core.runtime import cache_names
    from core.tasks import Seq2SeqCheck

    module = data.model
    assert isinstance(module, TranslationLoss)
    module.to("cpu").eval()
    model = module.merged()
    _, targets = load(Path(dataset.path))
    references = [targets[i] for i in json.loads(data.extra["val_rows"])]
    layers = shape_of(model.config)["layers"]
    batches: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = []
    for (source, mask, _inputs, _labels), _ in data.val:
        assert source is not None and mask is not None
        ids, allowed = source.cpu().numpy(), mask.cpu().numpy()
        batches.append(({"input_ids": ids, "attention_mask": allowed}, {"source_mask": allowed}))
    check = Seq2SeqCheck(
        settings=translator_settings(model.config),
        encoder=TorchGraph(encoder_of(model), ["input_ids", "attention_mask"]),
        decoder=TorchGraph(step_of(model), ["input_ids", *cache_names(layers), "source_mask"]),
        batches=batches,
        max_tokens=module.max_tokens,
        texts=lambda ids: [module.tokenizer.decode(t, skip_special_tokens=True).strip() for t in ids],
        score=lambda texts: ("bleu", scores(references, texts)["bleu"]),
        unit="sentence",
    )
    return Reference(
        module=module,
        inputs=(),
        targets=np.zeros(0),
        classification=False,
        agreement="translation_agreement",
        seq2seq=check,
    )
