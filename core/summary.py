"""Tables and series the pages show, shaped from the store (so pages only lay them out)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core import jobs
from db.queries import DatasetInfo, DatasetSummary, ExportInfo, RunInfo, lower_is_better

MAIN_METRIC = {
    "tabular-classification": "val_f1_macro",
    "image-classification": "val_f1_macro",
    "tabular-regression": "val_rmse",
    "text-classification": "val_f1_macro",
    "audio-classification": "val_f1_macro",
    "speech-recognition": "val_wer",
    "translation": "val_bleu",
    "object-detection": "val_map50",
    "semantic-segmentation": "val_miou",
    "text-generation": "val_loss",
}


# What people call each metric key, wherever a page shows one.
METRIC_NAMES = {
    "train_loss": "train loss",
    "val_loss": "validation loss",
    "val_accuracy": "validation accuracy",
    "val_f1_macro": "validation F1 (macro)",
    "val_rmse": "validation RMSE",
    "val_mae": "validation MAE",
    "val_r2": "validation R²",
    "val_map50": "validation mAP@0.5",
    "val_map": "validation mAP@0.5:0.95",
    "val_miou": "validation mean IoU",
    "val_pixel_accuracy": "validation pixel accuracy",
    "val_perplexity": "validation perplexity",
    "val_wer": "validation word error rate",
    "val_cer": "validation character error rate",
    "val_bleu": "validation BLEU",
    "val_chrf": "validation chrF",
    "samples_per_sec": "samples/s",
    "lr": "learning rate",
    "export_max_abs_diff": "ONNX max |diff| from PyTorch",
    "export_top1_agreement": "ONNX top-1 agreement",
    "export_box_agreement": "ONNX boxes found alike",
    "export_pixel_agreement": "ONNX pixels alike",
    "export_token_agreement": "ONNX greedy tokens alike",
    "export_transcript_agreement": "ONNX transcripts alike",
    "export_translation_agreement": "ONNX translations alike",
    "export_n_samples": "ONNX samples checked",
    "accuracy": "accuracy",  # the certificate's, on the whole validation split
    "rmse": "RMSE",
    "map50": "mAP@0.5",
    "miou": "mean IoU",
    "wer": "WER",
    "bleu": "BLEU",
}
# What a certificate's agreement column measures, by task (top-1 classes elsewhere).
AGREEMENT_WORDS = {
    "object-detection": "box agreement",
    "semantic-segmentation": "pixel agreement",
    "text-generation": "token agreement",
    "speech-recognition": "transcripts alike",
    "translation": "translations alike",
}
# Metrics whose best value means nothing (a schedule, a speed, a count): only their last counts.
NO_BEST = frozenset({"lr", "samples_per_sec", "export_n_samples"})


def metric_label(key: str) -> str:
    return METRIC_NAMES.get(key, key.replace("_", " "))


def number(value: Any, digits: int = 3) -> str:
    """A measurement for people: `digits` significant digits, thousands separated, an exponent
    only for the very small; "—" for nothing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    v = float(value)
    if v == 0 or not math.isfinite(v):
        return "0" if v == 0 else str(v)
    if abs(v) >= 10 ** (digits - 1):
        return f"{v:,.0f}"
    if abs(v) < 1e-3:
        return f"{v:.{digits - 1}e}"
    return f"{v:.{digits - 1 - math.floor(math.log10(abs(v)))}f}"


def percent(value: Any) -> str:
    """A share (0..1) as a percentage with three significant digits: 100%, 97.2%, 8.33%."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{float(value) * 100:.3g}%"


def file_size(n_bytes: int) -> str:
    """Bytes for people: 812 B, 66.1 kB, 1.23 MB, 4.5 GB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.3g} {unit}"
    return f"{n_bytes} B"


def formats(columns: Iterable[str]) -> dict[str, Callable[[Any], str]]:
    """How to show each numeric column of a table made here, read from its name."""
    out: dict[str, Callable[[Any], str]] = {}
    for column in columns:
        if "agreement" in column:
            out[column] = percent
        elif column == "max |diff|":
            out[column] = lambda v: "—" if v is None or v != v else ("0" if v == 0 else f"{v:.2e}")
        elif column == "change":
            out[column] = lambda v: "—" if v is None or v != v else ("0" if v == 0 else f"{v:+.3g}")
        elif column in ("id", "support", "attempts"):
            out[column] = lambda v: "—" if v is None or v != v else f"{int(v)}"
        else:
            out[column] = number
    return out


