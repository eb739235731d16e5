"""The graphs an encoder-decoder run exports, shared by speech recognition and translation.

A transformers encoder-decoder of the BART family (Whisper, Marian) is written as two modules:
one that encodes and projects each decoder layer's cross-attention keys and values once (the
task's encoder: core.models.speech.WhisperEncode, core.models.translation.MarianEncode), and
`DecoderStep`, one decoding step with a self-attention cache. Both are plain tensor code over
the model's own weights, so the dynamo exporter writes them without transformers' cache classes
and mask helpers, and ONNX Runtime runs the same computation the loop trains.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


def attend(
    attention: Any,
    heads: int,
    x: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor | None,
) -> torch.Tensor:
    """A transformers attention block's output for queries from `x` over given keys and values
    [batch, heads, length, head size]; `mask` (boolean, True where allowed) broadcasts over
    [batch, heads, queries, keys]."""
    batch, new, width = x.shape
    query = (attention.q_proj(x) * attention.scaling).view(batch, new, heads, -1).transpose(1, 2)
    out = nn.functional.scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=1.0)
    return attention.out_proj(out.transpose(1, 2).reshape(batch, new, width))


def split_heads(proj: Any, x: torch.Tensor, heads: int) -> torch.Tensor:
    """A key or value projection of x [batch, length, width] as [batch, heads, length, head size]."""
    batch, length, width = x.shape
    return proj(x).view(batch, length, heads, width // heads).transpose(1, 2)


def cross_keys_values(layers: Any, states: torch.Tensor, heads: int) -> tuple[torch.Tensor, ...]:
    """Each decoder layer's cross-attention keys and values of the encoder's states."""
    out = []
    for layer in layers:
        out += [
            split_heads(layer.encoder_attn.k_proj, states, heads),
            split_heads(layer.encoder_attn.v_proj, states, heads),
        ]
    return tuple(out)


class DecoderStep(nn.Module):
    """One decoding step with a cache: (token ids [batch, new], each layer's self-attention cache
    [batch, heads, cached, head size] as key then value, the cross-attention keys and values,
    and, when `masked`, the source's attention mask [batch, source length]) -> (logits [batch,
    new, vocabulary], the self-attention cache grown by the new tokens). Positions continue from
    the cache's length.

    `post_norm` layers (Marian) normalise after each residual sum; otherwise (Whisper) before
    each block, with a final norm. `output` maps the last states to logits (the tied input
    embedding when None); `bias` is added to them."""

    embed: Any
    positions: Any
    layers: Any

    def __init__(
        self,
        decoder: Any,
        heads: int,
        *,
        scale: float = 1.0,
        post_norm: bool = False,
        final_norm: Any = None,
        output: Any = None,
        bias: torch.Tensor | None = None,
        masked: bool = False,
    ) -> None:
        super().__init__()
        self.embed = decoder.embed_tokens
        self.positions = decoder.embed_positions
        self.layers = decoder.layers
        self.heads, self.scale, self.post_norm, self.masked = heads, scale, post_norm, masked
        self.final_norm = final_norm
        self.output = output
        self.bias = bias

    def forward(self, ids: torch.Tensor, *caches: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n = len(self.layers)
        past, cross = caches[: 2 * n], caches[2 * n : 4 * n]
        source = caches[4 * n][:, None, None, :] > 0 if self.masked else None
        new = ids.shape[1]
        cached = past[0].shape[2]
        x = self.embed(ids) * self.scale + self.positions.weight[cached : cached + new]
        # Each new token sees the cache and the new tokens up to itself.
        mask = (
            torch.arange(cached + new, device=ids.device)[None, :]
            <= (cached + torch.arange(new, device=ids.device))[:, None]
        )
        grown = []
        for i, layer in enumerate(self.layers):
            attention = layer.self_attn
            h = x if self.post_norm else layer.self_attn_layer_norm(x)
            keys = torch.cat([past[2 * i], split_heads(attention.k_proj, h, self.heads)], dim=2)
            values = torch.cat([past[2 * i + 1], split_heads(attention.v_proj, h, self.heads)], dim=2)
            grown += [keys, values]
            x = x + attend(attention, self.heads, h, keys, values, mask)
            if self.post_norm:
                x = layer.self_attn_layer_norm(x)
                x = layer.encoder_attn_layer_norm(
                    x + attend(layer.encoder_attn, self.heads, x, cross[2 * i], cross[2 * i + 1], source)
                )
                x = layer.final_layer_norm(x + layer.fc2(layer.activation_fn(layer.fc1(x))))
            else:
                h = layer.encoder_attn_layer_norm(x)
                x = x + attend(layer.encoder_attn, self.heads, h, cross[2 * i], cross[2 * i + 1], source)
                h = layer.final_layer_norm(x)
                x = x + layer.fc2(layer.activation_fn(layer.fc1(h)))
        if self.final_norm is not None:
            x = self.final_norm(x)
        logits = self.output(x) if self.output is not None else x @ self.embed.weight.T
        return (logits + self.bias if self.bias is not None else logits, *grown)


def shape_of(config: Any) -> dict[str, int]:
    """An encoder-decoder's decoder shape: layers, heads, head size (the cache's) and the
    positions it takes (T5's relative positions have no hard limit: its n_positions)."""
    if getattr(config, "model_type", "") == "t5":
        layers = int(getattr(config, "num_decoder_layers", None) or config.num_layers)
        positions = int(getattr(config, "n_positions", 0) or 512)
        return {
            "layers": layers,
            "heads": int(config.num_heads),
            "dim": int(config.d_kv),
            "positions": positions,
        }
    heads = int(config.decoder_attention_heads)
    positions = int(getattr(config, "max_target_positions", 0) or config.max_position_embeddings)
    return {
        "layers": int(config.decoder_layers),
        "heads": heads,
        "dim": int(config.d_model) // heads,
        "positions": positions,
    }


@torch.no_grad()
def greedy(
    step: nn.Module,
    cross: tuple[torch.Tensor, ...],
    prompt: list[int],
    end: int,
    max_tokens: int,
    suppress: Sequence[int],
    first: Sequence[int] = (),
    extra: tuple[torch.Tensor, ...] = (),
) -> torch.Tensor:
    """Greedy token ids [batch, max_tokens] (-1 after the end) from a decoding step over the
    encoder's cross-attention keys and values, as core.runtime.decode_tokens writes them with
    ONNX Runtime: `suppress` never written, `first` not as the first token, `extra` further
    inputs of the step (the source's mask)."""
    batch, heads, _, dim = cross[0].shape
    device = cross[0].device
    past: list[torch.Tensor] = [cross[0].new_zeros(batch, heads, 0, dim) for _ in range(len(cross))]
    ids = torch.tensor([prompt], device=device).repeat(batch, 1)
    found = torch.full((batch, max_tokens), -1, dtype=torch.long, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    for i in range(max_tokens):
        out = step(ids, *past, *cross, *extra)
        logits, past = out[0][:, -1].float(), list(out[1:])
        logits[:, list(suppress)] = -torch.inf
        if i == 0 and first:
            logits[:, list(first)] = -torch.inf
        chosen = logits.argmax(dim=1)
        done = done | (chosen == end)
        found[:, i] = torch.where(done, torch.full_like(chosen, -1), chosen)
        if bool(done.all()):
            break
        ids = torch.where(done, torch.full_like(chosen, end), chosen)[:, None]
    return found


class TorchGraph:
    """A PyTorch module behind an ONNX Runtime session's `run` (named numpy feeds in, numpy
    outputs out), so the same decoding loop (core.runtime.decode_tokens) drives either."""

    def __init__(self, module: nn.Module, names: list[str]) -> None:
        self.module, self.names = module.eval(), names

    def run(self, _outputs: Any, feeds: dict[str, Any]) -> list[Any]:
        import numpy as np

        with torch.inference_mode():
            out = self.module(*(torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in self.names))
        return [t.float().numpy() for t in (out if isinstance(out, tuple) else (out,))]


# The linear layers of a BART-family encoder-decoder that LoRA adapts by default ("all-linear"):
# attention projections and feed-forward layers; the output layer is the tied embedding.
# T5's are q, k, v, o and wi (or gated wi_0, wi_1), wo; its output layer is lm_head.
ADAPTED = (
    "q_proj",
    "k_proj",
    "v_proj",
    "out_proj",
    "fc1",
    "fc2",
    "q",
    "k",
    "v",
    "o",
    "wi",
    "wi_0",
    "wi_1",
    "wo",
)


def add_adapters(model: nn.Module, rank: int, alpha: int | None, dropout: float, targets: str) -> None:
    """LoRA adapters (peft) on the model's linear layers named by `targets` ("all-linear":
    ADAPTED), in place, so the modules the export writes call them unchanged; every other weight
    is frozen. An unknown layer name is refused with the names there are."""
    from peft import LoraConfig, inject_adapter_in_model

    from core.errors import ConfigError

    linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
    names = (
        [n for n in ADAPTED if n in linear]
        if targets == "all-linear"
        else [t.strip() for t in targets.split(",")]
    )
    unknown = [n for n in names if n not in linear]
    if unknown:
        raise ConfigError(
            f"no layer of the model is named {', '.join(unknown)}; its linear layers are: {', '.join(linear)}"
        )
    config = LoraConfig(r=rank, lora_alpha=alpha or 2 * rank, lora_dropout=dropout, target_modules=names)
    inject_adapter_in_model(config, model)
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    print(
        f"LoRA of rank {rank} on {', '.join(names)}: "
        f"{sum(p.numel() for p in model.parameters() if p.requires_grad):,} of "
        f"{sum(p.numel() for p in model.parameters()):,} weights train",
        flush=True,
    )


def merge_adapters(model: nn.Module) -> bool:
    """Fold LoRA adapters into their base layers and put the plain layers back, in place (what
    is exported and certified is then the model's own architecture); False when it had none."""
    from peft.tuners.lora import LoraLayer

    adapted = [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]
    for name, layer in adapted:
        layer.merge()
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer.get_base_layer())
    return bool(adapted)
