"""Text generation: a causal language model fine-tuned on instructions, LoRA adapters by default.

Each example is a conversation rendered with the model's chat template (or a plain text); the
loss counts the assistant's tokens alone (the prompt is masked). The loop sees a module that
returns, per example, the summed negative log-likelihood of those tokens and their count, so
validation keeps two numbers a sample rather than the logits: val_loss is the mean per token and
val_perplexity its exponential. After each epoch the model answers a few fixed validation
prompts (greedy), stored with the run.

With LoRA the checkpoints hold the adapters alone (the base model is named in the run's config);
the export merges them into the base weights and writes one ONNX graph with a KV cache that
serves both the prompt (an empty cache) and each new token (core.runtime.Generator).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, RandomSampler

from core.config import RunConfig
from core.errors import ConfigError, DatasetError
from core.models import get_model
from core.tasks import DeviceLoader, ExportCheck, Reference, SavedOnce, TaskData, split_indices
from db.queries import DatasetInfo

TASKS: tuple[str, ...] = ("text-generation",)
IGNORE = -100  # label of a token the loss leaves out
SAMPLE_PROMPTS = 3  # validation prompts answered after each epoch
SAMPLE_TOKENS = 40  # tokens of each of those answers
CHECK_PROMPTS = 4  # validation prompts the export check continues greedily
CHECK_TOKENS = 24
CERTIFICATE_PROMPTS = 16  # validation prompts the certificate continues greedily
CERTIFICATE_TOKENS = 32
CERTIFICATE_EXAMPLES = 64  # validation examples the certificate measures perplexity on
MAX_DEFAULT_LENGTH = 512  # the context unless --max-length says otherwise
DEFAULT_CONTEXT = MAX_DEFAULT_LENGTH  # what a base model exported for the playground trained at
DEFAULT_MAX_NEW_TOKENS = 256


class CausalLoss(SavedOnce):
    """(input_ids, attention_mask, labels) -> [batch, 2]: the summed negative log-likelihood of
    each example's learnt tokens and their count.

    `state_dict` holds what training changes: the adapters alone with LoRA, every weight
    (a tied output layer once) in full fine-tuning; `load_state_dict` takes the same."""

    lm: Any  # a transformers causal LM, or the peft model around it

    def __init__(self, lm: nn.Module, adapters_only: bool, tokenizer: Any = None) -> None:
        super().__init__()
        self.lm = lm
        self.adapters_only = adapters_only
        self.tokenizer = tokenizer  # the transformers tokenizer the examples were encoded with
        # Token ids of validation prompts (the export check's and the certificate's) and
        # validation examples (ids, labels) for the certificate's perplexity.
        self.val_prompts: list[list[int]] = []
        self.val_examples: list[tuple[list[int], list[int]]] = []

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        logits = self.lm(input_ids=input_ids, attention_mask=attention_mask).logits
        shifted, target = logits[:, :-1].float(), labels[:, 1:]
        nll = F.cross_entropy(
            shifted.reshape(-1, shifted.shape[-1]), target.reshape(-1), ignore_index=IGNORE, reduction="none"
        ).view(target.shape)
        return torch.stack([nll.sum(1), (target != IGNORE).sum(1).to(nll.dtype)], dim=1)

    def _kept(self) -> set[str]:
        if self.adapters_only:
            return {f"lm.{n}" for n, p in self.lm.named_parameters() if p.requires_grad}
        return super()._kept()


def token_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood per learnt token of the batch.

    Over several processes each holds part of the batch, and DistributedDataParallel averages
    their gradients: each process divides by the whole batch's token count (summed over the
    processes) times their number, so the averaged gradient is exactly one process's on the
    whole batch however the tokens fall. Every process calls this for every batch (and on the
    gathered validation outputs, where the same formula gives the plain mean)."""
    import torch.distributed as dist

    tokens = out[:, 1].detach().sum()
    if dist.is_available() and dist.is_initialized():
        tokens = tokens.clone()
        dist.all_reduce(tokens)
        return out[:, 0].sum() * dist.get_world_size() / tokens.clamp(min=1.0)
    return out[:, 0].sum() / tokens.clamp(min=1.0)