def main_metric(run: RunInfo) -> tuple[str, float | None]:
    key = MAIN_METRIC.get(run.task, "val_loss")
    return key, run.best_metrics.get(key)


def duration_s(run: RunInfo) -> float | None:
    if run.started_at is None:
        return None
    end = run.finished_at or run.heartbeat_at or run.started_at
    return max(0.0, (end - run.started_at).total_seconds())


def runs_table(runs: list[RunInfo], datasets: dict[int, str]) -> pd.DataFrame:
    """One row per run: what the Runs and Home pages list. Text cells are never empty of a
    value (a missing number stays NaN, for the table to show as a placeholder)."""
    rows = []
    fastest = _fastest_exports([r.id for r in runs])
    for run in runs:
        key, value = main_metric(run)
        best_export = fastest.get(run.id)
        rows.append(
            {
                "id": run.id,
                "name": run.name,
                "dataset": datasets.get(run.dataset_id or -1, "(deleted)"),
                "task": run.task,
                "model": run.model,
                "status": run.status,
                "main metric": metric_label(key),
                "best": value,
                "duration (s)": None if duration_s(run) is None else round(duration_s(run) or 0.0, 1),
                "created": run.created_at.astimezone().strftime("%Y-%m-%d %H:%M"),
                "tags": ", ".join(run.tags),
                "best latency (ms)": None if best_export is None else round(best_export.latency_ms or 0.0, 2),
                "size (MB)": None if best_export is None else round(best_export.bytes / 1e6, 2),
            }
        )
    columns = [
        "id",
        "name",
        "dataset",
        "task",
        "model",
        "status",
        "main metric",
        "best",
        "duration (s)",
        "created",
        "tags",
        "best latency (ms)",
        "size (MB)",
    ]
    return pd.DataFrame(rows, columns=columns).astype(
        {c: float for c in ("best", "duration (s)", "best latency (ms)", "size (MB)")}
    )


def _fastest_exports(run_ids: list[int]) -> dict[int, ExportInfo]:
    """Per run, its certified ONNX variant (not flagged) with the lowest batch-1 latency."""
    from core.config import database
    from db.queries import list_exports
    from db.session import session_scope

    database()
    with session_scope() as session:
        records = list_exports(session=session, run_ids=run_ids)
    best: dict[int, ExportInfo] = {}
    for r in records:
        if r.variant == "pytorch" or r.status != "ok" or r.latency_ms is None:
            continue
        if r.run_id not in best or r.latency_ms < (best[r.run_id].latency_ms or float("inf")):
            best[r.run_id] = r
    return best


def telling_digits(values: list[float], least: int = 3, most: int = 6) -> int:
    """Significant digits that tell these values apart, at least `least`: perplexities of
    1.0052 and 1.0071 need four."""
    finite = [v for v in values if isinstance(v, int | float) and math.isfinite(v)]
    span = max(finite) - min(finite) if finite else 0.0
    if span <= 0:
        return least
    top = max(abs(v) for v in finite)
    return max(least, min(most, math.floor(math.log10(top)) - math.floor(math.log10(span)) + 1))


def certificate_table(records: list[ExportInfo], agreement: str = "top-1 agreement") -> pd.DataFrame:
    """One row per variant: fidelity (`agreement` names its column), metric, size, and p50/p95
    per provider and batch."""
    rows = []
    for r in records:
        row: dict[str, Any] = {
            "variant": r.variant,
            "status": r.status,
            metric_label(r.metric_name or "metric"): r.metric_value,
            "change": r.metric_change,
            agreement: r.top1_agreement,
            "max |diff|": r.max_abs_diff,
            "size (MB)": round(r.bytes / 1e6, 3),
        }
        for m in r.measurements:
            # PyTorch's baseline shares the CPU columns with ONNX Runtime's CPU provider: its row
            # says it is PyTorch, and the same column compares them.
            where = (
                "CPU" if m["provider"] == "pytorch-cpu" else m["provider"].removesuffix("ExecutionProvider")
            )
            if "item_ms" in m:  # an encoder-decoder: the encoder, each token, each item
                row[f"{where} encoder (ms)"] = round(m["encoder_ms"], 2)
                row[f"{where} per token p50 (ms)"] = round(m["p50_ms"], 2)
                row[f"{where} per item (ms)"] = round(m["item_ms"], 1)
                if "rtf" in m:
                    row[f"{where} real-time factor"] = round(m["rtf"], 3)
                continue
            if "first_token_ms" in m:  # a generator: the first token, then each next one
                row[f"{where} first token (ms)"] = round(m["first_token_ms"], 1)
                row[f"{where} per token p50 (ms)"] = round(m["p50_ms"], 2)
                row[f"{where} per token p95 (ms)"] = round(m["p95_ms"], 2)
                continue
            row[f"{where} b{m['batch']} p50 (ms)"] = round(m["p50_ms"], 3)
            row[f"{where} b{m['batch']} p95 (ms)"] = round(m["p95_ms"], 3)
        row["peak memory (MB)"] = max((m["peak_mb"] for m in r.measurements), default=None)
        rows.append(row)
    return pd.DataFrame(rows).set_index("variant") if rows else pd.DataFrame()


