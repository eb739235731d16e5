"""A finished run's model as one zip that runs anywhere with numpy and onnxruntime: the ONNX
file(s) of the run's export or of a measured certificate variant, the tokenizer and labels,
ascent_runtime.py (core/runtime.py: the code the studio predicts with), predict.py
(core/bundle_predict.py), a README with the inputs, outputs and certificate, and for a table
a CSV of validation rows to try it on."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from core import certificate, jobs, summary
from core.errors import ConfigError, NotFoundError

HERE = Path(__file__).resolve().parent
SEQ2SEQ = ("speech-recognition", "translation")
# How each task's predict.py is called, for the README (INPUT: what the bundle's example is).
USAGE = {
    "tabular-classification": "python predict.py example.csv",
    "tabular-regression": "python predict.py example.csv",
    "text-classification": 'python predict.py --text "Your text here."',
    "image-classification": "python predict.py photo.png",
    "audio-classification": "python predict.py clip.wav",
    "object-detection": "python predict.py photo.png --threshold 0.25",
    "semantic-segmentation": "python predict.py photo.png --masks masks/",
    "speech-recognition": "python predict.py clip.wav --beams 1",
    "translation": 'python predict.py --text "Your sentence here." --beams 1',
    "text-generation": 'python predict.py --text "Your question here." --max-new-tokens 64',
}
EXTRA = {  # what predict.py needs past numpy and onnxruntime, by task
    "speech-recognition": "tokenizers",
    "translation": "tokenizers",
    "text-generation": "tokenizers",
}


def variants(run_id: int) -> list[str]:
    """The variants a bundle can hold: fp32 (the run's export), then each certificate variant
    whose file(s) are on disk."""
    run = jobs.get_run(run_id)
    if _export(run_id) is None:
        raise ConfigError(f"run {run_id} is {run.status} and has no exported model to bundle")
    found = ["fp32"]
    for r in certificate.certificate(run_id):
        if r.variant in ("pytorch", "fp32") or r.variant in found:
            continue
        path = Path(r.path)
        if path.is_file() and (run.task not in SEQ2SEQ or certificate.decoder_file(path).is_file()):
            found.append(r.variant)
    return found


def _export(run_id: int) -> Path | None:
    path = next((Path(a.path) for a in jobs.artifacts(run_id) if a.kind == "onnx"), None)
    return path if path is not None and path.is_file() else None


def file_name(run_id: int, variant: str = "fp32") -> str:
    return f"ascent-run-{run_id}-{variant}.zip"


def contents(run_id: int, variant: str = "fp32") -> Iterator[tuple[str, Path | bytes]]:
    """(name in the bundle, file or bytes) of each member."""
    run = jobs.get_run(run_id)
    offered = variants(run_id)
    if variant not in offered:
        raise ConfigError(
            f"run {run_id} has no {variant} variant to bundle; choose from {', '.join(offered)}"
        )
    model = _export(run_id)
    assert model is not None  # variants() checked it
    records = {r.variant: r for r in certificate.certificate(run_id)}
    chosen = model if variant == "fp32" else Path(records[variant].path)
    graphs = [chosen, *([certificate.decoder_file(chosen)] if run.task in SEQ2SEQ else [])]
    yield "model.onnx", chosen
    if len(graphs) == 2:
        yield "decoder.onnx", graphs[1]
    for graph in graphs:  # weights past 2 GB beside a graph, under the name the graph gives them
        for data in sorted(graph.parent.glob(graph.name + "*.data")):
            yield data.name, data
    tokenizer = model.parent / "tokenizer.json"
    if tokenizer.is_file():
        yield "tokenizer.json", tokenizer
    labels = json.loads(_meta(model).get("ascent.labels", "[]"))
    if labels:
        yield "labels.json", json.dumps(labels, indent=1, ensure_ascii=False).encode()
    source = (HERE / "bundle_predict.py").read_text(encoding="utf-8")
    assert "\nfrom core import runtime as rt\n" in source
    yield (
        "predict.py",
        source.replace("\nfrom core import runtime as rt\n", "\nimport ascent_runtime as rt\n").encode(),
    )
    yield "ascent_runtime.py", HERE / "runtime.py"
    about = {"run": run_id, "name": run.name, "task": run.task, "model": run.model, "variant": variant}
    yield "bundle.json", json.dumps(about, indent=1).encode()
    example = _example_csv(run) if run.task in ("tabular-classification", "tabular-regression") else None
    if example:
        yield "example.csv", example
    yield "README.md", readme(run_id, variant, example is not None).encode()


def _meta(model: Path) -> dict[str, Any]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(model), load_external_data=False).metadata_props}


def _example_csv(run: Any, rows: int = 5) -> bytes | None:
    """The first validation rows without their target, as predict.py reads them."""
    from core.data.ingest import get_dataset

    try:
        dataset = get_dataset(run.dataset_id) if run.dataset_id is not None else None
    except NotFoundError:  # a deleted dataset: no rows to show
        return None
    found = [row for _, row in summary.example_rows(dataset, run.config, rows)] if dataset is not None else []
    if not found or dataset is None:
        return None
    target = dataset.schema.get("target")
    columns = [c for c in found[0] if c != target]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(found)
    return out.getvalue().encode()


def readme(run_id: int, variant: str, example: bool) -> str:
    """The bundle's README: what it is, how to run it, what goes in and comes out, and the
    certificate measured for the run."""
    run = jobs.get_run(run_id)
    model = _export(run_id)
    assert model is not None
    meta = _meta(model)
    inputs = json.loads(meta.get("ascent.inputs", "[]"))
    labels = json.loads(meta.get("ascent.labels", "[]"))
    key, value = summary.main_metric(run)
    extra = EXTRA.get(run.task)
    lines = [
        f"# {run.name} (Ascent run {run.id}, {variant})",
        "",
        f"A {run.task} model ({run.model}) trained in Ascent"
        + (
            f": best {summary.metric_label(key)} {value:.4g} on its validation split."
            if value is not None
            else "."
        ),
        "",
        "## Run it",
        "",
        "```",
        "pip install numpy onnxruntime" + (f" {extra}" if extra else "") + "   # or onnxruntime-gpu",
        USAGE.get(run.task, "python predict.py INPUT"),
        "```",
        "",
        "One prediction per line; `--json` prints one JSON object per line. A bad input stops "
        "with one line on standard error (exit code 2)."
        + (" `example.csv` holds validation rows to try." if example else ""),
        "",
        "## Files",
        "",
        "- `model.onnx`"
        + (" and `decoder.onnx` (the decoding step)" if run.task in SEQ2SEQ else "")
        + f": the model ({variant}); its inputs, labels and task are also in its `metadata_props`.",
        "- `predict.py`: the command above; `ascent_runtime.py`: the code it and Ascent predict with "
        "(numpy and onnxruntime; Pillow, soundfile, scipy and tokenizers when installed, else its "
        "own PNG/BMP/PPM and WAV readers, resampler and WordPiece tokenizer).",
        "- `bundle.json`: run, task, variant"
        + ("; `labels.json`: the classes" if labels else "")
        + ("; `tokenizer.json`: the tokenizer" if (model.parent / "tokenizer.json").is_file() else "")
        + ".",
        "",
        "## Inputs",
        "",
        *_inputs(run.task, inputs, meta.get("ascent.preprocess", "")),
        "",
        "## Outputs",
        "",
        _outputs(run.task, labels),
        "",
        *_export_check(run),
        *_certificate_table(run_id, variant),
    ]
    return "\n".join(lines) + "\n"


def _inputs(task: str, inputs: list[dict[str, Any]], preprocess: str) -> list[str]:
    if task in ("tabular-classification", "tabular-regression"):
        rows = ["| column | type | values |", "|---|---|---|"]
        for spec in inputs:
            for c in spec.get("columns", []):
                codes = spec.get("codes", {}).get(c)
                kind = "number" if spec.get("dtype") == "float32" else "category"
                shown = (
                    ", ".join(map(str, codes[:8])) + (", ..." if codes and len(codes) > 8 else "")
                    if codes
                    else "any number (empty: missing)"
                )
                rows.append(f"| {c} | {kind} | {shown} |")
        return ["A CSV file with a header naming these columns (others are ignored):", "", *rows]
    said = [f"`{s['name']}`: {s.get('dtype', '')} {s.get('shape', '')}" for s in inputs]
    return [
        *(f"- {s}" for s in said),
        *([f"- done for you by predict.py: {preprocess}"] if preprocess else []),
    ]


def _outputs(task: str, labels: list[str]) -> str:
    shown = ", ".join(labels[:20]) + (f" and {len(labels) - 20} more" if len(labels) > 20 else "")
    return {
        "tabular-regression": "A number per row.",
        "object-detection": f"Boxes (label, score, x0 y0 x1 y1 in the image's pixels) of: {shown}.",
        "semantic-segmentation": f"Each class's share of the pixels (and a mask PNG with --masks) of: {shown}.",
        "speech-recognition": "The transcript of each clip.",
        "translation": "The translation of each text.",
        "text-generation": "The text the model continues the prompt with.",
    }.get(task, f"A class and its probability, one of: {shown}.")


def _export_check(run: Any) -> list[str]:
    """The run's own check of model.onnx (fp32) against PyTorch, as its export measured it."""
    found = {k: v for k, v in run.metrics.items() if k.startswith("export_")}
    if "export_max_abs_diff" not in found:
        return []
    said = [f"max |ONNX - PyTorch| {found['export_max_abs_diff']:.2g}"]
    said += [
        f"{summary.metric_label(k).removeprefix('ONNX ')} {v:.3f}"
        for k, v in found.items()
        if k.endswith("_agreement")
    ]
    n = int(found.get("export_n_samples", 0))
    return [
        "## Export check",
        "",
        f"The fp32 model.onnx against PyTorch on {n} validation samples: {', '.join(said)}.",
        "",
    ]


def _certificate_table(run_id: int, variant: str) -> list[str]:
    records = certificate.certificate(run_id)
    if not records:
        return [
            "## Certificate",
            "",
            "Not measured (Measure the certificate on the run's page, or "
            f"`python -m core export --run {run_id}`).",
        ]
    rows = ["| variant | status | metric (change) | agreement | max diff | MB |", "|---|---|---|---|---|---|"]
    for r in records:
        metric = (
            f"{summary.metric_label(r.metric_name)} {r.metric_value:.4g} ({r.metric_change:+.3g})"
            if r.metric_name and r.metric_value is not None and r.metric_change is not None
            else "-"
        )
        agreement = "-" if r.top1_agreement is None else f"{r.top1_agreement:.3f}"
        diff = "-" if r.max_abs_diff is None else f"{r.max_abs_diff:.2g}"
        mark = " (this bundle)" if r.variant == variant else ""
        rows.append(
            f"| {r.variant}{mark} | {r.status} | {metric} | {agreement} | {diff} | {r.bytes / 1e6:.2f} |"
        )
    return [
        "## Certificate",
        "",
        "Each variant checked on the run's whole validation split against PyTorch:",
        "",
        *rows,
    ]


def write(run_id: int, dest: Path, variant: str = "fp32") -> Path:
    """The bundle written to `dest` (a file, or a folder to put it in under its own name); a
    file appears whole or not at all."""
    members = list(contents(run_id, variant))  # the run and the variant are refused first
    if dest.is_dir():
        dest = dest / file_name(run_id, variant)
    elif dest.suffix.lower() != ".zip":
        raise ConfigError(
            f"{dest} is neither a folder nor a .zip file; give --out a .zip file or an existing folder"
        )
    if not dest.parent.is_dir():
        raise ConfigError(f"{dest.parent} is not a folder; give --out a .zip file in an existing folder")
    _write(members, dest, file_name(run_id, variant).removesuffix(".zip"))
    return dest


def _write(members: list[tuple[str, Path | bytes]], dest: Path, folder: str) -> None:
    partial = dest.with_name(f".{dest.name}.partial")
    try:
        with zipfile.ZipFile(partial, "w") as z:
            for name, source in members:
                # Weights barely shrink: stored as they are (a generator's bundle is written in
                # seconds); text is compressed.
                kind = zipfile.ZIP_STORED if name.endswith((".onnx", ".data")) else zipfile.ZIP_DEFLATED
                info = zipfile.ZipInfo(f"{folder}/{name}", date_time=time.localtime()[:6])
                info.external_attr = 0o644 << 16  # rw-r--r-- when unzipped
                info.compress_type = kind
                with z.open(info, "w", force_zip64=True) as out:
                    if isinstance(source, Path):
                        with source.open("rb") as f:
                            shutil.copyfileobj(f, out, 1 << 20)
                    else:
                        out.write(source)
        os.replace(partial, dest)
    finally:
        partial.unlink(missing_ok=True)


def cached(run_id: int, variant: str = "fp32") -> Path:
    """The bundle in the run's folder, written again when what it holds changed (a variant
    measured again, a certificate that adds a row to its README)."""
    import hashlib

    members = list(contents(run_id, variant))
    stamp = hashlib.sha256(
        json.dumps(
            [
                (
                    name,
                    [s.stat().st_size, s.stat().st_mtime_ns]
                    if isinstance(s, Path)
                    else hashlib.sha256(s).hexdigest(),
                )
                for name, s in members
            ]
        ).encode()
    ).hexdigest()
    out = jobs.run_dir(run_id) / "bundles" / file_name(run_id, variant)
    mark = out.with_name(out.name + ".stamp")
    if not out.is_file() or not mark.is_file() or mark.read_text() != stamp:
        out.parent.mkdir(parents=True, exist_ok=True)
        _write(members, out, out.stem)
        mark.write_text(stamp)
    return out


CALLS = {  # Python using the bundle's runtime in one's own code, by task
    "text-classification": 'model = rt.Predictor("model.onnx")\nfor p in model.predict_texts(["Your text here."]):\n'
    "    print(p.label, p.probabilities)",
    "image-classification": 'model = rt.Predictor("model.onnx")\nfor p in model.predict_images(["photo.png"]):\n'
    "    print(p.label, p.probabilities)",
    "audio-classification": 'model = rt.Predictor("model.onnx")\nfor p in model.predict_audio(["clip.wav"]):\n'
    "    print(p.label, p.probabilities)",
    "object-detection": 'model = rt.Predictor("model.onnx")\nfor box in model.detect("photo.png", threshold=0.25):\n'
    "    print(box.label, box.score, box.box)",
    "semantic-segmentation": 'model = rt.Predictor("model.onnx")\nfound = model.segment("photo.png")\n'
    "print(found.shares)  # found.mask: the class of each pixel",
    "speech-recognition": 'model = rt.Transcriber("model.onnx")  # needs tokenizers\n'
    'print(model.transcribe(["clip.wav"])[0].text)',
    "translation": 'model = rt.Translator("model.onnx")  # needs tokenizers\n'
    'print(model.translate(["Your sentence here."])[0].text)',
    "text-generation": 'model = rt.Generator("model.onnx")  # needs tokenizers\n'
    'print(model.generate("Your question here.", max_new_tokens=64).text)',
}


def snippets(run_id: int) -> dict[str, str]:
    """How to use the run's bundle: from a shell with predict.py, and from Python with the
    runtime it holds (a table's call filled with a validation row's columns and values)."""
    run = jobs.get_run(run_id)
    folder = file_name(run_id).removesuffix(".zip")
    extra = EXTRA.get(run.task)
    shell = (
        f"unzip {folder}.zip && cd {folder}\n"
        f"pip install numpy onnxruntime{' ' + extra if extra else ''}   # or onnxruntime-gpu\n"
        f"{USAGE.get(run.task, 'python predict.py INPUT')}"
    )
    if run.task in ("tabular-classification", "tabular-regression"):
        example = _example_csv(run, rows=1)
        row = next(csv.DictReader(io.StringIO(example.decode()))) if example else {}
        columns = {k: [_number(v)] for k, v in row.items()}
        said = "p.value" if run.task == "tabular-regression" else "p.label, p.probabilities"
        call = (
            'model = rt.Predictor("model.onnx")\n'
            "rows = {  # each column: its values, a row at a time\n"
            + "".join(f"    {k!r}: {v!r},\n" for k, v in columns.items())
            + "}\n"
            f"for p in model.predict_table(rows):\n    print({said})"
        )
    else:
        call = CALLS.get(run.task, "")
    python = f"# in the unzipped folder {folder}/\nimport ascent_runtime as rt\n\n{call}\n"
    return {"shell": shell, "python": python}


def _number(value: str) -> Any:
    try:
        return float(value)
    except ValueError:
        return value