def mean_nll(out: torch.Tensor) -> float:
    """Mean negative log-likelihood per learnt token of outputs held whole in this process."""
    return float(out[:, 0].sum() / out[:, 1].sum().clamp(min=1.0))


def perplexity(out: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    return {"val_perplexity": math.exp(min(mean_nll(out), 50.0))}


def encode(tokenizer: Any, item: Any) -> tuple[list[int], list[int]]:
    """Token ids and labels of one example: a conversation's assistant turns are learnt (the
    rest masked with IGNORE), a plain text's every token."""
    if isinstance(item, str):
        ids = list(tokenizer(item, add_special_tokens=True)["input_ids"])
        if tokenizer.eos_token_id is not None:
            ids.append(int(tokenizer.eos_token_id))
        return ids, list(ids)
    full = tokenizer.apply_chat_template(item, tokenize=False)
    spans = []
    for i, turn in enumerate(item):
        if turn["role"] != "assistant":
            continue
        before = (
            tokenizer.apply_chat_template(item[:i], tokenize=False, add_generation_prompt=True) if i else ""
        )
        upto = tokenizer.apply_chat_template(item[: i + 1], tokenize=False)
        if not full.startswith(upto) or not upto.startswith(before):
            raise DatasetError("the model's chat template renders a conversation differently turn by turn")
        spans.append((len(before), len(upto)))
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    labels = [
        token if any(lo <= start < hi for lo, hi in spans) else IGNORE
        for token, (start, _) in zip(ids, enc["offset_mapping"], strict=True)
    ]
    return ids, labels


def prompt_of(item: Any) -> tuple[list[dict[str, str]], str] | None:
    """A conversation up to its last assistant turn, and that turn (None for plain texts)."""
    if isinstance(item, str):
        return None
    last = max(i for i, t in enumerate(item) if t["role"] == "assistant")
    return item[:last], item[last]["content"]


class Encoded(Dataset[tuple[list[int], list[int]]]):
    def __init__(self, rows: list[tuple[list[int], list[int]]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[list[int], list[int]]:
        return self.rows[i]


class Collate:
    """Right-padded ids, attention mask and labels (padding is IGNORE); the target the loop
    counts samples by is each example's number of learnt tokens."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(
        self, batch: list[tuple[list[int], list[int]]]
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        width = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
        for row, (i, lab) in enumerate(batch):
            ids[row, : len(i)] = torch.tensor(i)
            mask[row, : len(i)] = 1
            labels[row, : len(lab)] = torch.tensor(lab)
        return (ids, mask, labels), (labels[:, 1:] != IGNORE).sum(1).float()


def load_examples(dataset: DatasetInfo) -> list[Any]:
    from core.data.instructions import load

    try:
        return load(Path(dataset.path))
    except Exception as exc:
        raise DatasetError(
            f"dataset {dataset.id}'s examples cannot be read ({exc}); add the file again"
        ) from exc


def _adapters(lm: nn.Module, cfg: RunConfig) -> nn.Module:
    """The model with LoRA adapters on the layers cfg names (peft); only they train."""
    from peft import LoraConfig, get_peft_model

    targets: str | list[str] = (
        "all-linear" if cfg.lora_targets == "all-linear" else cfg.lora_targets.split(",")
    )
    lora = LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha or 2 * cfg.lora_rank,
        lora_dropout=cfg.lora_dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(lm, lora)
    except ValueError as exc:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in lm.named_modules() if isinstance(m, nn.Linear)})
        raise ConfigError(
            f"no layer of the model is named {cfg.lora_targets}; its linear layers are: {', '.join(linear)}"
        ) from exc


def build(cfg: RunConfig) -> tuple[CausalLoss, Any, dict[str, Any]]:
    """The model to train (adapters on the base, or the whole base), its tokenizer, and what
    rebuilds it (stored in checkpoints)."""
    spec = get_model(cfg.model, cfg.task)
    net = spec.build(cfg)
    lm = net.module
    lora = cfg.finetune == "lora"
    if lora:
        lm = _adapters(lm, cfg)
    else:
        for p in lm.parameters():
            p.requires_grad_(True)
    arch = {"source": net.source, "finetune": cfg.finetune, "max_positions": net.max_positions}
    return CausalLoss(lm, adapters_only=lora, tokenizer=net.tokenizer), net.tokenizer, arch


def choose_max_length(cfg: RunConfig, longest: int, positions: int) -> int:
    if cfg.max_length is not None:
        return min(cfg.max_length, positions)
    return max(8, min(longest, MAX_DEFAULT_LENGTH, positions))


def prepare(dataset: DatasetInfo, cfg: RunConfig, device: str, run_dir: Path | None = None) -> TaskData:
    torch.manual_seed(cfg.seed)
    items = load_examples(dataset)
    train_idx, val_idx = split_indices(
        np.zeros(len(items)), stratify=False, val_fraction=cfg.val_fraction, seed=cfg.seed
    )
    model, tokenizer, arch = build(cfg)
    encoded = [encode(tokenizer, item) for item in items]
    lengths = np.array([len(ids) for ids, _ in encoded])
    max_length = choose_max_length(cfg, int(lengths.max()), arch["max_positions"])
    fits = lengths <= max_length
    if not fits[train_idx].any():
        raise ConfigError(
            f"every training example is over {max_length} tokens; raise --max-length (up to {arch['max_positions']})"
        )
    learnt = np.array([sum(1 for t in lab[1:] if t != IGNORE) for _, lab in encoded])
    train_rows = [i for i in train_idx.tolist() if fits[i] and learnt[i] > 0]
    val_rows = sorted((i for i in val_idx.tolist() if fits[i] and learnt[i] > 0), key=lambda i: lengths[i])
    if not val_rows:
        raise ConfigError(
            f"no validation example fits in {max_length} tokens; raise --max-length or --val-fraction"
        )
    print(
        f"tokens per example: median {int(np.median(lengths))}, longest {int(lengths.max())}; context "
        f"{max_length} ({int((~fits).sum())} examples over it left out); "
        f"{'LoRA' if cfg.finetune == 'lora' else 'full fine-tuning'}: "
        f"{sum(p.numel() for p in model.parameters() if p.requires_grad):,} of "
        f"{sum(p.numel() for p in model.parameters()):,} weights train",
        flush=True,
    )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    collate = Collate(int(pad))
    cuda = device.startswith("cuda")
    if cuda:
        model.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    generator = torch.Generator()
    train_set = Encoded([encoded[i] for i in train_rows])
    train_loader = DataLoader(
        train_set,
        batch_size=cfg.batch_size,
        sampler=RandomSampler(train_set, generator=generator),
        collate_fn=collate,
        pin_memory=cuda,
    )
    val_loader = DataLoader(
        Encoded([encoded[i] for i in val_rows]), batch_size=cfg.batch_size, shuffle=False, collate_fn=collate
    )
    prompts = [p for p in (prompt_of(items[i]) for i in val_rows[:SAMPLE_PROMPTS]) if p is not None]
    model.val_prompts = [_prompt_ids(tokenizer, items[i]) for i in val_rows[:CERTIFICATE_PROMPTS]]
    model.val_examples = [encoded[i] for i in val_rows[:CERTIFICATE_EXAMPLES]]
    return TaskData(
        model=model,
        train=DeviceLoader(train_loader, device, generator, cfg.seed),
        val=DeviceLoader(val_loader, device),
        n_train=len(train_rows),
        n_val=len(val_rows),
        loss_fn=token_loss,
        evaluate=perplexity,
        main_metric="val_loss",
        mode="min",
        extra={
            "task": cfg.task,
            "arch": json.dumps(arch),
            "max_length": max_length,
            "val_rows": json.dumps(val_rows),
        },
        param_groups=[{"params": [p for p in model.parameters() if p.requires_grad], "lr_mult": 1.0}],
        samples=(lambda: answers(model, tokenizer, prompts)) if prompts else None,
        report=lambda out, y: generation_report(out, [items[i] for i in val_rows]),
    )


HARDEST = 10  # validation examples the run report lists, the least well predicted first


def generation_report(out: torch.Tensor, items: list[Any]) -> dict[str, Any]:
    """The best model's loss per token on each validation example, and the hardest ones."""
    per_token = (out[:, 0] / out[:, 1].clamp(min=1.0)).cpu()
    hardest = []
    for i in per_token.argsort(descending=True)[:HARDEST].tolist():
        found = prompt_of(items[i])
        shown = {"prompt": found[0][-1]["content"], "expected": found[1]} if found else {"text": items[i]}
        hardest.append({**{k: v[:300] for k, v in shown.items()}, "loss": float(per_token[i])})
    return {
        "kind": "generation",
        "examples": len(items),
        "tokens": int(out[:, 1].sum()),
        "val_loss": mean_nll(out),
        "loss_per_example": [float(v) for v in per_token],
        "hardest": hardest,
    }


@torch.no_grad()
def answers(
    model: CausalLoss, tokenizer: Any, prompts: list[tuple[list[dict[str, str]], str]]
) -> list[dict[str, str]]:
    """The model's greedy answers to the prompts, beside the expected ones."""
    lm = model.lm
    was_training = lm.training
    lm.eval()
    device = next(lm.parameters()).device
    found = []
    for turns, expected in prompts:
        ids = tokenizer.apply_chat_template(
            turns, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        ids = {k: v.to(device) for k, v in dict(ids).items()}
        out = lm.generate(
            **ids,
            max_new_tokens=SAMPLE_TOKENS,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
        )
        text = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
        found.append({"prompt": turns[-1]["content"], "expected": expected, "answer": text.strip()})
    lm.train(was_training)
    return found


def merged(data: TaskData) -> nn.Module:
    """The trained causal LM on the CPU, adapters merged into its weights, in eval mode."""
    model = data.model
    assert isinstance(model, CausalLoss)
    lm = model.lm.to("cpu")
    if model.adapters_only:
        lm = lm.merge_and_unload()
        model.lm = lm
        model.adapters_only = False
    return lm.eval()


class Step(nn.Module):
    """One step of generation with a KV cache, the graph that is exported: (input_ids [B, S],
    attention_mask [B, P+S], past keys and values per layer [B, heads, P, dim]) -> (logits
    [B, S, vocab] in float32, the cache grown to P+S). An empty cache (P = 0) reads the prompt;
    then one token at a time. Positions come from the attention mask (left padding works)."""

    lm: Any

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm
        self.layers = int(self.lm.config.num_hidden_layers)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *past: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        from transformers.cache_utils import DynamicCache

        cache = DynamicCache(
            ddp_cache_data=[(past[2 * i], past[2 * i + 1]) for i in range(self.layers)], config=self.lm.config
        )
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, -input_ids.shape[1] :]
        out = self.lm(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
        )
        grown = [t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)]
        return (out.logits.float(), *grown)


def cache_shape(config: Any) -> tuple[int, int, int]:
    """(layers, key-value heads, head size) of a causal LM's cache."""
    heads = int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    dim = int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
    return int(config.num_hidden_layers), heads, dim


def io_names(layers: int) -> tuple[list[str], list[str]]:
    past = [f"past.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    return ["input_ids", "attention_mask", *past], ["logits", *present]


def generation_settings(tokenizer: Any, lm: nn.Module, max_length: int, positions: int) -> dict[str, Any]:
    """What a generator needs beside its graph: the chat template, the tokens that end an
    answer, padding, the context, and default sampling settings."""
    stops = {int(tokenizer.eos_token_id)} if tokenizer.eos_token_id is not None else set()
    configured = getattr(getattr(lm, "generation_config", None), "eos_token_id", None)
    for token in configured if isinstance(configured, list) else [configured]:
        if token is not None:
            stops.add(int(token))
    layers, heads, dim = cache_shape(lm.config)
    return {
        "chat_template": tokenizer.chat_template,
        "bos_token": tokenizer.bos_token or "",
        "eos_token": tokenizer.eos_token or "",
        "eos_token_ids": sorted(stops),
        "pad_token_id": int(
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(stops or {0})
        ),
        "context": positions,
        "trained_length": max_length,
        "cache": {"layers": layers, "heads": heads, "dim": dim},
        "max_new_tokens": DEFAULT_MAX_NEW_TOKENS,
        "temperature": 0.0,
        "top_p": 1.0,
    }


PREPROCESS = (
    "render the chat template, tokenize with tokenizer.json, then call the graph once with an "
    "empty cache and once a new token with the cache it returned (ascent.generation)"
)


def write_generator(lm: nn.Module, tokenizer: Any, path: Path, meta: dict[str, str], max_length: int) -> None:
    """`lm` (merged, on the CPU) as one ONNX graph with a KV cache at `path`, its tokenizer.json
    beside it, and `ascent.generation` added to the metadata `meta`."""
    from core import atomic
    from core.export import export_generator

    config: Any = getattr(lm, "config", None)
    layers, heads, dim = cache_shape(config)
    inputs, outputs = io_names(layers)
    positions = int(getattr(config, "max_position_embeddings", 2048))
    settings = generation_settings(tokenizer, lm, max_length, positions)
    meta = {
        **meta,
        "ascent.generation": json.dumps(settings),
        "ascent.tokenizer": json.dumps({"file": "tokenizer.json"}),
    }
    export_generator(
        Step(lm), (layers, heads, dim), path, input_names=inputs, output_names=outputs, metadata=meta
    )
    atomic.write_text(path.parent / "tokenizer.json", tokenizer.backend_tokenizer.to_str())


def export(data: TaskData, cfg: RunConfig, dataset: DatasetInfo, path: Path, run_id: int) -> ExportCheck:
    from core.runtime import Generator
    from core.tasks import export_metadata

    assert isinstance(data.model, CausalLoss)
    tokenizer, prompts = data.model.tokenizer, data.model.val_prompts[:CHECK_PROMPTS]
    lm = merged(data)
    layers = cache_shape(lm.config)[0]
    meta = export_metadata(
        cfg, dataset, run_id, [{"name": n} for n in io_names(layers)[0]], PREPROCESS, output="logits"
    )
    write_generator(lm, tokenizer, path, meta, int(data.extra["max_length"]))
    generator = Generator(path)
    theirs = continuations(TorchSteps(Step(lm), layers), generator.settings, prompts, CHECK_TOKENS)
    ours = continuations(generator.session, generator.settings, prompts, CHECK_TOKENS)
    agreement, compared = token_agreement(theirs, ours)
    return ExportCheck(
        path=str(path),
        max_abs_diff=compared,
        top1_agreement=agreement,
        n_samples=len(prompts),
        provider=generator.provider,
        bytes=sum(f.stat().st_size for f in path.parent.glob(path.name + "*")),
        agreement="token_agreement",
    )


def _prompt_ids(tokenizer: Any, item: Any) -> list[int]:
    """The tokens a generator starts from for an example: its conversation up to the last
    answer with the assistant's turn opened, or a text's first half."""
    found = prompt_of(item)
    if found is None:
        ids = list(tokenizer(item, add_special_tokens=True)["input_ids"])
        return ids[: max(1, len(ids) // 2)]
    return list(
        tokenizer.apply_chat_template(found[0], add_generation_prompt=True, tokenize=True, return_dict=False)
    )


class TorchSteps:
    """The PyTorch Step behind the same call as an ONNX Runtime session (numpy feeds in, numpy
    outputs back), so one generation loop drives both."""

    def __init__(self, step: nn.Module, layers: int) -> None:
        self.step = step.eval()
        self.names = io_names(layers)[0]

    @torch.no_grad()
    def run(self, _outputs: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        tensors = [torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in self.names]
        return [t.numpy() for t in self.step(*tensors)]


Continuation = tuple[list[int], np.ndarray]  # greedy tokens, and the first one's logits


def continuations(
    session: Any, settings: Mapping[str, Any], prompts: list[list[int]], n: int
) -> list[Continuation]:
    """Up to `n` greedy tokens after each prompt from `session` (an ONNX Runtime session or
    TorchSteps), with the logits the first one was chosen from."""
    from core.runtime import greedy_tokens

    return [greedy_tokens(session, settings, ids, n) for ids in prompts]


def token_agreement(expected: list[Continuation], got: list[Continuation]) -> tuple[float, float]:
    """(share of the expected greedy tokens `got` reproduces, each continuation counted up to
    its first difference; largest |difference| of the first tokens' logits)."""
    same = total = 0
    largest = 0.0
    for (theirs, their_logits), (ours, our_logits) in zip(expected, got, strict=True):
        largest = max(largest, float(np.max(np.abs(our_logits - their_logits))))
        agree = 0
        for a, b in zip(ours, theirs, strict=False):
            if a != b:
                break
            agree += 1
        same += agree
        total += max(len(ours), len(theirs), 1)
    return (same / total if total else 1.0), largest


def sequence_nll(
    session: Any, settings: Mapping[str, Any], examples: list[tuple[list[int], list[int]]]
) -> tuple[float, int]:
    """(summed negative log-likelihood of the examples' learnt tokens, their count), each example
    read whole through `session` with an empty cache."""
    shape = settings["cache"]
    past = [f"past.{i}.{kv}" for i in range(int(shape["layers"])) for kv in ("key", "value")]
    types = {i.name: i.type for i in session.get_inputs()} if hasattr(session, "get_inputs") else {}
    dtype = np.float16 if types.get(past[0]) == "tensor(float16)" else np.float32
    empty = np.zeros((1, int(shape["heads"]), 0, int(shape["dim"])), dtype=dtype)
    nll, count = 0.0, 0
    for ids, labels in examples:
        feeds = {
            "input_ids": np.asarray([ids], dtype=np.int64),
            "attention_mask": np.ones((1, len(ids)), dtype=np.int64),
            **dict.fromkeys(past, empty),
        }
        logits = np.asarray(session.run(["logits"], feeds)[0][0, :-1], dtype=np.float64)
        target = np.asarray(labels[1:])
        learnt = target != IGNORE
        if not learnt.any():
            continue
        rows = logits[learnt]
        top = rows.max(axis=1, keepdims=True)
        log_z = top[:, 0] + np.log(np.exp(rows - top).sum(axis=1))
        nll += float((log_z - rows[np.arange(len(rows)), target[learnt]]).sum())
        count += int(learnt.sum())
    return nll, count


def reference(data: TaskData, cfg: RunConfig, dataset: DatasetInfo) -> Reference:
    """The certificate's view: the merged model's Step (what model.onnx computes), the
    validation prompts it continues and the validation examples it scores."""
    from core.tasks import GenerationCheck

    model = data.model
    assert isinstance(model, CausalLoss)
    lm = merged(data)
    positions = int(getattr(lm.config, "max_position_embeddings", 2048))
    settings = generation_settings(model.tokenizer, lm, int(data.extra["max_length"]), positions)
    return Reference(
        module=Step(lm).eval(),
        inputs=(),
        targets=np.zeros(0),
        classification=False,
        agreement="token_agreement",
        generation=GenerationCheck(settings, model.val_prompts, model.val_examples),
    )