def curves(run_ids: list[int], keys: list[str], names: dict[int, str] | None = None) -> pd.DataFrame:
    """Metric values by epoch, one column per (run, key): ready for a line chart."""
    frames = []
    for run_id in run_ids:
        label = (names or {}).get(run_id, f"run {run_id}")
        points = [p for p in jobs.metric_history(run_id) if p.key in keys]
        if points:
            frame = pd.DataFrame(
                [(p.epoch, f"{label} · {p.key}", p.value) for p in points],
                columns=["epoch", "series", "value"],
            )
            frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["epoch"])
    data = pd.concat(frames).pivot_table(index="epoch", columns="series", values="value", aggfunc="last")
    return data.sort_index()


def curve_points(run_ids: list[int], keys: list[str], names: dict[int, str] | None = None) -> pd.DataFrame:
    """Metric values by epoch in long form (epoch, run, metric, value), metrics named for
    people: one line per (run, metric) in a chart coloured by either."""
    frames = []
    for run_id in run_ids:
        label = (names or {}).get(run_id, f"run {run_id}")
        points = [p for p in jobs.metric_history(run_id) if p.key in keys]
        frames.append(
            pd.DataFrame(
                [(p.epoch, label, metric_label(p.key), p.value) for p in points],
                columns=["epoch", "run", "metric", "value"],
            )
        )
    frame = pd.concat(frames) if frames else pd.DataFrame(columns=["epoch", "run", "metric", "value"])
    # A resumed run records an epoch again; its last value stands.
    return frame.drop_duplicates(["epoch", "run", "metric"], keep="last").reset_index(drop=True)


def param_diff(run_ids: list[int]) -> pd.DataFrame:
    """Parameters side by side (one column per run) and whether they differ; unset ones as "—"."""
    params = {run_id: jobs.params(run_id) for run_id in run_ids}
    keys = sorted({k for p in params.values() for k in p})
    shown = {r: {k: "—" if v in ("null", "None", "") else v for k, v in params[r].items()} for r in run_ids}
    table = pd.DataFrame({f"run {r}": [shown[r].get(k, "—") for k in keys] for r in run_ids}, index=keys)
    table["differs"] = table.nunique(axis=1) > 1
    return table


def metrics_side_by_side(runs: list[RunInfo]) -> pd.DataFrame:
    """The best validation and export figures of each run, one column per run, named for people."""
    keys = sorted(
        {k for r in runs for k in r.best_metrics if k.startswith(("val_", "export_")) and k not in NO_BEST},
        key=metric_label,
    )
    return pd.DataFrame(
        {f"run {r.id}": [r.best_metrics.get(k, math.nan) for k in keys] for r in runs},
        index=pd.Index([metric_label(k) for k in keys], name="metric"),
    )


def run_metrics(run: RunInfo) -> pd.DataFrame:
    """A run's training metrics, best and last, named for people; no best where none means
    anything (learning rate, samples/s)."""
    keys = sorted((k for k in run.metrics if not k.startswith("export_")), key=metric_label)
    return pd.DataFrame(
        {
            "best": [math.nan if k in NO_BEST else run.best_metrics.get(k, math.nan) for k in keys],
            "last": [run.metrics.get(k, math.nan) for k in keys],
        },
        index=pd.Index([metric_label(k) for k in keys], name="metric"),
    )


def confusion_cells(report: dict[str, Any], normalised: bool = False) -> pd.DataFrame:
    """The confusion matrix as one row per (true, predicted) cell: its count, its share of the
    true class, and the text to print in it (the count, or the share when `normalised`)."""
    rows = []
    for true, counts in zip(report["labels"], report["confusion"], strict=True):
        total = sum(counts)
        for predicted, n in zip(report["labels"], counts, strict=True):
            share = n / total if total else 0.0
            rows.append((str(true), str(predicted), int(n), share, f"{share:.0%}" if normalised else str(n)))
    return pd.DataFrame(rows, columns=["true", "predicted", "count", "share", "text"])


