"""The command line: `python -m core ...`, the same operations as the pages.

Every command takes --json and then prints exactly one JSON document. Errors print one line
on stderr and exit non-zero.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

from core.errors import AscentError, ConfigError, PredictError


def to_jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, datetime):
        return obj.isoformat()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _fmt_time(t: datetime | None) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S") if t else "-"


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(r, widths, strict=False)) for r in [header, *rows]]
    return "\n".join(lines)


# --- commands: each returns (json document, human text) ------------------------------------


class _StageLine:
    """The stage a `datasets add` is at, on one line of stderr rewritten in place (a terminal)."""

    def __init__(self) -> None:
        self.shown = 0

    def __call__(self, stage: str, done: int, total: int) -> None:
        line = f"{stage} {done:,}/{total:,}" if total else f"{stage}…"
        sys.stderr.write("\r" + line.ljust(self.shown))
        sys.stderr.flush()
        self.shown = len(line)

    def close(self) -> None:
        if self.shown:
            sys.stderr.write("\r" + " " * self.shown + "\r")
            sys.stderr.flush()


def _clip_problems(rep: dict[str, Any]) -> str:
    """The lines of an audio report about clips left out or suspect."""
    text = ""
    if rep["unreadable"]:
        text += "\nunreadable, left out: " + "; ".join(f"{k} ({v})" for k, v in rep["unreadable"].items())
    if rep.get("too_long"):
        text += f"\nover {rep['max_clip_seconds']:g} s, left out: " + "; ".join(
            f"{k} ({v:g} s)" for k, v in rep["too_long"].items()
        )
    for key in ("silent", "clipped"):
        if rep[key]:
            text += f"\n{key}: {', '.join(rep[key][:5])}"
    return text


def cmd_datasets_add(a: argparse.Namespace) -> tuple[Any, str]:
    from contextlib import nullcontext

    from core.data import stages
    from core.data.ingest import ingest_file

    line = _StageLine() if not a.json and sys.stderr.isatty() else None
    try:
        with stages.reporting(line) if line is not None else nullcontext():
            ds = ingest_file(
                a.path,
                name=a.name,
                target=a.target,
                task=a.task,
                text_column=a.text_column,
                source_column=a.source_column,
                target_column=a.target_column,
            )
    finally:
        if line is not None:
            line.close()
    rep = ds.report
    if ds.task == "text-classification":
        lengths = rep["length_tokens"]
        text = (
            f"dataset {ds.id} '{ds.name}': {ds.task}, {ds.n_items} texts in {len(ds.schema['classes'])} classes "
            f"(text '{ds.schema['text_column']}', label '{ds.schema['label_column']}')\n"
            f"length in tokens: median {lengths['median']:g}, 95% under {lengths['p95']:g}, max {lengths['max']}"
        )
        for key in ("empty_texts", "missing_labels", "duplicate_texts", "conflicting_duplicates"):
            if rep[key]:
                text += f"\n{key.replace('_', ' ')}: {rep[key]}"
    elif ds.task == "audio-classification":
        secs = rep["seconds"]
        text = (
            f"dataset {ds.id} '{ds.name}': {ds.task}, {ds.n_items} clips in {len(ds.schema['classes'])} classes\n"
            f"duration: median {secs['median']:.2f} s, 95% under {secs['p95']:.2f} s -> clips of {ds.schema['clip_seconds']:g} s; "
            f"sample rates {rep['sample_rates']}, channels {rep['channels']}"
        )
        text += _clip_problems(rep)
    elif ds.task == "speech-recognition":
        secs, words = rep["seconds"], rep["words"]
        text = (
            f"dataset {ds.id} '{ds.name}': {ds.task} ({rep['layout']}), {ds.n_items} clips, {rep['minutes']:g} min; "
            f"duration: median {secs['median']:.2f} s, max {secs['max']:.2f} s; words per clip: median "
            f"{words['median']:g}, {words['vocabulary']} different; {rep['words_per_second']['median']:g} words/s"
        )
        if rep["left_out"]:
            text += "\nleft out: " + "; ".join(f"{n} {why}" for why, n in rep["left_out"].items())
        if rep["untranscribed_count"]:
            text += f"\nclips without a transcript, left out: {', '.join(rep['untranscribed'][:5])}"
            text += f" ({rep['untranscribed_count']} in all)" if rep["untranscribed_count"] > 5 else ""
        if rep["odd_rate"]:
            text += "\nwords per second unlike speech (wrong transcript?): " + "; ".join(
                f"{k} ({v:g})" for k, v in list(rep["odd_rate"].items())[:5]
            )
        text += _clip_problems(rep)
    elif ds.task == "translation":
        words, langs = rep["length_words"], rep["languages"]
        named = f" ({langs['source']} to {langs['target']})" if langs["source"] and langs["target"] else ""
        text = (
            f"dataset {ds.id} '{ds.name}': {ds.task}{named}, {ds.n_items} pairs (source '{rep['columns']['source']}', "
            f"target '{rep['columns']['target']}'); words: source median {words['source']['median']:g}, "
            f"target median {words['target']['median']:g}, max {max(words['source']['max'], words['target']['max'])}"
        )
        if rep["left_out"]:
            text += "\nleft out: " + "; ".join(f"{n} {why}" for why, n in rep["left_out"].items())
        for key, words_ in (
            ("duplicate_pairs", "duplicate pairs"),
            ("untranslated", "target same as source (untranslated?)"),
            ("misaligned", "lengths over 3x apart (misaligned?)"),
        ):
            if rep[key]:
                text += f"\n{words_}: {rep[key]}"
    elif ds.task == "image-classification":
        text = f"dataset {ds.id} '{ds.name}': {ds.task}, {ds.n_items} images in {len(ds.schema['classes'])} classes"
        if rep["unreadable"]:
            text += f"\nunreadable, left out: {', '.join(rep['unreadable'])}"
        if rep["cross_class_duplicates"]:
            text += f"\nsame image in several classes (label errors?): {rep['cross_class_duplicates'][:3]}"
    elif ds.task == "object-detection":
        objects = rep["objects_per_image"]
        text = (
            f"dataset {ds.id} '{ds.name}': {ds.task} ({rep['layout']}), {ds.n_items} images, {rep['boxes']} boxes "
            f"in {len(ds.schema['classes'])} classes; objects per image: median {objects['median']:g}, "
            f"max {objects['max']}; {rep['background_images']} images without objects"
        )
        if rep["unreadable"]:
            text += f"\nunreadable, left out: {', '.join(rep['unreadable'])}"
    elif ds.task == "semantic-segmentation":
        shares = "  ".join(f"{k} {v:.1%}" for k, v in rep["class_pixel_share"].items())
        text = (
            f"dataset {ds.id} '{ds.name}': {ds.task} ({rep['layout']}), {ds.n_items} images, "
            f"{len(ds.schema['classes'])} classes\npixels: {shares}"
        )
        if rep["unreadable"]:
            text += f"\nunreadable, left out: {', '.join(rep['unreadable'])}"
    elif ds.task == "text-generation":
        lengths = rep["length_tokens"]
        text = (
            f"dataset {ds.id} '{ds.name}': {ds.task} ({rep['layout']}), {ds.n_items} examples; length in "
            f"{rep['length_unit']}: median {lengths['median']:g}, longest {lengths['max']}"
        )
        if rep["over_context"]:
            text += f"; {rep['over_context']} over {rep['context']} tokens (raise --max-length to learn them)"
        if rep["left_out"]:
            text += "\nleft out: " + "; ".join(f"{n} with {why}" for why, n in rep["left_out"].items())
    else:
        text = (
            f"dataset {ds.id} '{ds.name}': {ds.task}, {ds.n_items} rows, target '{ds.schema['target']}'\n"
            f"features: {', '.join(f['name'] for f in ds.schema['features'])}"
        )
    if rep.get("dropped_columns"):
        text += "\ndropped: " + "; ".join(f"{c} ({r})" for c, r in rep["dropped_columns"].items())
    if "class_counts" in rep:
        imbalance = f" (imbalance {rep['imbalance_ratio']})" if "imbalance_ratio" in rep else ""
        text += f"\n{'boxes per class' if ds.task == 'object-detection' else 'classes'}: {rep['class_counts']}{imbalance}"
    return ds, text


def cmd_datasets_list(a: argparse.Namespace) -> tuple[Any, str]:
    from core.data.ingest import list_datasets

    items = list_datasets()
    rows = [
        [
            str(d.id),
            d.name,
            f"v{d.version}" + (f" of {d.parent_id}" if d.parent_id is not None else ""),
            d.task,
            str(d.n_items),
            _fmt_time(d.created_at),
        ]
        for d in items
    ]
    headers = ["id", "name", "version", "task", "rows", "created"]
    return items, _table(rows, headers) if rows else "no datasets yet"


def cmd_datasets_show(a: argparse.Namespace) -> tuple[Any, str]:
    from core.data.ingest import get_dataset

    ds = get_dataset(a.id)
    return ds, json.dumps(to_jsonable(ds), indent=2)


def cmd_datasets_revise(a: argparse.Namespace) -> tuple[Any, str]:
    from core.data.versions import parse_relabels, revise

    ds = revise(a.id, exclude=a.exclude or [], relabel=parse_relabels(a.relabel or []))
    change = ds.report["revision"]
    text = (
        f"dataset {ds.id} '{ds.name}' v{ds.version}, made from dataset {a.id}: {ds.n_items} items "
        f"({len(change['excluded'])} excluded, {len(change['relabelled'])} relabelled); "
        f"dataset {a.id} and its runs are unchanged"
    )
    return ds, text


def cmd_doctor(a: argparse.Namespace) -> tuple[Any, str]:
    from contextlib import nullcontext

    from core import doctor
    from core.data import stages

    line: Any = _StageLine() if not a.json and sys.stderr.isatty() else None
    progress = os.environ.get(doctor.PROGRESS_FILE)
    if progress:  # the studio follows the examination through this file
        from core import atomic

        def line(stage: str, done: int, total: int) -> None:
            atomic.write_json(Path(progress), {"stage": stage, "done": done, "total": total})

    try:
        with stages.reporting(line) if line is not None else nullcontext():
            found = doctor.examine(a.dataset, run_id=a.run, limit=a.limit, folds=a.folds)
    finally:
        if isinstance(line, _StageLine):
            line.close()
    return found, doctor_text(found)


def doctor_text(r: dict[str, Any]) -> str:
    """The doctor's report as a few paragraphs for a terminal."""
    out = [
        f"dataset {r['dataset']} '{r['name']}' v{r['version']}: {r['judged']} of {r['items']} items judged "
        f"by {r['method']}; out-of-sample accuracy {r['accuracy']:.1%} ({r['seconds']:g} s)",
        f"likely label errors: {r['label_issues_found']}",
    ]
    rows = [[str(s["item"]), s["given"], s["suggested"], f"{s['quality']:.3g}"] for s in r["label_issues"]]
    if rows:
        out.append(_table(rows, ["item", "given", "suggested", "label quality"]))
    out.append(f"near-duplicate pairs: {r['duplicates_found']} ({r['leaks']} across train and validation)")
    rows = [
        [f"{d['a']}, {d['b']}", " / ".join(d["labels"]), f"{d['similarity']:.4f}", "yes" if d["leak"] else ""]
        for d in r["duplicates"]
    ]
    if rows:
        out.append(_table(rows, ["items", "labels", "similarity", "leak"]))
    out.append(f"outliers: {r['outliers_found']}")
    rows = [
        [str(o["item"]), o["label"], f"{o['distance']:.3g} (typical {o['typical']:.3g})"]
        for o in r["outliers"]
    ]
    if rows:
        out.append(_table(rows, ["item", "label", "distance to neighbours"]))
    if r["overlap"]:
        out.append(
            "classes the model mixes up: "
            + "; ".join(f"{o['a']} / {o['b']} ({o['items']} items)" for o in r["overlap"][:5])
        )
    return "\n".join(out)


