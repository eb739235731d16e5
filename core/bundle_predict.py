"""predict.py of a model bundle: predictions from the ONNX file beside it.

    python predict.py INPUT... [--text TEXT ...] [--json] [--threshold T] [--beams N]
                      [--masks DIR] [--max-new-tokens N]

Needs numpy and onnxruntime (or onnxruntime-gpu) only. Inputs by task: CSV files of rows
(tables), PNG, BMP or PPM images (any format Pillow reads when it is installed), WAV clips
(FLAC with soundfile), and texts with --text. One prediction per line; --json prints one JSON
object per line instead. A bad input ends it with one line on standard error and exit code 2.

The model's code is ascent_runtime.py beside this file: the one Ascent's studio, CLI and
endpoint use (this file is core/bundle_predict.py in Ascent, where it imports core.runtime;
the bundle swaps that import for the copy).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from core import runtime as rt

HERE = Path(__file__).resolve().parent
TABLES = ("tabular-classification", "tabular-regression")
TEXTS = ("text-classification", "translation", "text-generation")
NEEDS_TOKENIZERS = ("speech-recognition", "translation", "text-generation")
TAKES = {
    **dict.fromkeys(TABLES, "CSV files of rows"),
    **dict.fromkeys(("image-classification", "object-detection", "semantic-segmentation"), "image files"),
    **dict.fromkeys(("audio-classification", "speech-recognition"), "WAV or FLAC clips"),
}


class Refused(Exception):
    """Input this model cannot take, said in one line."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Predictions from the model in this bundle.")
    parser.add_argument("inputs", nargs="*", help="CSV files of rows, image files or audio clips")
    parser.add_argument("--text", action="append", default=[], help="a text (repeat for more)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument(
        "--threshold", type=float, default=rt.DEFAULT_THRESHOLD, help="detection: the lowest score"
    )
    parser.add_argument("--beams", type=int, default=1, help="speech, translation: beam width (1-8)")
    parser.add_argument("--masks", type=Path, help="segmentation: write each mask as a PNG into this folder")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="generation: tokens to add at most")
    a = parser.parse_args(argv)
    try:
        for record, line in predict(a):
            print(json.dumps(record, ensure_ascii=False) if a.json else line, flush=True)
    except (Refused, rt.RuntimeInputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader left (| head): nothing more to say
        sys.stderr.close()
    return 0


def _load(a: argparse.Namespace) -> tuple[str, Any]:
    """The task and its runtime object (the Predictor, or the decoding one of its task)."""
    model, about = HERE / "model.onnx", HERE / "bundle.json"
    if not model.is_file() or not about.is_file():
        raise Refused("model.onnx or bundle.json is missing beside predict.py; unzip the whole bundle")
    task = str(json.loads(about.read_text(encoding="utf-8"))["task"])
    kinds = {"speech-recognition": "Transcriber", "translation": "Translator", "text-generation": "Generator"}
    try:
        runtime = getattr(rt, kinds.get(task, "Predictor"))(model)
    except ImportError as exc:
        if task in NEEDS_TOKENIZERS:
            raise Refused(f"a {task} model needs the tokenizers package: pip install tokenizers") from exc
        raise
    return task, runtime


def predict(a: argparse.Namespace) -> Any:
    """(JSON record, line) for each prediction, in the order of the inputs."""
    task, model = _load(a)
    if task in TEXTS:
        if a.inputs or not a.text:
            raise Refused(f"a {task} model takes texts: give each with --text")
    elif a.text or not a.inputs:
        raise Refused(f"a {task} model takes {TAKES.get(task, 'files')}: give their paths")
    if not 1 <= a.beams <= 8:
        raise Refused(f"--beams {a.beams}: give 1 to 8")
    for path in map(Path, a.inputs):
        if not path.is_file():
            raise Refused(f"{path} is not a file")
    if task in TABLES:
        yield from _tables(model, [Path(p) for p in a.inputs])
    elif task == "text-classification":
        for text, p in zip(a.text, model.predict_texts(a.text), strict=True):
            yield (
                {"text": text, "label": p.label, "top": p.top(3)},
                f"{p.label} ({p.probabilities[p.label]:.3f})",
            )
    elif task == "translation":
        for text, found in zip(a.text, model.translate(a.text, beams=a.beams), strict=True):
            yield {"source": text, **dataclasses.asdict(found)}, found.text
    elif task == "text-generation":
        for prompt in a.text:
            made = model.generate(prompt, max_new_tokens=a.max_new_tokens)
            yield {"prompt": prompt, **dataclasses.asdict(made)}, made.text
    else:
        for path in map(Path, a.inputs):
            try:
                yield _file(task, model, path, a)
            except rt.RuntimeInputError as exc:
                raise Refused(f"{path.name}: {exc}") from exc


def _tables(model: Any, paths: list[Path]) -> Any:
    for path in paths:
        try:
            with path.open(newline="", encoding="utf-8-sig") as f:
                rows = list(csv.DictReader(f))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise Refused(f"{path.name} is not a readable CSV file ({exc})") from exc
        if not rows:
            raise Refused(f"{path.name} has no rows under its header")
        table = {c: [row.get(c) for row in rows] for c in rows[0]}
        for i, p in enumerate(model.predict_table(table)):
            where = {"file": path.name, "row": i}
            if p.label is None:
                yield {**where, "value": p.value}, f"{p.value:.6g}"
            else:
                yield (
                    {**where, "label": p.label, "probabilities": p.probabilities},
                    (f"{p.label} ({p.probabilities[p.label]:.3f})"),
                )


def _file(task: str, model: Any, path: Path, a: argparse.Namespace) -> tuple[dict[str, Any], str]:
    if task in ("image-classification", "audio-classification"):
        (p,) = (model.predict_images if task.startswith("image") else model.predict_audio)([path])
        return {"file": path.name, "label": p.label, "top": p.top(3)}, (
            f"{path.name}: {p.label} ({p.probabilities[p.label]:.3f})"
        )
    if task == "object-detection":
        boxes = model.detect(path, a.threshold)
        found = [{"label": b.label, "score": b.score, "box": list(b.box)} for b in boxes]
        said = "; ".join(f"{b.label} {b.score:.2f} [{' '.join(f'{v:.0f}' for v in b.box)}]" for b in boxes)
        return {"file": path.name, "boxes": found}, f"{path.name}: {said or 'nothing found'}"
    if task == "semantic-segmentation":
        seg = model.segment(path)
        shares = {k: round(v, 4) for k, v in seg.shares.items() if v > 0}
        record: dict[str, Any] = {"file": path.name, "shares": shares}
        if a.masks is not None:
            a.masks.mkdir(parents=True, exist_ok=True)
            out = a.masks / f"{path.stem}.mask.png"
            out.write_bytes(rt.mask_png(seg.mask, len(model.labels)))
            record["mask"] = str(out)
        ranked = sorted(shares.items(), key=lambda kv: -kv[1])
        return record, f"{path.name}: " + ", ".join(f"{k} {v:.0%}" for k, v in ranked)
    if task == "speech-recognition":
        (heard,) = model.transcribe([path], beams=a.beams)
        return {"file": path.name, **dataclasses.asdict(heard)}, f"{path.name}: {heard.text}"
    raise Refused(f"this bundle's task '{task}' is not one predict.py knows")


if __name__ == "__main__":
    sys.exit(main())