def artifact_paths(run_id: int) -> dict[str, Path]:
    return {a.kind: Path(a.path) for a in jobs.artifacts(run_id) if Path(a.path).exists()}


DOWNLOAD_KINDS = ("onnx", "decoder", "checkpoint", "tokenizer", "config", "report")


def downloads(run_id: int, offered: Iterable[str | Path] = ()) -> list[tuple[str, Path]]:
    """The run's files to download as (button label, path): one per distinct file on disk, in
    DOWNLOAD_KINDS order, leaving out those already `offered` elsewhere on the page."""
    seen = {Path(p).resolve() for p in offered}
    out = []
    by_kind = artifact_paths(run_id)
    for kind in DOWNLOAD_KINDS:
        path = by_kind.get(kind)
        if path is None or path.resolve() in seen:
            continue
        seen.add(path.resolve())
        out.append((f"{kind} ({file_size(path.stat().st_size)})", path))
    return out


def generations(run_id: int) -> dict[int, list[dict[str, str]]]:
    """A generator run's answers to its fixed validation prompts, by epoch (0: before training);
    the last record of an epoch counts (a resumed run may have answered it twice)."""
    path = jobs.run_dir(run_id) / "samples.jsonl"
    if not path.is_file():
        return {}
    found: dict[int, list[dict[str, str]]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
            found[int(record["epoch"])] = list(record["samples"])
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a process that died while writing it
    return dict(sorted(found.items()))


def answers_by_prompt(found: dict[int, list[dict[str, str]]]) -> list[tuple[str, str, pd.DataFrame]]:
    """(prompt, expected answer, a table of the answer after each epoch) per fixed prompt."""
    if not found:
        return []
    out = []
    first = found[min(found)]
    for i, sample in enumerate(first):
        rows = [
            {"epoch": epoch, "answer": samples[i]["answer"]}
            for epoch, samples in found.items()
            if i < len(samples)
        ]
        out.append((sample["prompt"], sample["expected"], pd.DataFrame(rows)))
    return out


def report(run_id: int) -> dict[str, Any] | None:
    path = artifact_paths(run_id).get("report")
    return json.loads(path.read_text()) if path else None


def log_tail(run_id: int, lines: int = 60) -> str:
    from core.worker import log_tail as tail

    return tail(jobs.run_dir(run_id) / "run.log", lines)


ITEM_WORDS = {
    "image-classification": "images",
    "audio-classification": "clips",
    "speech-recognition": "clips",
    "translation": "pairs",
    "text-classification": "texts",
    "object-detection": "images",
    "semantic-segmentation": "images",
    "text-generation": "examples",
}


def counted(n: int, noun: str) -> str:
    """ "1 item", "3 items"."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def dataset_name(ds: DatasetInfo | DatasetSummary) -> str:
    """A dataset's name, with its version once it has been revised ("clothes v2")."""
    return f"{ds.name} v{ds.version}" if ds.version > 1 else ds.name


def dataset_label(ds: DatasetInfo | DatasetSummary) -> str:
    return f"{ds.id} · {plain(dataset_name(ds))} ({ds.task}, {ds.n_items} {ITEM_WORDS.get(ds.task, 'rows')})"


_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~:$&=^\"'@%])")


# GitHub-flavoured Markdown turns bare addresses into links even when their characters are
# escaped; an invisible word joiner inside each keeps them text.
_WJ = "\u2060"
_AUTOLINK = (("\\:/", "\\:" + _WJ + "/"), ("www\\.", "www" + _WJ + "\\."), ("\\@", _WJ + "\\@"))


def md(text: object) -> str:
    """User text (a name, label, tag, file name) to put inside Markdown that Streamlit renders:
    one line, every Markdown, HTML, LaTeX and Streamlit directive character escaped, so
    `![x](http://host/x)` shows as those characters and fetches nothing."""
    escaped = _MARKDOWN.sub(r"\\\1", plain(text))
    for bare, kept in _AUTOLINK:
        escaped = escaped.replace(bare, kept)
    return escaped


def plain(text: object) -> str:
    """User text as one line (widget options and labels take no newlines)."""
    return " ".join(str(text).split())