def cmd_datasets_delete(a: argparse.Namespace) -> tuple[Any, str]:
    from core.data.ingest import delete_dataset

    delete_dataset(a.id)
    return {"deleted": a.id}, f"dataset {a.id} deleted"


def _run_document(run_id: int) -> dict[str, Any]:
    from core import jobs

    doc = to_jsonable(jobs.get_run(run_id))
    doc["artifacts"] = {art.kind: art.path for art in jobs.artifacts(run_id)}
    return doc


def _run_text(doc: dict[str, Any]) -> str:
    lines = [
        f"run {doc['id']} '{doc['name']}': {doc['status']}  ({doc['task']} / {doc['model']}, device {doc['device'] or '-'})"
    ]
    if doc["metrics"]:
        lines.append("metrics: " + "  ".join(f"{k}={v:.4g}" for k, v in sorted(doc["metrics"].items())))
    for kind, path in doc.get("artifacts", {}).items():
        lines.append(f"{kind}: {path}")
    if doc["error"]:
        lines.append(f"error: {doc['error']}")
    return "\n".join(lines)


class _ProgressBar:
    """A run's progress on stderr while the CLI waits: epoch, step, ETA and the main metric."""

    def __init__(self, run_id: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(
            total=0,
            desc=f"run {run_id} queued",
            unit="step",
            file=sys.stderr,
            dynamic_ncols=True,
            bar_format="{desc} {bar} {n_fmt}/{total_fmt} steps {postfix}",
        )

    def __call__(self, run: Any) -> None:
        from core.summary import format_eta, main_metric

        p = run.progress or {}
        if run.status == "running" and p.get("total_steps"):
            self.bar.total = int(p["total_steps"])
            self.bar.n = int(p.get("step") or 0)
            self.bar.set_description_str(
                f"run {run.id} · epoch {p.get('epoch')}/{p.get('epochs')} · {p.get('phase')}"
            )
            key, best = main_metric(run)
            metric = f" · best {key} {best:.4g}" if best is not None else ""
            self.bar.set_postfix_str(f"ETA {format_eta(p.get('eta_s'))}{metric}", refresh=False)
        elif run.status == "running":
            self.bar.set_description_str(f"run {run.id} · {p.get('phase') or 'preparing'}", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def _wait_for(run_id: int, timeout: float | None, *, quiet: bool = False) -> tuple[Any, str]:
    from core import jobs
    from core.worker import start_background_worker

    if not jobs.worker_alive():
        start_background_worker()
    bar = _ProgressBar(run_id) if not quiet and sys.stderr.isatty() else None
    try:
        run = jobs.wait(run_id, timeout_s=timeout, on_poll=bar)
    finally:
        if bar is not None:
            bar.close()
    doc = _run_document(run_id)
    if run.status != "succeeded":
        raise _RunEnded(doc)
    return doc, _run_text(doc)


class _RunEnded(Exception):
    """A waited-for run that did not succeed: print it, then exit non-zero."""

    def __init__(self, doc: dict[str, Any]) -> None:
        reason = (doc["error"] or "").split("\n", 1)[0] or "it has not finished yet"
        super().__init__(f"run {doc['id']} is {doc['status']}: {reason}")
        self.doc = doc


def _budget(text: str) -> float | None:
    from core.plan import parse_budget

    try:
        return parse_budget(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_train(a: argparse.Namespace) -> tuple[Any, str]:
    from core import jobs

    cfg = jobs.config_for(
        a.dataset,
        model=a.model,
        epochs=a.epochs,
        batch_size=a.batch_size,
        lr=a.lr,
        seed=a.seed,
        device=a.device,
        precision=a.precision,
        name=a.name,
        patience=a.patience,
        weights=a.weights,
        init_from_run=a.init_from,
        image_size=a.image_size,
        augment=False if a.no_augment else None,
        flip=True if a.flip else None,
        head_first=a.head_first,
        budget_s=a.budget,
        processes=a.processes,
        freeze_epochs=a.freeze_epochs,
        backbone_lr_mult=a.backbone_lr_mult,
        workers=a.workers,
        cache=a.cache,
        max_length=a.max_length,
        freeze_layers=a.freeze_layers,
        grad_accum=a.grad_accum,
        warmup_fraction=a.warmup,
        weight_decay=a.weight_decay,
        sample_rate=a.sample_rate,
        clip_seconds=a.clip_seconds,
        n_mels=a.n_mels,
        finetune=a.finetune,
        lora_rank=a.lora_rank,
        lora_alpha=a.lora_alpha,
        lora_dropout=a.lora_dropout,
        lora_targets=a.lora_targets,
    )
    run = jobs.submit(cfg)
    if a.wait:
        return _wait_for(run.id, a.timeout, quiet=a.json)
    return _run_document(
        run.id
    ), f"run {run.id} queued ({run.model} on dataset {run.dataset_id}); `python -m core runs show {run.id}`"


def cmd_sweep(a: argparse.Namespace) -> tuple[Any, str]:
    from core import sweeps

    sweep = sweeps.create(
        a.dataset,
        trials=a.trials,
        parallel=a.parallel,
        space=a.space or "",
        metric=a.metric or "",
        seed=a.seed or 0,
        model=a.model,
        epochs=a.epochs,
        budget_s=a.budget,
        processes=a.processes,
        patience=a.patience,
    )
    if a.wait:
        sweep = _wait_for_sweep(sweep.id, a.timeout)
    return _sweep_document(sweep), _sweep_text(sweep)


def _wait_for_sweep(sweep_id: int, timeout: float | None) -> Any:
    import time

    from core import jobs, sweeps
    from core.worker import start_background_worker

    if not jobs.worker_alive():
        start_background_worker()
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        sweep = sweeps.get(sweep_id)
        if not sweep.open:
            return sweep
        if deadline is not None and time.monotonic() > deadline:
            from core.errors import ConfigError

            raise ConfigError(
                f"sweep {sweep_id} is still going after {timeout:g} s; `python -m core sweeps show {sweep_id}`"
            )
        time.sleep(1.0)


def _sweep_document(sweep: Any) -> dict[str, Any]:
    doc = to_jsonable(sweep)
    doc["trials_run"] = doc.pop("trial_list")
    return doc


def _sweep_text(sweep: Any) -> str:
    head = (
        f"sweep {sweep.id} on dataset {sweep.dataset_id}: {sweep.trials_asked} of {sweep.trials} trials asked, "
        f"{sweep.parallel} at a time, {'going on' if sweep.open else 'done'}; {sweep.direction} {sweep.metric} "
        f"over {sweep.space}"
    )
    rows = [
        [
            str(t.number),
            str(t.run_id or "-"),
            t.state,
            "-" if t.value is None else f"{t.value:.4g}",
            "  ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items()),
        ]
        for t in sweep.trial_list
    ]
    best = (
        f"best: run {sweep.best_run} ({sweep.metric} = {sweep.best_value:.4g})"
        if sweep.best_run is not None
        else "best: none yet"
    )
    return "\n".join(
        [
            head,
            _table(rows, ["trial", "run", "state", sweep.metric, "parameters"]) if rows else "no trials yet",
            best,
        ]
    )


def cmd_sweeps_list(a: argparse.Namespace) -> tuple[Any, str]:
    from core import sweeps

    found = sweeps.list_sweeps()
    rows = [
        [
            str(s.id),
            str(s.dataset_id),
            f"{s.trials_asked}/{s.trials}",
            "going on" if s.open else "done",
            s.metric,
            "-" if s.best_run is None else f"run {s.best_run} ({s.best_value:.4g})",
        ]
        for s in found
    ]
    text = _table(rows, ["id", "dataset", "trials", "state", "metric", "best"]) if rows else "no sweeps yet"
    return [_sweep_document(s) for s in found], text


def cmd_sweeps_show(a: argparse.Namespace) -> tuple[Any, str]:
    from core import sweeps

    sweep = sweeps.get(a.id)
    return _sweep_document(sweep), _sweep_text(sweep)


def cmd_runs_list(a: argparse.Namespace) -> tuple[Any, str]:
    from core import jobs

    runs = jobs.list_runs(status=a.status, limit=a.limit)
    rows = []
    for r in runs:
        main = next(
            (f"{k}={r.best_metrics[k]:.4g}" for k in ("val_f1_macro", "val_rmse") if k in r.best_metrics), "-"
        )
        rows.append([str(r.id), r.name, r.task, r.model, r.status, main, _fmt_time(r.created_at)])
    return runs, _table(
        rows, ["id", "name", "task", "model", "status", "main metric", "created"]
    ) if rows else "no runs yet"


def cmd_runs_show(a: argparse.Namespace) -> tuple[Any, str]:
    doc = _run_document(a.id)
    return doc, _run_text(doc)


def cmd_runs_cancel(a: argparse.Namespace) -> tuple[Any, str]:
    from core import jobs

    status = jobs.cancel(a.id)
    note = "cancelled" if status == "cancelled" else f"cancel requested (run is {status})"
    return {"id": a.id, "status": status}, f"run {a.id}: {note}"


def cmd_runs_resume(a: argparse.Namespace) -> tuple[Any, str]:
    from core import jobs

    run = jobs.resume(a.id)
    if a.wait:
        return _wait_for(run.id, a.timeout, quiet=a.json)
    how = "from its last checkpoint" if run.config.get("resume") else "from the start (no checkpoint)"
    return _run_document(run.id), f"run {run.id} queued again; it continues {how}"


def cmd_runs_diff(a: argparse.Namespace) -> tuple[Any, str]:
    from core import compare

    found = compare.diff(a.a, a.b, label=a.label, limit=a.limit)
    if found["kind"] == "regression":
        head = (
            f"runs {a.a} and {a.b} on {found['common']} validation rows of dataset {found['dataset']}: "
            f"mean absolute error {found['mae_a']:.4g} against {found['mae_b']:.4g}; run {a.b} came closer "
            f"on {found['closer_b']}, run {a.a} on {found['closer_a']}"
        )
        rows = [
            [str(s["item"]), f"{s['true']:.4g}", f"{s['a']:.4g}", f"{s['b']:.4g}", s["closer"]]
            for s in found["samples"]
        ]
        return found, head + "\n" + _table(rows, ["item", "true", f"run {a.a}", f"run {a.b}", "closer"])
    head = (
        f"runs {a.a} and {a.b} on {found['common']} validation items of dataset {found['dataset']}: "
        f"accuracy {found['accuracy_a']:.3f} against {found['accuracy_b']:.3f}; they disagree on "
        f"{found['disagree']}: run {a.b} fixed {found['fixed']} and broke {found['broken']}"
    )
    per_class = _table(
        [[c["label"], str(c["support"]), str(c["right_a"]), str(c["right_b"]), str(c["fixed"]), str(c["broken"])]
         for c in found["per_class"]],
        ["label", "items", f"right in {a.a}", f"right in {a.b}", "fixed", "broken"],
    )  # fmt: skip
    rows = [[str(s["item"]), s["true"], s["a"], s["b"], s["right"]] for s in found["samples"]]
    shown = (
        _table(rows, ["item", "true", f"run {a.a}", f"run {a.b}", "right"])
        if rows
        else "no disagreement" + (f" on '{a.label}'" if a.label else "")
    )
    return found, "\n\n".join([head, per_class, shown])


def cmd_runs_slices(a: argparse.Namespace) -> tuple[Any, str]:
    from core import compare

    found = compare.slices(a.runs, by=a.by, bins=a.bins)
    what = "accuracy" if found["metric"] == "accuracy" else "mean absolute error"
    runs = [f"run {r}" for r in found["runs"]]
    rows = [[s["slice"], str(s["items"]), *(f"{s[r]:.4g}" for r in runs)] for s in found["slices"]]
    head = f"{what} by {found['by']} on {found['items']} validation items of dataset {found['dataset']}"
    return found, head + "\n" + _table(rows, [found["by"], "items", *runs])


def _read_rows(path: Path) -> dict[str, list[Any]]:
    import pandas as pd

    if not path.is_file():
        raise PredictError(f"{path} does not exist")
    suffix = path.suffix.lower()
    if suffix not in {".csv", ".tsv", ".txt", ".parquet", ".pq"}:
        raise PredictError(f"{path.name}: give the rows as a CSV, TSV or Parquet table")
    if path.stat().st_size == 0:
        raise PredictError(f"{path.name} is empty; give a table with a header row and the feature columns")
    try:
        df = (
            pd.read_parquet(path)
            if suffix in {".parquet", ".pq"}
            else pd.read_csv(path, sep=None, engine="python", encoding="utf-8-sig")
        )
    except UnicodeDecodeError as exc:
        raise PredictError(f"{path.name} is not UTF-8 text (byte {exc.start}); save it as UTF-8 CSV") from exc
    except Exception as exc:
        detail = str(exc).replace("Error tokenizing data. C error: ", "").strip()
        raise PredictError(f"{path.name} is not a readable table ({detail[:200]})") from exc
    df.columns = [str(c).strip() for c in df.columns]
    return {c: df[c].astype(object).where(df[c].notna(), None).tolist() for c in df.columns}


MAX_EXPLAINED = 100  # rows or texts one explain command takes


def cmd_explain(a: argparse.Namespace) -> tuple[Any, str]:
    from core import jobs
    from core.explain import DENSE_METHODS, MAP_METHODS

    run = jobs.get_run(a.run)
    if a.importance:
        return _importance(a, run.task)
    if a.threshold is not None and run.task != "object-detection":
        raise PredictError(
            f"--threshold is for detection runs (the lowest box score); run {a.run} is {run.task}"
        )
    if run.task in MAP_METHODS:
        return _explain_maps(a, run.task)
    if run.task in DENSE_METHODS:
        return _explain_dense(a, run.task)
    if run.task not in ("text-classification", "tabular-classification", "tabular-regression"):
        raise PredictError(
            f"run {a.run} is {run.task}: explain takes table, text, image, audio, detection and segmentation runs"
        )
    if a.method is not None:
        raise PredictError(
            "--method is for image, audio, detection and segmentation runs; tables are explained by Shapley values, texts by "
            "integrated gradients"
        )
    if a.out is not None:
        raise PredictError(
            "--out is for image, audio, detection and segmentation runs, whose explanations are pictures"
        )
    if run.task == "text-classification":
        return _explain_texts(a)
    return _explain_rows(a)


def _importance(a: argparse.Namespace, task: str) -> tuple[Any, str]:
    """Each feature's permutation importance over a table run's validation split."""
    from core.errors import NotFoundError
    from core.explain import TableExplainer

    if task not in ("tabular-classification", "tabular-regression"):
        raise PredictError(f"--importance is for table runs; run {a.run} is {task}")
    if a.files or a.text or a.method or a.out or a.label:
        raise PredictError("--importance measures over the validation split: give it alone, without rows")
    try:
        found = TableExplainer(a.run).importance()
    except NotFoundError as exc:
        raise PredictError(str(exc)) from exc
    lines = [
        f"{found.metric} {found.value:.4g} on {found.rows} validation rows; {found.method}",
        *(f"{f.feature}: {f.drop:+.4f} (±{f.spread:.4f})" for f in found.features),
    ]
    return {"run": a.run, **to_jsonable(found)}, "\n".join(lines)


def _picture_inputs(
    a: argparse.Namespace, kind: str, what: str, methods: tuple[str, ...], task: str
) -> tuple[str, list[str], Path]:
    """The checked method, the files' stems for the pictures' names (numbered in the given
    order when two share one, e.g. 3.png of two class folders) and the pictures' folder."""
    from core import jobs

    if a.text:
        raise PredictError(f"{kind} run explains {what}: give them as files")
    if not a.files:
        raise PredictError(f"give the {what} to explain")
    if len(a.files) > MAX_EXPLAINED:
        raise PredictError(f"{len(a.files)} files; explain at most {MAX_EXPLAINED} at a time")
    method = a.method or methods[0]
    if method not in methods:
        raise PredictError(f"'{method}' is no method for {task}; give one of: {', '.join(methods)}")
    for file in a.files:
        if not Path(file).is_file():
            raise PredictError(f"{file} does not exist")
    stems = [Path(f).stem for f in a.files]
    if len(set(stems)) < len(stems):
        stems = [f"{i}-{stem}" for i, stem in enumerate(stems, 1)]
    out = Path(a.out) if a.out else jobs.run_dir(a.run) / "explanations"
    if out.exists() and not out.is_dir():
        raise PredictError(f"--out {out} is a file; give a folder for the pictures")
    return method, stems, out


def _prepared(a: argparse.Namespace, classes: list[str], prepare: Callable[[str], Any]) -> list[Any]:
    """Each file as the explainer takes it, once --label is known to be one of the run's classes."""
    from core.runtime import RuntimeInputError

    if a.label is not None and a.label not in classes:
        raise PredictError(f"'{a.label}' is no class of run {a.run}; its classes: {', '.join(classes)}")
    prepared = []
    for file in a.files:
        try:
            prepared.append(prepare(file))
        except RuntimeInputError as exc:
            raise PredictError(f"{file}: {exc}") from exc
    return prepared


def _explain_maps(a: argparse.Namespace, task: str) -> tuple[Any, str]:
    """Heatmaps of where the evidence lies in images or clips, written as PNGs."""
    from core import atomic
    from core.errors import NotFoundError
    from core.explain import (
        MAP_METHODS,
        MapExplainer,
        clip_overlay_png,
        image_overlay,
        strongest_region,
        where_in_clip,
        where_in_image,
    )
    from core.models.audio import log_mel
    from core.runtime import load_original

    image = task == "image-classification"
    what = "images (PNG, JPEG, WebP or BMP files)" if image else "clips (WAV or FLAC files)"
    method, stems, out = _picture_inputs(
        a, "an image" if image else "an audio", what, MAP_METHODS[task], task
    )
    names = [f"{stem}-{method}.png" for stem in stems]
    try:
        explainer = MapExplainer(a.run)
        prepared = _prepared(a, explainer.classes, explainer.prepare)
        found = [explainer.explain(x, label=a.label, method=method) for x in prepared]
    except NotFoundError as exc:
        raise PredictError(str(exc)) from exc
    results, lines = [], [found[0].method]
    for file, name, x, e in zip(a.files, names, prepared, found, strict=True):
        picture = out / name
        where: dict[str, Any]
        if image:
            png = _png(image_overlay(load_original(file), e.heatmap))
            r0, r1, c0, c1 = strongest_region(e.heatmap)
            where = {"region": where_in_image(e.heatmap), "rows": [r0, r1], "columns": [c0, c1]}
            said = f"strongest in {where['region']}"
        else:
            png = clip_overlay_png(log_mel(x, explainer.rate, explainer.n_mels), e.heatmap, explainer.rate)
            t0, t1, f0, f1 = where_in_clip(e.heatmap, explainer.rate)
            where = {"seconds": [round(t0, 3), round(t1, 3)], "hz": [round(f0), round(f1)]}
            said = f"strongest at {t0:.2f}-{t1:.2f} s, {f0:,.0f}-{f1:,.0f} Hz"
        out.mkdir(parents=True, exist_ok=True)
        atomic.write_bytes(picture, png)
        results.append(
            {"file": file, "label": e.label, "probability": e.probability, "picture": str(picture),
             "where": where, "evaluations": e.evaluations, "seconds": round(e.seconds, 3)}
        )  # fmt: skip
        lines.append(f"{file}: {e.label} ({e.probability:.1%}); {said} -> {picture}")
    doc = {"run": a.run, "method": found[0].method, "explanations": results}
    return doc, "\n".join(lines)


def _explain_dense(a: argparse.Namespace, task: str) -> tuple[Any, str]:
    """Per-box (detection) or per-class (segmentation) heatmaps of images, written as PNGs."""
    from core import atomic
    from core.errors import NotFoundError
    from core.explain import DENSE_METHODS, MIN_CLASS_SHARE, DenseExplainer, part_overlay
    from core.runtime import DEFAULT_THRESHOLD, load_original

    detection = task == "object-detection"
    kind = "a detection" if detection else "a segmentation"
    what = "images (PNG, JPEG, WebP or BMP files)"
    method, stems, out = _picture_inputs(a, kind, what, DENSE_METHODS[task], task)
    threshold = DEFAULT_THRESHOLD if a.threshold is None else a.threshold
    try:
        explainer = DenseExplainer(a.run)
        prepared = _prepared(a, explainer.classes, lambda f: (load_original(f), explainer.prepare(f)))
        found = []
        for _, x in prepared:
            parts = explainer.parts(x, threshold=threshold, label=a.label)
            found.append([explainer.explain(x, part, method=method) for part in parts])
    except NotFoundError as exc:
        raise PredictError(str(exc)) from exc
    said = next((e.method for f in found for e in f), method)
    results, lines = [], [said]
    for file, stem, (original, _), explained in zip(a.files, stems, prepared, found, strict=True):
        h, w = original.shape[:2]
        scale = (w / explainer.size, h / explainer.size, w / explainer.size, h / explainer.size)
        parts_out = []
        if not explained:
            kind = f"{a.label} box" if a.label else "box"
            lines.append(
                f"{file}: no {kind} scores {threshold:.0%} or more"
                if detection
                else f"{file}: no {a.label or 'class'} covers {MIN_CLASS_SHARE:.0%} of the pixels or more"
            )
        for n, e in enumerate(explained, 1):
            picture = out / f"{stem}-{n}-{e.part.label}-{method}.png".replace("/", "_")
            out.mkdir(parents=True, exist_ok=True)
            atomic.write_bytes(picture, _png(part_overlay(original, e, explainer.classes)))
            entry: dict[str, Any] = {"label": e.part.label}
            if e.part.box is not None:
                box = [round(v * f, 1) for v, f in zip(e.part.box, scale, strict=True)]
                entry.update(score=round(e.part.score, 4), box=box)
                lines.append(
                    f"{file}: {e.part.label} {e.part.score:.0%} at {', '.join(f'{v:.0f}' for v in box)}; "
                    f"{e.inside:.0%} of the evidence inside the box -> {picture}"
                )
            else:
                entry.update(share=round(e.part.score, 4))
                lines.append(
                    f"{file}: {e.part.label} on {e.part.score:.1%} of the pixels; {e.inside:.0%} of the "
                    f"evidence on them -> {picture}"
                )
            entry.update(inside=round(e.inside, 4), picture=str(picture), evaluations=e.evaluations,
                         seconds=round(e.seconds, 3))  # fmt: skip
            parts_out.append(entry)
        results.append({"file": file, "parts": parts_out})
    doc = {
        "run": a.run,
        "method": said,
        "threshold": threshold if detection else None,
        "explanations": results,
    }
    return doc, "\n".join(lines)


def _png(rgb: Any) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _explain_texts(a: argparse.Namespace) -> tuple[Any, str]:
    from core import jobs
    from core.explain import TextExplainer

    texts = [t for t in (a.text or [])]
    if a.files:
        raise PredictError("a text run explains texts: give them with --text TEXT")
    if not texts or any(not t.strip() for t in texts):
        raise PredictError("give the texts to explain with --text TEXT (not empty)")
    if len(texts) > MAX_EXPLAINED:
        raise PredictError(f"{len(texts)} texts; explain at most {MAX_EXPLAINED} at a time")
    explainer = TextExplainer(jobs.run_dir(a.run))
    if a.label is not None and a.label not in explainer.classes:
        raise PredictError(
            f"'{a.label}' is no class of run {a.run}; its classes: {', '.join(explainer.classes)}"
        )
    found = [explainer.explain(t, label=a.label) for t in texts]
    doc = {
        "run": a.run,
        "method": "integrated gradients through the token embeddings (captum), from padding tokens",
        "explanations": [to_jsonable(e) for e in found],
    }
    lines = []
    for e in found:
        top = sorted(e.tokens, key=lambda t: -abs(t.score))[:5]
        lines.append(
            f"{e.text[:60]!r}: {e.label} ({e.probability:.1%}); strongest tokens: "
            + ", ".join(f"{t.token} {t.score:+.2f}" for t in top)
        )
    return doc, "\n".join(lines)


def _explain_rows(a: argparse.Namespace) -> tuple[Any, str]:
    from core.errors import NotFoundError
    from core.explain import TableExplainer

    if a.text:
        raise PredictError("a table run explains rows: give a CSV or Parquet file of them")
    if not a.files:
        raise PredictError("give the rows to explain: a CSV or Parquet file with the feature columns")
    rows: list[dict[str, Any]] = []
    for path in a.files:
        table = _read_rows(Path(path))
        count = len(next(iter(table.values()), []))
        rows += [{c: v[i] for c, v in table.items()} for i in range(count)]
    if not rows:
        raise PredictError("the files hold no rows to explain")
    if len(rows) > MAX_EXPLAINED:
        raise PredictError(f"{len(rows)} rows; explain at most {MAX_EXPLAINED} at a time")
    try:
        explainer = TableExplainer(a.run)
        found = [explainer.explain(r, label=a.label) for r in rows]
    except NotFoundError as exc:
        raise PredictError(str(exc)) from exc
    doc = {
        "run": a.run,
        "method": found[0].method,
        "baseline": explainer.baseline,
        "explanations": [to_jsonable(e) for e in found],
    }
    lines = [found[0].method]
    for i, e in enumerate(found, 1):
        what = f"{e.label} {e.output:.1%}" if e.label is not None else f"{e.output:.4g}"
        base = f"{e.baseline_output:.1%}" if e.label is not None else f"{e.baseline_output:.4g}"
        lines.append(
            f"row {i}: {what} (baseline row {base}); "
            + ", ".join(f"{f.feature}={f.value} {f.score:+.3g}" for f in e.features[:5])
        )
    return doc, "\n".join(lines)


def cmd_predict(a: argparse.Namespace) -> tuple[Any, str]:
    from core import jobs
    from core.runtime import Predictor, RuntimeInputError

    run = jobs.get_run(a.run)
    onnx_path = next((art.path for art in jobs.artifacts(a.run) if art.kind == "onnx"), None)
    if onnx_path is None or not Path(onnx_path).exists():
        raise PredictError(f"run {a.run} is {run.status} and has no exported model to predict with")
    if run.task == "speech-recognition":
        return _transcribe(onnx_path, a)
    if run.task == "translation":
        return _translate(onnx_path, a)
    if a.beams != 1:
        raise PredictError(f"run {a.run} is {run.task}; --beams is for speech recognition and translation")
    predictor = Predictor(onnx_path)
    if predictor.task == "text-generation":
        return _generate(predictor, a)
    if a.max_new_tokens is not None or a.temperature is not None or a.top_p is not None:
        raise PredictError(
            f"run {a.run} is {predictor.task}; --max-new-tokens, --temperature and --top-p are for text generation"
        )
    if predictor.task == "text-classification":
        return _predict_texts(predictor, a)
    if a.text or a.text_file:
        raise PredictError(f"run {a.run} is {predictor.task}; --text is for text models")
    if not a.files:
        raise PredictError("give the files to predict")
    if predictor.task in ("image-classification", "audio-classification"):
        return _predict_files(predictor, a)
    if predictor.task in ("object-detection", "semantic-segmentation"):
        return _predict_scenes(predictor, a)
    results, lines = [], []
    for file in a.files:
        try:
            preds = predictor.predict_table(_read_rows(Path(file)))
        except RuntimeInputError as exc:
            raise PredictError(f"{file}: {exc}") from exc
        for i, p in enumerate(preds):
            item = {"file": file, "row": i, **to_jsonable(p)}
            if p.value is None:
                item.pop("value")
            else:
                item.pop("label"), item.pop("probabilities")
            results.append(item)
            shown = (
                f"{p.value:.6g}"
                if p.value is not None
                else f"{p.label}  ({p.probabilities[p.label or '']:.1%})"
            )
            lines.append(f"{file}:{i}  {shown}")
    doc = {
        "run": a.run,
        "provider": predictor.provider,
        "latency_ms": predictor.last_latency_ms,
        "predictions": results,
    }
    return doc, "\n".join([*lines, f"({predictor.provider})"])


def _transcribe(path: str, a: argparse.Namespace) -> tuple[Any, str]:
    """Transcripts of clips by a speech recognition run."""
    from core.runtime import RuntimeInputError, Transcriber

    if (
        a.text
        or a.text_file
        or a.max_new_tokens is not None
        or a.temperature is not None
        or a.top_p is not None
    ):
        raise PredictError(
            f"run {a.run} is speech-recognition: it takes clips (WAV, FLAC), not text or sampling options"
        )
    if not a.files:
        raise PredictError("give the clips to transcribe (WAV or FLAC)")
    for file in a.files:
        if not Path(file).is_file():
            raise PredictError(f"{file} does not exist")
    transcriber = Transcriber(path)
    results, lines = [], []
    for file in a.files:
        try:
            (found,) = transcriber.transcribe([file], beams=a.beams)
        except RuntimeInputError as exc:
            raise PredictError(f"{file}: {exc}") from exc
        results.append({"file": file, **to_jsonable(found)})
        lines.append(f"{file}  {found.text}")
    doc = {"run": a.run, "provider": transcriber.provider, "transcripts": results}
    return doc, "\n".join([*lines, f"({transcriber.provider})"])


def _predict_files(predictor: Any, a: argparse.Namespace) -> tuple[Any, str]:
    """Images or audio clips, one prediction per file."""
    from core.runtime import RuntimeInputError

    results, lines = [], []
    for file in a.files:
        if not Path(file).is_file():
            raise PredictError(f"{file} does not exist")
        try:
            predict = (
                predictor.predict_images if predictor.task.startswith("image") else predictor.predict_audio
            )
            (pred,) = predict([file])
        except RuntimeInputError as exc:
            raise PredictError(f"{file}: {exc}") from exc
        top = [{"label": label, "probability": p} for label, p in pred.top(a.top_k)]
        results.append(
            {"file": file, "label": pred.label, "top": top, "latency_ms": predictor.last_latency_ms}
        )
        lines.append(f"{file}  " + "  ".join(f"{t['label']} {t['probability']:.1%}" for t in top))
    doc = {"run": a.run, "provider": predictor.provider, "predictions": results}
    return doc, "\n".join([*lines, f"({predictor.provider})"])


def _predict_scenes(predictor: Any, a: argparse.Namespace) -> tuple[Any, str]:
    """Boxes for each image, or a mask per image written to --out as a palette PNG."""
    from core.runtime import RuntimeInputError, save_mask

    detection = predictor.task == "object-detection"
    if not detection and not a.out:
        raise PredictError("a segmentation model writes masks: give --out DIR for them")
    out = Path(a.out) if a.out else None
    if out is not None and out.exists() and not out.is_dir():
        raise PredictError(f"--out {out} is a file; give a folder for the masks")
    for file in a.files:
        if not Path(file).is_file():
            raise PredictError(f"{file} does not exist")
    results, lines, masks = [], [], []
    for file in a.files:
        try:
            if detection:
                boxes = predictor.detect(file, a.threshold)
                found = [{"label": b.label, "score": b.score, "box": list(b.box)} for b in boxes]
                results.append({"file": file, "boxes": found, "latency_ms": predictor.last_latency_ms})
                shown = ", ".join(f"{b.label} {b.score:.0%}" for b in boxes[:8]) or "nothing found"
                lines.append(f"{file}  {len(boxes)} objects: {shown}")
            else:
                masks.append((file, predictor.segment(file)))
        except RuntimeInputError as exc:
            raise PredictError(f"{file}: {exc}") from exc
    if out is not None and masks:
        names = [Path(file).stem + ".png" for file, _ in masks]
        if len(set(names)) < len(names):
            raise PredictError(
                "two images share a file name; their masks would overwrite each other in --out"
            )
        for (file, seg), name in zip(masks, names, strict=True):
            save_mask(seg.mask, len(predictor.labels), out / name)
            shares = {k: round(v, 4) for k, v in seg.shares.items() if v > 0}
            results.append({"file": file, "mask": str(out / name), "shares": shares})
            top = sorted(shares.items(), key=lambda kv: -kv[1])[:4]
            lines.append(f"{file}  -> {out / name}  " + "  ".join(f"{k} {v:.0%}" for k, v in top))
    doc = {"run": a.run, "provider": predictor.provider, "predictions": results}
    return doc, "\n".join([*lines, f"({predictor.provider})"])


def _given_texts(a: argparse.Namespace) -> list[str]:
    """The texts of --text and --text-file (one per line); files are refused."""
    texts = list(a.text or [])
    if a.text_file:
        path = Path(a.text_file)
        if not path.is_file():
            raise PredictError(f"{path} does not exist")
        try:
            content = path.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise PredictError(f"{path.name} is not UTF-8 text") from exc
        texts += [line for line in content.splitlines() if line.strip()]
    if a.files:
        raise PredictError("a text model takes --text or --text-file, not files")
    if not texts:
        raise PredictError("give --text TEXT or --text-file FILE (one text per line)")
    return texts


def _translate(path: str, a: argparse.Namespace) -> tuple[Any, str]:
    """Translations of texts by a translation run."""
    from core.runtime import RuntimeInputError, Translator

    if a.temperature is not None or a.top_p is not None:
        raise PredictError(f"run {a.run} is translation: --temperature and --top-p are for text generation")
    texts = _given_texts(a)
    translator = Translator(path)
    limit = int(translator.settings["max_new_tokens"])
    if a.max_new_tokens is not None and not 1 <= a.max_new_tokens <= limit:
        raise PredictError(f"--max-new-tokens must be between 1 and {limit} for this model")
    try:
        found = translator.translate(texts, beams=a.beams, max_tokens=a.max_new_tokens)
    except RuntimeInputError as exc:
        raise PredictError(str(exc)) from exc
    results = [{"source": t, **to_jsonable(f)} for t, f in zip(texts, found, strict=True)]
    lines = [f"{t[:60]!r}  ->  {f.text}" for t, f in zip(texts, found, strict=True)]
    doc = {"run": a.run, "provider": translator.provider, "beams": a.beams, "translations": results}
    return doc, "\n".join([*lines, f"({translator.provider})"])


def _predict_texts(predictor: Any, a: argparse.Namespace) -> tuple[Any, str]:
    from core.runtime import RuntimeInputError

    texts = _given_texts(a)
    try:
        preds = predictor.predict_texts(texts)
    except RuntimeInputError as exc:
        raise PredictError(str(exc)) from exc
    results, lines = [], []
    for text, pred in zip(texts, preds, strict=True):
        top = [{"label": label, "probability": p} for label, p in pred.top(a.top_k)]
        results.append({"text": text, "label": pred.label, "top": top})
        shown = "  ".join(f"{t['label']} {t['probability']:.1%}" for t in top)
        lines.append(f"{text[:60]!r}  {shown}")
    doc = {
        "run": a.run,
        "provider": predictor.provider,
        "latency_ms": predictor.last_latency_ms,
        "predictions": results,
    }
    return doc, "\n".join([*lines, f"({predictor.provider}, {predictor.last_latency_ms:.1f} ms)"])


def _generate(predictor: Any, a: argparse.Namespace) -> tuple[Any, str]:
    """A generator's answer to each --text; streamed to the terminal unless --json."""
    from core.runtime import Generation, Generator, RuntimeInputError

    if a.files or a.text_file:
        raise PredictError("a text generator takes --text PROMPT, not files")
    if not a.text:
        raise PredictError('give the prompt with --text "..."')
    generator = Generator(predictor.path, session=predictor.session)
    results, lines = [], []
    for prompt in a.text:
        result = Generation("", [], 0, 0.0, 0.0, "length")
        try:
            for token in generator.stream(
                prompt,
                max_new_tokens=a.max_new_tokens,
                temperature=a.temperature,
                top_p=a.top_p,
                result=result,
            ):
                if not a.json:
                    sys.stdout.write(token.text)
                    sys.stdout.flush()
        except RuntimeInputError as exc:
            raise PredictError(str(exc)) from exc
        if not a.json:
            sys.stdout.write("\n")
        results.append({"prompt": prompt, **to_jsonable(result)})
        lines.append(
            f"({len(result.tokens)} tokens, first after {result.first_token_ms:.0f} ms, "
            f"{result.ms_per_token:.1f} ms/token, ended: {result.stopped}; {generator.provider})"
        )
    doc = {"run": a.run, "provider": generator.provider, "generations": results}
    return doc, "\n".join(lines)


def cmd_export(a: argparse.Namespace) -> tuple[Any, str]:
    from core.certificate import certify

    variants = tuple(v.strip() for v in a.variants.split(",")) if a.variants else None
    records = certify(a.run, variants, say=lambda line: print(line, file=sys.stderr, flush=True))
    if any("first_token_ms" in m for r in records for m in r.measurements):
        return records, _generator_certificate(records)
    if any("item_ms" in m for r in records for m in r.measurements):
        return records, _seq2seq_certificate(records)
    rows = []
    for r in records:
        b1 = {m["provider"]: m["p50_ms"] for m in r.measurements if m["batch"] == 1}
        b32 = {m["provider"]: m["p50_ms"] for m in r.measurements if m["batch"] == 32}
        rows.append(
            [
                r.variant,
                r.status,
                f"{r.metric_name} {r.metric_value:.4g} ({r.metric_change:+.3g})",
                "-" if r.top1_agreement is None else f"{r.top1_agreement:.3f}",
                f"{r.max_abs_diff:.2g}",
                " ".join(f"{p.removesuffix('ExecutionProvider')}:{v:.2f}" for p, v in b1.items()),
                " ".join(f"{p.removesuffix('ExecutionProvider')}:{v:.2f}" for p, v in b32.items()),
                f"{r.bytes / 1e6:.2f}",
            ]
        )
    header = [
        "variant",
        "status",
        "metric (change)",
        "agreement",
        "max diff",
        "p50 ms b1",
        "p50 ms b32",
        "MB",
    ]
    made = "\n".join(f"{r.variant}: {r.method}" for r in records)
    return records, _table(rows, header) + "\n\n" + made


def _generator_certificate(records: list[Any]) -> str:
    """A text generator's certificate for the terminal: token agreement, perplexity, the first
    token and ms per token at batch 1 (per provider), size."""

    def timings(r: Any, key: str) -> str:
        return " ".join(
            f"{m['provider'].removesuffix('ExecutionProvider')}:{m[key]:.1f}" for m in r.measurements
        )

    rows = [
        [
            r.variant,
            r.status,
            f"{r.metric_value:.4g} ({r.metric_change:+.3g})",
            f"{r.top1_agreement:.3f}",
            f"{r.max_abs_diff:.2g}",
            timings(r, "first_token_ms"),
            timings(r, "p50_ms"),
            f"{r.bytes / 1e6:.1f}",
        ]
        for r in records
    ]
    header = [
        "variant",
        "status",
        "perplexity (change)",
        "tokens alike",
        "max diff",
        "first token ms",
        "ms/token",
        "MB",
    ]
    made = "\n".join(f"{r.variant}: {r.method}" for r in records)
    return _table(rows, header) + "\n\n" + made


def _seq2seq_certificate(records: list[Any]) -> str:
    """A speech recogniser's or translator's certificate for the terminal: outputs alike, the
    metric, the encoder's ms, ms per token and per item at batch 1 (per provider), the real-time
    factor of speech, size."""

    def timings(r: Any, key: str, digits: int = 1) -> str:
        return " ".join(
            f"{m['provider'].removesuffix('ExecutionProvider')}:{m[key]:.{digits}f}"
            for m in r.measurements
            if key in m
        )

    speech = any("rtf" in m for r in records for m in r.measurements)
    rows = [
        [
            r.variant,
            r.status,
            f"{r.metric_name} {r.metric_value:.4g} ({r.metric_change:+.3g})",
            f"{r.top1_agreement:.3f}",
            f"{r.max_abs_diff:.2g}",
            timings(r, "encoder_ms"),
            timings(r, "p50_ms", 2),
            timings(r, "item_ms"),
            *([timings(r, "rtf", 3)] if speech else []),
            f"{r.bytes / 1e6:.1f}",
        ]
        for r in records
    ]
    header = ["variant", "status", "metric (change)", "alike", "max diff", "encoder ms", "ms/token"]
    header += ["ms/clip", "RTF"] if speech else ["ms/sentence"]
    made = "\n".join(f"{r.variant}: {r.method}" for r in records)
    return _table(rows, [*header, "MB"]) + "\n\n" + made


def _password(a: argparse.Namespace) -> str:
    """The password from standard input (one line), or a prompt on a terminal."""
    if a.password_stdin:
        line = sys.stdin.readline()
        if not line:
            raise ConfigError("--password-stdin: standard input is empty; pipe the password in")
        return line.rstrip("\r\n")
    if sys.stdin.isatty():
        import getpass

        first = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != first:
            raise ConfigError("the two passwords differ")
        return first
    raise ConfigError("give the password on standard input with --password-stdin")


def _user_doc(user: Any) -> dict[str, Any]:
    return {"name": user.name, "role": user.role, "created_at": user.created_at.isoformat()}


def cmd_users_add(a: argparse.Namespace) -> tuple[Any, str]:
    from core import access

    user = access.add_user(a.name, _password(a), a.role)
    return _user_doc(user), f"user {user.name} added ({user.role})"


def cmd_users_list(a: argparse.Namespace) -> tuple[Any, str]:
    from core import access

    users = access.list_users()
    rows = [[u.name, u.role, _fmt_time(u.created_at)] for u in users]
    text = (
        _table(rows, ["name", "role", "created"])
        if rows
        else "no users: the studio is open on 127.0.0.1 only"
    )
    return [_user_doc(u) for u in users], text


def cmd_users_delete(a: argparse.Namespace) -> tuple[Any, str]:
    from core import access

    access.delete_user(a.name)
    return {"deleted": a.name}, f"user {a.name} deleted"


def cmd_users_passwd(a: argparse.Namespace) -> tuple[Any, str]:
    from core import access

    access.set_password(a.name, _password(a))
    return {"name": a.name, "password_changed": True}, f"password of {a.name} changed; their sessions ended"


def _key_doc(key: Any) -> dict[str, Any]:
    return {
        "id": key.id,
        "user": key.user,
        "role": key.role,
        "label": key.label,
        "prefix": key.prefix,
        "created_at": key.created_at.isoformat(),
    }


def cmd_users_key(a: argparse.Namespace) -> tuple[Any, str]:
    from core import access

    key, secret = access.add_key(a.name, a.label or "")
    return {**_key_doc(key), "key": secret}, (
        f"API key {key.id} of {key.user} ({key.role}, '{key.label}'):\n{secret}\n"
        "It is shown this once; send it as 'Authorization: Bearer KEY'. `users revoke-key "
        f"{key.id}` ends it."
    )


def cmd_users_keys(a: argparse.Namespace) -> tuple[Any, str]:
    from core import access

    found = access.list_keys(a.user)
    rows = [
        [str(k.id), k.user, k.role, k.label, k.prefix + "...", k.created_at.strftime("%Y-%m-%d %H:%M")]
        for k in found
    ]
    text = _table(rows, ["id", "user", "role", "label", "starts", "made"]) if rows else "no API keys"
    return [_key_doc(k) for k in found], text


def cmd_users_revoke_key(a: argparse.Namespace) -> tuple[Any, str]:
    from core import access

    access.revoke_key(a.id)
    return {
        "revoked": a.id
    }, f"API key {a.id} revoked: a running endpoint refuses it within {access.KEY_TTL_S:g} s"


def cmd_models(a: argparse.Namespace) -> tuple[Any, str]:
    from core.models import all_models, models_for

    specs = models_for(a.task) if a.task else all_models()
    doc = [
        {"name": m.name, "tasks": list(m.tasks), "description": m.description, "default": m.default}
        for m in specs
    ]
    rows = [[m.name, ",".join(m.tasks), m.description] for m in specs]
    return doc, _table(rows, ["name", "tasks", "description"])


def cmd_worker(a: argparse.Namespace) -> tuple[Any, str]:
    from core.config import get_settings
    from core.worker import Worker

    kind: type[Worker] = Worker
    if get_settings().executor == "ray":
        from core.cluster import RayWorker

        kind = RayWorker
    kind(poll_s=a.poll, idle_exit_s=a.idle_exit).run()
    return {"stopped": True}, "worker stopped"


def cmd_bundle(a: argparse.Namespace) -> tuple[Any, str]:
    """A finished run's model, its runner and its README as one zip."""
    import zipfile

    from core import bundle

    dest = bundle.write(a.run, Path(a.out).expanduser(), a.variant)
    with zipfile.ZipFile(dest) as z:
        names = [Path(n).name for n in z.namelist()]
    doc = {"path": str(dest), "bytes": dest.stat().st_size, "files": names}
    return doc, (
        f"wrote {dest} ({dest.stat().st_size / 1e6:.1f} MB: {', '.join(names)}); unzip it and see its README.md"
    )


def cmd_serve(a: argparse.Namespace) -> tuple[Any, str]:
    """Finished runs' models over HTTP until interrupted."""
    import socket

    from core import access, jobs
    from core.errors import NotFoundError

    if not access.is_loopback(a.host) and not access.any_users():
        raise PredictError(
            f"serve listens on {a.host or 'every interface'} only with API keys, which need users: add one "
            "(`users add NAME`) and a key (`users key NAME`), or give --host 127.0.0.1"
        )
    if not 1 <= a.port <= 65535:
        raise PredictError(f"--port {a.port} is no port; give one from 1 to 65535")
    runs = sorted(set(a.run)) if a.run else None
    for run_id in runs or []:
        try:
            run = jobs.get_run(run_id)
        except NotFoundError as exc:
            raise PredictError(str(exc)) from exc
        path = next((art.path for art in jobs.artifacts(run_id) if art.kind == "onnx"), None)
        if path is None or not Path(path).is_file():
            raise PredictError(f"run {run_id} is {run.status} and has no exported model to serve")
    with socket.socket() as probe:  # said in one line now, not as uvicorn's traceback later
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((a.host, a.port))
        except OSError as exc:
            import errno

            if exc.errno == errno.EADDRNOTAVAIL:
                raise PredictError(
                    f"cannot listen on {a.host}: it is not an address of this machine; give one that is "
                    "(or 127.0.0.1)"
                ) from exc
            raise PredictError(
                f"cannot listen on {a.host}:{a.port} ({exc.strerror}); give another --port"
            ) from exc
    import uvicorn

    from core.serve import create_app

    served = ", ".join(map(str, runs)) if runs else "every finished run"
    keys = (
        f"API keys required ({len(access.list_keys())} made; `users key NAME` makes one)"
        if access.any_users()
        else "no API key needed (no users; loopback only)"
    )
    print(
        f"serving {served} on http://{a.host}:{a.port} (OpenAPI docs at /docs); {keys}; Ctrl+C stops",
        flush=True,
    )
    uvicorn.run(create_app(runs), host=a.host, port=a.port, log_level="warning")
    return {"stopped": True}, "stopped serving"


def cmd_cluster(a: argparse.Namespace) -> tuple[Any, str]:
    from core.cluster import amounts, describe

    doc = describe()
    rows = [
        [
            n.address,
            "alive" if n.alive else "dead",
            f"{n.cpus_free:g} of {n.cpus:g}",
            f"{n.gpus_free:g} of {n.gpus:g}" if n.gpus else "-",
            ", ".join(map(str, n.runs)) or "-",
        ]
        for n in doc["nodes"]
    ]
    free = {"CPU": sum(n.cpus_free for n in doc["nodes"]), "GPU": sum(n.gpus_free for n in doc["nodes"])}
    text = "\n".join(
        [
            f"{doc['cluster']}: {len(doc['nodes'])} node(s), {amounts(free)} free",
            _table(rows, ["node", "state", "free CPUs", "free GPUs", "runs"]),
            "waiting for resources: " + (", ".join(f"run {i}" for i in doc["waiting"]) or "none"),
        ]
    )
    return doc, text


def cmd_run(a: argparse.Namespace) -> tuple[Any, str]:
    from core.execute import execute_run

    code = execute_run(a.id)
    if code:
        raise SystemExit(code)
    return {"id": a.id}, f"run {a.id} done"


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive whole number")
    return value


MAX_BEAMS = 16


def _beams(text: str) -> int:
    value = _positive(text)
    if value > MAX_BEAMS:
        raise argparse.ArgumentTypeError(f"{value} beams is over the most, {MAX_BEAMS}")
    return value


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: '{text}'") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value:g} is not between 0 and 1")
    return value


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr and exit status 1, like every other refusal."""

    def error(self, message: str) -> NoReturn:
        self.exit(1, f"error: {message} (see `{self.prog} --help`)\n")


def one_line(message: str) -> str:
    """A message as the single line the CLI prints."""
    return "; ".join(part.strip() for part in message.splitlines() if part.strip())


def build_parser() -> argparse.ArgumentParser:
    from core.data import TASKS
    from core.runtime import DEFAULT_THRESHOLD
    from db.models import RunStatus

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print one JSON document")
    parser = _Parser(prog="python -m core", description="Ascent from the command line")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(
        parent: Any, name: str, fn: Callable[[argparse.Namespace], tuple[Any, str]], help: str
    ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(name, parents=[common], help=help)
        p.set_defaults(fn=fn)
        return p

    ds = sub.add_parser("datasets", help="add, list, show, delete datasets").add_subparsers(
        dest="action", required=True
    )
    p = add(ds, "add", cmd_datasets_add, "add a CSV/Parquet table or a zip of images")
    p.add_argument("path")
    p.add_argument("--name")
    p.add_argument("--target", help="the column to predict (default: target/label/class/y, else the last)")
    p.add_argument("--task", choices=list(TASKS), help="force the task")
    p.add_argument("--text-column", help="text-classification: the column holding the text")
    p.add_argument("--source-column", help="translation: the column of sentences to translate")
    p.add_argument("--target-column", help="translation: the column of their translations")
    add(ds, "list", cmd_datasets_list, "list datasets")
    add(ds, "show", cmd_datasets_show, "a dataset with its schema and quality report").add_argument(
        "id", type=int
    )
    add(ds, "delete", cmd_datasets_delete, "delete a dataset and its files").add_argument("id", type=int)
    p = add(ds, "revise", cmd_datasets_revise, "a new version with items excluded or relabelled")
    p.add_argument("id", type=int)
    p.add_argument("--exclude", type=int, nargs="+", metavar="ITEM", help="items to leave out")
    p.add_argument("--relabel", nargs="+", metavar="ITEM=LABEL", help="items to give another class")

    p = add(sub, "doctor", cmd_doctor, "likely label errors, duplicates, leaks and outliers of a dataset")
    p.add_argument("--dataset", type=int, required=True)
    p.add_argument("--run", type=int, help="judge labels by this run's validation predictions")
    p.add_argument("--limit", type=int, default=50, help="suspects listed of each kind (default 50)")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5)")

    p = add(sub, "sweep", cmd_sweep, "queue a hyperparameter sweep (Optuna): each trial a run")
    p.add_argument("--dataset", type=int, required=True)
    p.add_argument("--trials", type=int, required=True, help="how many runs to try")
    p.add_argument("--parallel", type=int, default=1, help="trials queued or running at once")
    p.add_argument(
        "--space",
        help='what to vary, e.g. "lr=1e-4..1e-2 log; batch_size=32,64,128; epochs=5..20" '
        "(default: lr and weight_decay, log ranges)",
    )
    p.add_argument("--metric", help="the validation metric to optimise (default: the task's main one)")
    p.add_argument("--budget", type=_budget, metavar="SECONDS", help="each trial's time budget")
    p.add_argument("--model")
    p.add_argument("--epochs", type=int)
    p.add_argument("--patience", type=int)
    p.add_argument("--processes", type=int, metavar="N")
    p.add_argument("--seed", type=int, help="the sampler's seed (default 0)")
    p.add_argument(
        "--wait", action="store_true", help="wait for every trial, starting a worker if none is alive"
    )
    p.add_argument("--timeout", type=float, help="with --wait: give up waiting after this many seconds")
    sw = sub.add_parser("sweeps", help="list and show sweeps").add_subparsers(dest="action", required=True)
    add(sw, "list", cmd_sweeps_list, "list sweeps, newest first")
    add(sw, "show", cmd_sweeps_show, "a sweep with its trials and best run").add_argument("id", type=int)

    p = add(sub, "train", cmd_train, "queue a training run")
    p.add_argument("--dataset", type=int, required=True)
    p.add_argument("--model")
    p.add_argument("--name")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--patience", type=int, help="early-stopping patience in epochs (0: off)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--warmup", type=float, help="fraction of the steps spent warming the learning rate up")
    p.add_argument("--weight-decay", type=float)
    p.add_argument(
        "--budget",
        type=_budget,
        metavar="SECONDS",
        help="seconds from the run's start to its exported model: the run plans its epochs to fit "
        "(auto: 100 s for pretrained image and text models on a CPU, else none; 0 or none: no limit)",
    )
    p.add_argument(
        "--processes",
        type=int,
        metavar="N",
        help="train the run in N processes with DistributedDataParallel (one per GPU; gloo on the "
        "CPU); --batch-size stays the whole batch, each process takes its share",
    )
    images = p.add_argument_group("images and text")
    images.add_argument(
        "--weights",
        help="images: default, none, imagenet (download) or a weights file; detection and "
        "segmentation also a folder holding model.safetensors or best.safetensors, or hub:ORG/NAME; "
        "text: a Hugging Face model folder or hub id",
    )
    images.add_argument(
        "--init-from", type=int, metavar="RUN", help="fine-tune the best checkpoint of an earlier run"
    )
    images.add_argument("--image-size", type=int)
    images.add_argument("--no-augment", action="store_true", help="no random crops or colour jitter")
    images.add_argument(
        "--flip", action="store_true", help="random horizontal flips too (not for digits, letters, documents)"
    )
    images.add_argument(
        "--head-first",
        action=argparse.BooleanOptionalAction,
        help="fit the new head on the frozen network's features before fine-tuning "
        "(default: on for pretrained image models)",
    )
    images.add_argument("--freeze-epochs", type=int, help="train only the head for this many epochs")
    images.add_argument("--backbone-lr-mult", type=float, help="backbone learning rate relative to the head")
    images.add_argument("--workers", type=int, help="data loading processes")
    images.add_argument("--cache", choices=["auto", "on", "off"], help="keep decoded images in memory")
    texts = p.add_argument_group("text")
    texts.add_argument("--max-length", type=int, help="tokens per text (default: the data's 95th percentile)")
    texts.add_argument("--freeze-layers", type=int, help="freeze the embeddings and this many lower layers")
    texts.add_argument("--grad-accum", type=int, help="an optimiser step every this many batches")
    gen = p.add_argument_group("text generation")
    gen.add_argument("--finetune", choices=["lora", "full"], help="LoRA adapters (default) or every weight")
    gen.add_argument("--lora-rank", type=int, help="rank of the adapters (default 16)")
    gen.add_argument("--lora-alpha", type=int, help="adapter scale numerator (default: twice the rank)")
    gen.add_argument("--lora-dropout", type=float, help="dropout on the adapters' input (default 0.05)")
    gen.add_argument(
        "--lora-targets", help="all-linear (default) or layer names separated by commas (q_proj,v_proj)"
    )
    sounds = p.add_argument_group("audio")
    sounds.add_argument("--sample-rate", type=int, help="resample clips to this rate (default 16000)")
    sounds.add_argument(
        "--clip-seconds", type=float, help="clip length (default: the data's 95th percentile)"
    )
    sounds.add_argument("--n-mels", type=int, help="mel bands of the front end (default 64)")
    p.add_argument("--wait", action="store_true", help="wait for the run, starting a worker if none is alive")
    p.add_argument("--timeout", type=float, help="with --wait: give up waiting after this many seconds")

    runs = sub.add_parser("runs", help="list, show, cancel, resume runs").add_subparsers(
        dest="action", required=True
    )
    p = add(runs, "list", cmd_runs_list, "list runs, newest first")
    p.add_argument("--status", choices=[s.value for s in RunStatus])
    p.add_argument("--limit", type=int, default=100)
    add(runs, "show", cmd_runs_show, "a run with metrics and artifacts").add_argument("id", type=int)
    add(runs, "cancel", cmd_runs_cancel, "cancel a queued or running run").add_argument("id", type=int)
    p = add(runs, "diff", cmd_runs_diff, "two runs of one dataset compared on their validation samples")
    p.add_argument("a", type=int, help="the first run (the one a second run fixes or breaks)")
    p.add_argument("b", type=int, help="the second run")
    p.add_argument("--label", help="list only the disagreements that involve this label")
    p.add_argument("--limit", type=_positive, default=200, help="disagreements listed (200 by default)")
    p = add(runs, "slices", cmd_runs_slices, "a run's validation metric per slice, or two runs' side by side")
    p.add_argument("runs", type=int, nargs="+", metavar="RUN", help="one run, or two runs of one dataset")
    p.add_argument(
        "--by", default="class", help="class (default), length (texts), duration (clips) or a table's column"
    )
    p.add_argument("--bins", type=int, default=4, help="ranges a number is cut into (2-20, 4 by default)")
    p = add(runs, "resume", cmd_runs_resume, "queue a lost, failed or cancelled run again")
    p.add_argument("id", type=int)
    p.add_argument("--wait", action="store_true")
    p.add_argument("--timeout", type=float)

    p = add(sub, "explain", cmd_explain, "which features, tokens, pixels or sounds drove a run's predictions")
    p.add_argument("--run", type=int, required=True)
    p.add_argument(
        "files",
        nargs="*",
        help="tables: CSV or Parquet files of rows; images (also detection, segmentation): image files; "
        "audio: WAV or FLAC clips",
    )
    p.add_argument("--text", action="append", help="texts: a text to explain (repeat for more)")
    p.add_argument("--label", help="explain this class (default: the predicted one)")
    p.add_argument(
        "--method",
        help="images, detection, segmentation: grad-cam (default) or integrated-gradients; audio: "
        "integrated-gradients (default) or grad-cam",
    )
    p.add_argument(
        "--out",
        help="images, audio, detection, segmentation: the folder for the heatmap pictures (default: the run's "
        "explanations/)",
    )
    p.add_argument(
        "--threshold",
        type=_probability,
        help=f"detection: explain each box scoring at least this (default {DEFAULT_THRESHOLD:g})",
    )
    p.add_argument(
        "--importance",
        action="store_true",
        help="tables: each feature's importance over the validation split (shuffled, the metric's worsening)",
    )

    p = add(sub, "serve", cmd_serve, "serve runs' exported models over HTTP (FastAPI, OpenAPI docs at /docs)")
    p.add_argument(
        "--run",
        type=int,
        action="append",
        help="a run to serve (repeat for more; default: every finished run)",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="the address to listen on (off loopback only once users exist: their API keys are then needed)",
    )
    p.add_argument("--port", type=int, default=8000, help="the port (default 8000)")

    p = add(sub, "bundle", cmd_bundle, "a zip of a run's model that runs with numpy and onnxruntime alone")
    p.add_argument("--run", type=int, required=True)
    p.add_argument(
        "--variant", default="fp32", help="fp32 (the run's export) or a measured certificate variant"
    )
    p.add_argument("--out", required=True, help="the zip file to write, or a folder to write it into")

    p = add(sub, "predict", cmd_predict, "predict with a run's exported model")
    p.add_argument("--run", type=int, required=True)
    p.add_argument(
        "--top-k", type=_positive, default=5, help="images, text and audio: how many classes to show"
    )
    p.add_argument("--text", action="append", help="text models: a text to classify or a prompt (repeatable)")
    p.add_argument("--text-file", help="text models: a file with one text per line")
    p.add_argument(
        "--threshold",
        type=_probability,
        default=DEFAULT_THRESHOLD,
        help=f"detection: the lowest score of a box to report (default {DEFAULT_THRESHOLD:g})",
    )
    p.add_argument("--out", help="segmentation: the folder the masks are written to (palette PNGs)")
    p.add_argument("--max-new-tokens", type=int, help="text generation: the longest answer (default 256)")
    p.add_argument("--temperature", type=float, help="text generation: 0 (default) picks the likeliest token")
    p.add_argument("--top-p", type=float, help="text generation: sample from the smallest set this likely")
    p.add_argument(
        "--beams",
        type=_beams,
        default=1,
        help="speech recognition and translation: hypotheses kept in a beam search (default 1: greedy)",
    )
    p.add_argument("files", nargs="*", metavar="FILE", help="tables or images")

    p = add(sub, "export", cmd_export, "the export certificate: variants measured for fidelity, speed, size")
    p.add_argument("--run", type=int, required=True)
    p.add_argument(
        "--variants", help="comma-separated from fp32,int8,fp16 (default: fp32,int8, and fp16 on CUDA)"
    )

    users = sub.add_parser("users", help="who may sign in to the studio").add_subparsers(
        dest="action", required=True
    )
    p = add(users, "add", cmd_users_add, "add a user (the first is an admin)")
    p.add_argument("name")
    p.add_argument(
        "--role", choices=["admin", "member", "viewer"], help="default: admin for the first user, else member"
    )
    p.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    add(users, "list", cmd_users_list, "list users")
    add(users, "delete", cmd_users_delete, "delete a user").add_argument("name")
    p = add(users, "passwd", cmd_users_passwd, "set a user's password (their sessions end)")
    p.add_argument("name")
    p.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    p = add(users, "key", cmd_users_key, "make an API key for the REST endpoint (shown once)")
    p.add_argument("name", help="the user whose key it is (any role may predict)")
    p.add_argument("--label", help="what the key is for, to tell keys apart")
    add(users, "keys", cmd_users_keys, "list API keys (never the keys themselves)").add_argument(
        "--user", help="only this user's"
    )
    p = add(users, "revoke-key", cmd_users_revoke_key, "end an API key")
    p.add_argument("id", type=int)

    add(sub, "models", cmd_models, "list registered models").add_argument("--task")
    p = add(sub, "worker", cmd_worker, "run a worker in the foreground")
    p.add_argument("--idle-exit", type=float, default=None, help="exit after this many idle seconds")
    p.add_argument("--poll", type=float, default=1.0)
    add(sub, "cluster", cmd_cluster, "the Ray cluster's nodes, free CPUs/GPUs and runs (ASCENT_RAY_ADDRESS)")
    add(sub, "run", cmd_run, "(internal) execute one claimed run").add_argument("id", type=int)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from pydantic import ValidationError

    args = build_parser().parse_args(argv)
    try:
        doc, text = args.fn(args)
    except _RunEnded as ended:
        if args.json:
            print(json.dumps(ended.doc, indent=2))
        else:
            print(_run_text(ended.doc))
        print(f"error: {one_line(str(ended))}", file=sys.stderr)
        return 1
    except AscentError as exc:
        print(f"error: {one_line(str(exc))}", file=sys.stderr)
        return 1
    except ValidationError as exc:
        from core.errors import settings_error

        print(f"error: {one_line(settings_error(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the edge: one line and an error id; the traceback to the log
        from core import errorlog

        error_id = errorlog.record(exc, where=f"python -m core {' '.join(argv or sys.argv[1:])[:200]}")
        print(f"error: {errorlog.user_message(exc, error_id)}", file=sys.stderr)
        return 1
    try:
        print(json.dumps(to_jsonable(doc), indent=2) if args.json else text, flush=True)
    except BrokenPipeError:  # `... | head`: the reader left; say nothing more
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
