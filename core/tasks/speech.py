"""Speech recognition: Whisper fine-tuned on clips with their transcripts.

The module the loop trains takes the raw 16 kHz waves (Whisper's log-mel features are computed
inside, as the exported file computes them) and the decoder's input and target tokens: the
prompt (start of transcript, no timestamps), the transcript, the end token; the loss counts the
transcript's tokens and the end. In evaluation it also transcribes each clip greedily with the
very modules the export writes (core.models.speech.WhisperEncode and whisper_step), so the
validation word error rate is the exported model's, and the export check compares ONNX
Runtime's transcripts with those.

Metrics: val_wer (main, lower is better) and val_cer, both after transformers' basic text
normaliser (lower case, punctuation and symbols removed), computed by jiwer; val_loss per token.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, RandomSampler

from core.config import RunConfig
from core.errors import DatasetError
from core.models import get_model
from core.tasks import (
    Adaptable,
    DeviceLoader,
    ExportCheck,
    Reference,
    TaskData,
    decode_ids,
    read_index,
    sequence_loss,
    split_indices,
)
from db.queries import DatasetInfo

TASKS: tuple[str, ...] = ("speech-recognition",)
IGNORE = -100
SAMPLE_CLIPS = 3  # validation clips transcribed before training and after each epoch
NORMALISER = "transformers' BasicTextNormalizer: lower case, punctuation and symbols removed"


def normalise(text: str) -> str:
    from transformers.models.whisper.english_normalizer import BasicTextNormalizer

    return " ".join(BasicTextNormalizer()(text).split())


def error_rates(references: list[str], hypotheses: list[str]) -> dict[str, float]:
    """Word and character error rates after normalising both sides (an empty reference after
    normalising is left out)."""
    import jiwer

    pairs = [(normalise(r), normalise(h)) for r, h in zip(references, hypotheses, strict=True)]
    pairs = [(r, h) for r, h in pairs if r]
    if not pairs:
        return {"wer": math.nan, "cer": math.nan}
    refs, hyps = [r for r, _ in pairs], [h for _, h in pairs]
    return {"wer": float(jiwer.wer(refs, hyps)), "cer": float(jiwer.cer(refs, hyps))}


class Clips(Dataset[tuple[np.ndarray, list[int]]]):
    """(16 kHz mono wave, token sequence: prompt, transcript, end) per clip, read when asked."""

    def __init__(self, paths: list[Path], sequences: list[list[int]]) -> None:
        self.paths, self.sequences = paths, sequences

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[np.ndarray, list[int]]:
        from core.models.speech import SAMPLE_RATE
        from core.runtime import load_audio, to_mono

        data, rate = load_audio(self.paths[i])
        return to_mono(data, rate, SAMPLE_RATE), self.sequences[i]


class Collate:
    """Waves padded with silence to the longest (the model pads every wave to its 30-s window
    anyway), decoder inputs padded with the end token, targets with IGNORE (the prompt's own
    tokens too); the target the loop counts samples by is each clip's number of learnt tokens."""

    def __init__(self, end: int, prompt: int) -> None:
        self.end, self.prompt = end, prompt

    def __call__(
        self, batch: list[tuple[np.ndarray, list[int]]]
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        waves = torch.zeros(len(batch), max(len(w) for w, _ in batch))
        width = max(len(s) for _, s in batch) - 1
        inputs = torch.full((len(batch), width), self.end, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
        for row, (wave, seq) in enumerate(batch):
            waves[row, : len(wave)] = torch.from_numpy(wave)
            inputs[row, : len(seq) - 1] = torch.tensor(seq[:-1])
            labels[row, : len(seq) - 1] = torch.tensor(seq[1:])
            labels[row, : self.prompt - 1] = IGNORE  # the prompt is given, not learnt
        return (waves, inputs, labels), (labels != IGNORE).sum(1).float()


class SpeechLoss(Adaptable):
    """(waves, decoder inputs, targets) -> [batch, 2 + max_tokens]: each clip's summed negative
    log-likelihood of its learnt tokens, their count, then (in evaluation) its greedy transcript's
    token ids, -1 after the end. Its checkpoints keep the tied output layer once, or with LoRA
    (`adapters_only`) the adapters alone."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        prompt: list[int],
        end: int,
        suppress: list[int],
        first: list[int],
        adapters_only: bool = False,
    ) -> None:
        super().__init__()
        from core.models.speech import WhisperFeatures

        self.model = model
        self.adapters_only = adapters_only
        self.tokenizer = tokenizer  # the transformers tokenizer the transcripts were encoded with
        self.features = WhisperFeatures(int(model.config.num_mel_bins))
        self.prompt, self.end = prompt, end
        self.suppress, self.first = suppress, first
        self.max_tokens = 64  # set by prepare from the longest validation transcript

    def forward(self, waves: torch.Tensor, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self.model(input_features=self.features(waves), decoder_input_ids=inputs).logits.float()
        nll = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE, reduction="none"
        ).view(labels.shape)
        scores = torch.stack([nll.sum(1), (labels != IGNORE).sum(1).to(nll.dtype)], dim=1)
        if self.training:
            return scores
        return torch.cat([scores, self.transcribe(waves).to(scores.dtype)], dim=1)

    @torch.no_grad()
    def transcribe(self, waves: torch.Tensor) -> torch.Tensor:
        """Greedy token ids [batch, max_tokens] (-1 after the end) from the export's modules."""
        from core.models.seq2seq import greedy
        from core.models.speech import WhisperEncode, whisper_step

        cross = WhisperEncode(self.model)(waves)
        step = whisper_step(self.model)
        return greedy(step, cross, self.prompt, self.end, self.max_tokens, self.suppress, self.first)


def transcripts(out: torch.Tensor, tokenizer: Any) -> list[str]:
    """The decoded greedy transcripts of SpeechLoss's evaluation outputs."""
    return decode_ids(out[:, 2:], tokenizer)


def load_clips(dataset: DatasetInfo) -> tuple[list[Path], list[str]]:
    index = read_index(dataset, "clips")
    root = Path(dataset.path) / "clips"
    return [root / p for p in index["path"]], [str(t) for t in index["transcript"]]


def prepare(dataset: DatasetInfo, cfg: RunConfig, device: str, run_dir: Path | None = None) -> TaskData:
    from core.models.speech import whisper_prompt

    torch.manual_seed(cfg.seed)
    paths, texts = load_clips(dataset)
    if len(paths) < 2:
        raise DatasetError(f"dataset {dataset.id} has {len(paths)} clip; a run needs at least 2")
    net = get_model(cfg.model, cfg.task).build(cfg)
    model, tokenizer = net.module, net.processor.tokenizer
    lora = cfg.finetune == "lora"
    if lora:
        from core.models.seq2seq import add_adapters

        add_adapters(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets)
    else:
        for p in model.parameters():
            p.requires_grad_(True)
    prompt = whisper_prompt(model)
    end = int(model.config.eos_token_id)
    positions = int(model.config.max_target_positions)
    sequences = []
    for text in texts:
        ids = list(tokenizer(" " + text, add_special_tokens=False)["input_ids"])
        sequences.append([*prompt, *ids[: positions - len(prompt) - 1], end])
    train_idx, val_idx = split_indices(
        np.zeros(len(paths)), stratify=False, val_fraction=cfg.val_fraction, seed=cfg.seed
    )
    train_rows, val_rows = [int(i) for i in train_idx], [int(i) for i in val_idx]
    module = SpeechLoss(
        model,
        tokenizer,
        prompt,
        end,
        [int(t) for t in model.config.suppress_tokens or []],
        [int(t) for t in model.config.begin_suppress_tokens or []],
        adapters_only=lora,
    )
    longest = max(len(sequences[i]) for i in val_rows) - len(prompt)
    module.max_tokens = min(positions - len(prompt), int(longest * 1.5) + 8)
    collate = Collate(end, len(prompt))
    cuda = device.startswith("cuda")
    generator = torch.Generator()
    train_set = Clips([paths[i] for i in train_rows], [sequences[i] for i in train_rows])
    train_loader = DataLoader(
        train_set,
        batch_size=cfg.batch_size,
        sampler=RandomSampler(train_set, generator=generator),
        collate_fn=collate,
        pin_memory=cuda,
    )
    val_set = Clips([paths[i] for i in val_rows], [sequences[i] for i in val_rows])
    val_loader = DataLoader(val_set, batch_size=cfg.batch_size, shuffle=False, collate_fn=collate)
    references = [texts[i] for i in val_rows]
    names = [paths[i].name for i in val_rows]

    def evaluate(out: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        rates = error_rates(references, transcripts(out, tokenizer))
        return {"val_wer": rates["wer"], "val_cer": rates["cer"]}

    def samples() -> list[dict[str, str]]:
        shown = list(range(min(SAMPLE_CLIPS, len(val_rows))))
        waves, _inputs, _labels = collate([val_set[i] for i in shown])[0]
        was = module.training
        module.eval()
        found = decode_ids(module.transcribe(waves.to(next(module.parameters()).device)).cpu(), tokenizer)
        module.train(was)
        return [{"prompt": names[i], "expected": references[i], "answer": found[i]} for i in shown]

    return TaskData(
        model=module,
        train=DeviceLoader(train_loader, device, generator, cfg.seed),
        val=DeviceLoader(val_loader, device),
        n_train=len(train_rows),
        n_val=len(val_rows),
        loss_fn=sequence_loss,
        evaluate=evaluate,
        main_metric="val_wer",
        mode="min",
        extra={
            "task": cfg.task,
            "arch": json.dumps({"source": net.source, "finetune": cfg.finetune}),
            "val_rows": json.dumps(val_rows),
            "normaliser": NORMALISER,
        },
        param_groups=[{"params": [p for p in module.model.parameters() if p.requires_grad], "lr_mult": 1.0}],
        samples=samples,
        report=lambda out, y: speech_report(out, references, names, tokenizer),
    )


HARDEST = 10  # validation clips the run report lists, the most errors first


def speech_report(
    out: torch.Tensor, references: list[str], names: list[str], tokenizer: Any
) -> dict[str, Any]:
    """The best model's transcripts of the validation clips: error rates, and the clips with
    the most word errors beside their references."""
    heard = transcripts(out, tokenizer)
    per_clip = [error_rates([r], [h])["wer"] for r, h in zip(references, heard, strict=True)]
    order = sorted(range(len(heard)), key=lambda i: -(per_clip[i] if not math.isnan(per_clip[i]) else -1))
    return {
        "kind": "speech",
        "clips": len(heard),
        "normaliser": NORMALISER,
        **error_rates(references, heard),
        "hardest": [
            {"clip": names[i], "reference": references[i], "transcript": heard[i], "wer": per_clip[i]}
            for i in order[:HARDEST]
        ],
    }


def export(data: TaskData, cfg: RunConfig, dataset: DatasetInfo, path: Path, run_id: int) -> ExportCheck:
    """The fine-tuned Whisper as model.onnx and decoder.onnx (core.export.export_transcriber),
    checked on the validation clips: the share of clips whose ONNX Runtime transcript has
    exactly PyTorch's tokens, and the largest difference of the encoder's outputs."""
    from core.export import export_transcriber
    from core.models.speech import WhisperEncode
    from core.runtime import Transcriber, greedy_transcripts
    from core.tasks import export_metadata

    module = data.model
    assert isinstance(module, SpeechLoss)
    module.to("cpu").eval()
    meta = export_metadata(
        cfg,
        dataset,
        run_id,
        [{"name": "wave", "sample_rate": 16_000}],
        "clips mixed to mono and resampled to 16 kHz, at most 30 s; decode with decoder.onnx (ascent.speech)",
        output="cross",
    )
    model = module.merged()
    export_transcriber(model, module.tokenizer, path, meta)
    transcriber = Transcriber(path)
    encode = WhisperEncode(model).eval()
    same = total = 0
    largest = 0.0
    for (batch, _inputs, _labels), _ in data.val:
        assert batch is not None
        waves = batch.cpu()
        with torch.no_grad():
            theirs = [t.numpy() for t in encode(waves)]
        ours = transcriber.encoder.run(None, {"wave": waves.numpy()})
        largest = max(largest, *(float(np.abs(a - b).max()) for a, b in zip(ours, theirs, strict=True)))
        expected = module.transcribe(waves).tolist()
        got, _, _ = greedy_transcripts(
            transcriber.encoder,
            transcriber.decoder,
            transcriber.settings,
            list(waves.numpy()),
            module.max_tokens,
        )
        for want, have in zip(expected, got, strict=True):
            same += [t for t in want if t >= 0] == have
            total += 1
    return ExportCheck(
        path=str(path),
        max_abs_diff=largest,
        top1_agreement=same / total if total else 1.0,
        n_samples=total,
        provider=transcriber.provider,
        bytes=sum(f.stat().st_size for f in (path, path.with_name("decoder.onnx"))),
        agreement="transcript_agreement",
    )


def reference(data: TaskData, cfg: RunConfig, dataset: DatasetInfo) -> Reference:
    """The certificate's view of the run: the validation clips transcribed greedily by PyTorch's
    graphs (the export's modules) or a variant's, scored by word error rate."""
    from core.export import transcriber_settings
    from core.models.seq2seq import TorchGraph
    from core.models.speech import WhisperEncode, whisper_step
    from core.runtime import cache_names
    from core.tasks import Seq2SeqCheck

    module = data.model
    assert isinstance(module, SpeechLoss)
    module.to("cpu").eval()
    model = module.merged()
    rows = json.loads(data.extra["val_rows"])
    index = read_index(dataset, "clips")
    references = [str(index["transcript"][i]) for i in rows]
    layers = int(model.config.decoder_layers)
    batches: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = []
    for (waves, _inputs, _labels), _ in data.val:
        assert waves is not None
        batches.append(({"wave": waves.cpu().numpy()}, {}))
    check = Seq2SeqCheck(
        settings=transcriber_settings(model),
        encoder=TorchGraph(WhisperEncode(model), ["wave"]),
        decoder=TorchGraph(whisper_step(model), ["input_ids", *cache_names(layers)]),
        batches=batches,
        max_tokens=module.max_tokens,
        texts=lambda ids: [module.tokenizer.decode(t, skip_special_tokens=True).strip() for t in ids],
        score=lambda texts: ("wer", error_rates(references, texts)["wer"]),
        seconds=[float(index["seconds"][i]) for i in rows],
        unit="clip",
    )
    return Reference(
        module=module,
        inputs=(),
        targets=np.zeros(0),
        classification=False,
        agreement="transcript_agreement",
        seq2seq=check,
    )