# OWASP's advice for CSV injection: a text cell that starts with one of these is read as a
# formula by spreadsheets; a leading apostrophe makes it text. Numbers stay numbers.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def safe_cell(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(_FORMULA_START) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def csv_bytes(frame: pd.DataFrame) -> bytes:
    """A DataFrame as a CSV download with formula-looking text cells (and headers) neutralised."""
    out = frame.copy()
    out.columns = [safe_cell(str(c)) for c in out.columns]
    for column in out.columns:
        if not pd.api.types.is_numeric_dtype(out[column].dtype):
            out[column] = out[column].map(safe_cell)
    return out.to_csv(index=False).encode("utf-8")


def preview_table(ds: DatasetInfo, rows: int = 20) -> pd.DataFrame:
    return pd.read_parquet(Path(ds.path) / "data.parquet").head(rows)


def sample_images(ds: DatasetInfo, per_class: int = 6) -> dict[str, list[Path]]:
    index = pd.read_parquet(Path(ds.path) / "index.parquet")
    return {
        str(label): [Path(ds.path) / "images" / p for p in group["path"].head(per_class)]
        for label, group in index.groupby("label", sort=True)
    }


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "estimating…"
    seconds = int(seconds)
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def when(t: datetime | None) -> str:
    return t.astimezone().strftime("%Y-%m-%d %H:%M:%S") if t else "-"


def sample_texts(ds: DatasetInfo, per_class: int = 3, chars: int = 300) -> pd.DataFrame:
    """A few texts of each class, cut to `chars` characters."""
    frame = pd.read_parquet(Path(ds.path) / "data.parquet")
    picked = frame.groupby("label", sort=True).head(per_class).sort_values("label", kind="stable")
    return picked.assign(text=picked["text"].str.slice(0, chars))[["label", "text"]]


def length_histogram(report: dict[str, Any]) -> pd.DataFrame:
    """Text lengths as counts per bin, indexed by the bin's lower edge (for a bar chart)."""
    hist = report["length_tokens"]["histogram"]
    edges = [round(e) for e in hist["edges"][:-1]]
    return pd.DataFrame({"texts": hist["counts"]}, index=pd.Index(edges, name=report["length_unit"]))


def pair_length_histogram(report: dict[str, Any]) -> pd.DataFrame:
    """A translation dataset's sentence lengths in words, source beside target, per bin."""
    bins = report["length_bins"]
    edges = [round(e) for e in bins["edges"][:-1]]
    return pd.DataFrame(
        {"source": bins["source"], "target": bins["target"]}, index=pd.Index(edges, name="words")
    )


def word_diff_html(reference: str, text: str) -> str:
    """`text` word by word against `reference` (difflib): words the reference lacks in red,
    reference words `text` misses struck through in grey, the words they share plain."""
    import difflib
    import html

    ref, hyp = reference.split(), text.split()
    parts = []
    inserted = '<span style="background: rgba(220,38,38,0.25); border-radius: 3px; padding: 0 2px">{}</span>'
    missed = '<span style="color: #6b7280; text-decoration: line-through">{}</span>'
    for op, a0, a1, b0, b1 in difflib.SequenceMatcher(a=ref, b=hyp, autojunk=False).get_opcodes():
        if op == "equal":
            parts.append(html.escape(" ".join(hyp[b0:b1])))
            continue
        if a1 > a0:
            parts.append(missed.format(html.escape(" ".join(ref[a0:a1]))))
        if b1 > b0:
            parts.append(inserted.format(html.escape(" ".join(hyp[b0:b1]))))
    return '<span class="ascent-diff">' + " ".join(parts) + "</span>"


def highlight_html(text: str, tokens: list[Any]) -> str:
    """The text with each token's span shaded by its attribution: green for the explained
    class, red against it (alpha = |score|). Tokens share spans when a word splits."""
    import html

    parts, cursor = [], 0
    for tok in sorted((t for t in tokens if t.end > t.start), key=lambda t: t.start):
        if tok.start < cursor:
            continue
        parts.append(html.escape(text[cursor : tok.start]))
        colour = "22,163,74" if tok.score >= 0 else "220,38,38"
        alpha = min(1.0, abs(tok.score)) * 0.75
        parts.append(
            f'<span title="{html.escape(str(tok.token), quote=True)}: {tok.score:+.2f}" '
            f'style="background: rgba({colour},{alpha:.2f}); border-radius: 3px; padding: 0 1px">'
            f"{html.escape(text[tok.start : tok.end])}</span>"
        )
        cursor = tok.end
    parts.append(html.escape(text[cursor:]))
    return '<div class="ascent-attribution" style="line-height: 1.9">' + "".join(parts) + "</div>"


