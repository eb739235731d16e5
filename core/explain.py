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
