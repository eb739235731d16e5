"""Which tokens drove a text prediction: integrated gradients through the token embeddings.

The model is rebuilt from the run's best checkpoint (its metadata holds the architecture, the
tokenizer and the classes), so attributions explain the very weights that were exported.
Captum's LayerIntegratedGradients integrates from a baseline of padding tokens (special tokens
such as [CLS] and [SEP] kept) to the text; a token's score is the sum over its embedding.
"""

from __future__ import annotations

import json
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