def spectrogram_image(logmel: np.ndarray, scale: int = 4) -> np.ndarray:
    """A log-mel [n_mels, frames] as an RGB picture: low frequencies at the bottom, 80 dB range."""
    from matplotlib import colormaps
    from PIL import Image

    top = float(logmel.max())
    span = 80 / 10 * np.log(10)  # 80 dB in natural-log power
    level = np.clip((logmel - (top - span)) / span, 0, 1)[::-1]
    rgb = (colormaps["magma"](level)[..., :3] * 255).astype(np.uint8)
    h, w = rgb.shape[:2]
    return np.asarray(Image.fromarray(rgb).resize((w * scale, h * scale), Image.Resampling.NEAREST))


def sample_clips(ds: DatasetInfo, per_class: int = 2) -> dict[str, list[Path]]:
    index = pd.read_parquet(Path(ds.path) / "index.parquet")
    return {
        str(label): [Path(ds.path) / "clips" / p for p in group["path"].head(per_class)]
        for label, group in index.groupby("label", sort=True)
    }


def sample_transcripts(ds: DatasetInfo, n: int = 4) -> list[tuple[Path, str]]:
    """The first clips of a speech dataset with their transcripts."""
    index = pd.read_parquet(Path(ds.path) / "index.parquet")
    return [
        (Path(ds.path) / "clips" / p, str(t))
        for p, t in zip(index["path"][:n], index["transcript"][:n], strict=True)
    ]


def duration_histogram(report: dict[str, Any]) -> pd.DataFrame:
    hist = report["seconds"]["histogram"]
    edges = [round(e, 2) for e in hist["edges"][:-1]]
    return pd.DataFrame({"clips": hist["counts"]}, index=pd.Index(edges, name="seconds"))


def _front(points: list[tuple[float, float]], higher_is_better: bool) -> list[bool]:
    """Which (metric, cost) points no other point beats on both (a better metric at no more cost)."""
    sign = 1.0 if higher_is_better else -1.0
    marks = []
    for i, (m, c) in enumerate(points):
        beaten = any(
            j != i and sign * m2 >= sign * m and c2 <= c and (sign * m2 > sign * m or c2 < c)
            for j, (m2, c2) in enumerate(points)
        )
        marks.append(not beaten)
    return marks


def tradeoffs(run_ids: list[int], names: dict[int, str] | None = None) -> pd.DataFrame:
    """Certified variants of these runs: metric, batch-1 latency and size, with the best
    trade-offs (metric against latency, and against size) marked."""
    from core.config import database
    from db.queries import list_exports
    from db.session import session_scope

    database()
    with session_scope() as session:
        records = [r for r in list_exports(session=session, run_ids=run_ids) if r.latency_ms is not None]
    if not records:
        return pd.DataFrame()
    frame = pd.DataFrame(
        {
            "run": [(names or {}).get(r.run_id, str(r.run_id)) for r in records],
            "variant": [r.variant for r in records],
            "metric": [r.metric_name for r in records],
            "value": [r.metric_value for r in records],
            "latency (ms)": [r.latency_ms for r in records],
            "size (MB)": [r.bytes / 1e6 for r in records],
            "status": [r.status for r in records],
        }
    )
    higher = not lower_is_better(str(frame["metric"].iloc[0]))
    values = frame["value"].fillna(float("-inf") if higher else float("inf")).tolist()
    frame["best for latency"] = _front(list(zip(values, frame["latency (ms)"], strict=True)), higher)
    frame["best for size"] = _front(list(zip(values, frame["size (MB)"], strict=True)), higher)
    return frame


# How the Train page names the settings fitted to the data and the device (core.plan).
FITTED_NAMES = {
    "image_size": "Image size",
    "batch_size": "Batch size",
    "workers": "Data-loading processes",
    "flip": "Horizontal flips",
    "budget_s": "Time budget",
    "head_first": "Head first",
}


def fitted_value(choice: Any) -> str:
    """A fitted setting's value in words (core.plan.Choice)."""
    value = choice.value
    if choice.key == "image_size":
        return f"{value} px"
    if choice.key == "budget_s":
        return f"{value:g} s" if value else "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


# What the Datasets page accepts, in words (the uploader's own refusal is terse and English).
UPLOAD_TYPES = ["csv", "tsv", "parquet", "jsonl", "zip"]
UPLOAD_TYPES_IN_WORDS = (
    "a table as CSV, TSV, Parquet or JSON Lines (.csv, .tsv, .parquet, .jsonl), instructions among them "
    "(prompt and response columns, or chat messages) and sentence pairs (source and target columns, "
    "or columns named by language such as en and es), or a zip (.zip) of "
    "class folders holding images, .txt files or WAV/FLAC clips, of clips with their transcripts "
    "(metadata.csv with file_name,transcription, or LibriSpeech .trans.txt files), or of images with "
    "boxes (COCO, YOLO, Pascal VOC) or masks (images/ and masks/); other files (Excel, plain .txt, single images) are "
    "refused: save a sheet as CSV, or zip the folders"
)


def upload_preview(filename: str, data: bytes, rows: int = 10) -> pd.DataFrame:
    """What a file holds before it is added: a table's first rows, or a zip's folders with
    how many files each holds and a few of their names."""
    import io
    import tempfile
    import zipfile

    from core.data import text

    name = Path(filename.replace("\\", "/")).name or "upload"
    if name.lower().endswith(".zip"):
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            files = [n for n in zf.namelist() if not n.endswith("/") and not n.startswith("__MACOSX/")]
        folders: dict[str, list[str]] = {}
        for entry in files:
            folder, _, base = entry.rpartition("/")
            folders.setdefault(folder or "(top level)", []).append(base)
        return pd.DataFrame(
            [
                {"folder": folder, "files": len(names), "for example": ", ".join(sorted(names)[:3])}
                for folder, names in sorted(folders.items())
            ]
        )
    from core.data.instructions import MESSAGES_NAMES

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        frame = text.read_table(path, nrows=rows, fields=1, nested=MESSAGES_NAMES)
    for column in frame.columns:  # chat turns, shown as the JSON they were written in
        if str(column).lower() in MESSAGES_NAMES:
            frame[column] = frame[column].map(
                lambda v: v if isinstance(v, str) else json.dumps(v, default=str)
            )
    return frame


def missing_values(report: dict[str, Any]) -> pd.Series:
    """Missing values per column, only the columns that have some (empty when none do)."""
    counts = pd.Series(report.get("missing_per_column", {}), name="missing values", dtype="int64")
    return counts[counts > 0]


def target_stats_table(report: dict[str, Any]) -> pd.DataFrame:
    """A regression target's mean, spread and range as a two-column table."""
    stats = report.get("target_stats", {})
    return pd.DataFrame({"statistic": list(stats), "value": [f"{float(v):.4g}" for v in stats.values()]})


def upload_limit_mb(settings_bytes: int, server_mb: int) -> int:
    """The largest upload the Datasets page offers, in MB as Streamlit's uploader counts: within
    the settings' limit and the server's, rounded down to a figure the uploader prints exactly
    (it prints whole units only, and switches to GB above 500 MB: 512 MB would read "1GB")."""
    mb = max(1, min(settings_bytes // (1024 * 1024), server_mb))
    if mb < 1000:
        return min(mb, 500)
    return mb // 1000 * 1000


# The Predict page's tables: an example row, a pasted row, batch results and their scores.


def example_row(dataset: DatasetInfo, config: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
    """The first row of a run's validation split (as its training split the table) with its
    target: (row number in the stored table, {column: value}); None when it cannot be read."""
    found = example_rows(dataset, config, 1)
    return found[0] if found else None


def example_rows(dataset: DatasetInfo, config: dict[str, Any], n: int) -> list[tuple[int, dict[str, Any]]]:
    """The first `n` rows of a run's validation split with their target, as `example_row`;
    none when the table cannot be read."""
    from core.runtime import as_category
    from core.tasks import split_indices  # numpy only, but its module imports torch: import late

    schema = dataset.schema
    target = schema.get("target")
    try:
        df = pd.read_parquet(Path(dataset.path) / "data.parquet")
    except Exception:  # a deleted or unreadable file: the form starts empty
        return []
    if target not in df.columns:
        return []
    kept = df[df[target].notna()]
    if kept.empty:
        return []
    classes = schema.get("classes")
    if classes:
        index = {c: i for i, c in enumerate(classes)}
        y = kept[target].map(lambda v: index.get(as_category(v) or "", -1)).to_numpy(np.int64)
    else:
        y = pd.to_numeric(kept[target], errors="coerce").to_numpy(np.float32)
    _, val = split_indices(
        y,
        stratify=bool(classes),
        val_fraction=float(config.get("val_fraction", 0.2)),
        seed=int(config.get("seed", 0)),
    )
    out = []
    for position in [int(i) for i in val[:n]] if len(val) else [0]:
        row = {str(c): kept[c].iloc[position] for c in kept.columns}  # each with its column's type
        out.append(
            (int(kept.index[position]), {c: (None if pd.isna(v) else _python(v)) for c, v in row.items()})
        )
    return out


def _python(value: Any) -> Any:
    """A numpy scalar as the Python value it holds (131, not np.int64(131))."""
    return value.item() if isinstance(value, np.generic) else value


def form_value(value: Any, codes: list[str] | None) -> Any:
    """A raw table value as the one-row form's field holds it: a float for a number field, one of
    the codes for a category field; None (missing) for what the field cannot hold."""
    from core.runtime import as_category

    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if codes is None:
        number_ = float(value)
        return None if math.isnan(number_) else number_
    text = as_category(value)
    return text if text in codes else None


def parse_row(line: str, columns: list[str], codes: dict[str, list[str]]) -> tuple[dict[str, Any], list[str]]:
    """One pasted CSV line holding the feature columns in order -> (form values, problems).

    Quotes work as in CSV ("a, b" is one value); an empty value is missing. A value a field
    cannot hold (text in a number field, a category the model never saw) is left missing and
    named in the problems."""
    import csv

    values = next(csv.reader([line.strip()]), [])
    if len(values) != len(columns):
        return {}, [
            f"the line has {len(values)} value{'s' * (len(values) != 1)}, the model takes {len(columns)}: "
            + ", ".join(columns)
        ]
    out: dict[str, Any] = {}
    problems: list[str] = []
    for column, raw in zip(columns, values, strict=True):
        try:
            out[column] = form_value(raw, codes.get(column))
        except ValueError:
            out[column] = None
            problems.append(f"{column}: '{raw.strip()}' is not a number")
            continue
        if out[column] is None and raw.strip() and column in codes:
            problems.append(f"{column}: '{raw.strip()}' is not a value the model knows")
    return out, problems


def table_predictions(
    frame: pd.DataFrame, predictions: list[Any], target: str, classification: bool
) -> pd.DataFrame:
    """Batch results: the prediction columns first, then the uploaded columns as they were."""
    first = f"predicted {target}" if target else "prediction"
    out = pd.DataFrame(index=frame.index)
    if classification:
        out[first] = [p.label for p in predictions]
        out["probability"] = [p.probabilities.get(p.label or "", float("nan")) for p in predictions]
    else:
        out[first] = [p.value for p in predictions]
    rest = frame.drop(columns=[c for c in out.columns if c in frame.columns])
    return pd.concat([out, rest], axis=1)


def scores_against_target(truth: pd.Series, predictions: list[Any], classification: bool) -> dict[str, float]:
    """Accuracy (classes) or RMSE and MAE (values) over the rows whose target is known."""
    from core.runtime import as_category

    if classification:
        pairs = [(as_category(t), p.label) for t, p in zip(truth, predictions, strict=True)]
        known = [(t, p) for t, p in pairs if t is not None]
        if not known:
            return {}
        return {"accuracy": sum(t == p for t, p in known) / len(known), "rows": float(len(known))}
    true = pd.to_numeric(truth, errors="coerce").to_numpy(np.float64)
    pred = np.array([np.nan if p.value is None else p.value for p in predictions], dtype=np.float64)
    ok = np.isfinite(true) & np.isfinite(pred)
    if not ok.any():
        return {}
    error = pred[ok] - true[ok]
    return {
        "rmse": float(np.sqrt(np.mean(error**2))),
        "mae": float(np.mean(np.abs(error))),
        "rows": float(ok.sum()),
    }


def top_table(prediction: Any, k: int = 5) -> pd.DataFrame:
    """A prediction's k most probable labels, best first."""
    return pd.DataFrame(prediction.top(k), columns=["label", "probability"])


def image_predictions(names: list[str], predictions: list[Any], k: int = 3) -> pd.DataFrame:
    """One row per image: its file, the label, its probability and the next best ones."""
    return pd.DataFrame(
        {
            "file": names,
            "prediction": [p.label for p in predictions],
            "probability": [p.probabilities.get(p.label or "", float("nan")) for p in predictions],
            f"top {k}": ["; ".join(f"{lab} {pr:.3f}" for lab, pr in p.top(k)) for p in predictions],
        }
    )
