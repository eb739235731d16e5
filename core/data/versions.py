"""A new version of a classification dataset: some items excluded, some relabelled.

The data doctor names suspects (core/doctor.py); acting on them never changes a dataset in
place. `revise` writes a new dataset row (same name, version + 1, `parent_id` naming the one it
came from) with its own folder: the table or index rewritten, images and clips hard-linked
from the parent (copied where links are not possible). Runs keep pointing at the version they
trained on, and its files stay as they were.

Items are positions in the stored table (`data.parquet`) or index (`index.parquet`), the ids
`runs diff`, the doctor and the Compare view show.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

from core.access import LOCAL, Action, Actor, require
from core.data import ingest
from core.errors import DatasetError
from core.runtime import as_category
from db.queries import DatasetInfo

REVISABLE = ("tabular-classification", "text-classification", "image-classification", "audio-classification")


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def parse_relabels(pairs: list[str]) -> dict[int, str]:
    """`ITEM=LABEL` strings as {item: label}; a DatasetError names the first malformed one."""
    found: dict[int, str] = {}
    for pair in pairs:
        item, sep, label = pair.partition("=")
        if not sep or not item.strip().isdigit() or not label.strip():
            raise DatasetError(f"'{pair}' is no relabel; write ITEM=LABEL, e.g. 12=cat")
        found[int(item)] = label.strip()
    return found


def _check(
    dataset: DatasetInfo, n: int, exclude: set[int], relabel: dict[int, str], classes: list[str]
) -> None:
    if dataset.task not in REVISABLE:
        raise DatasetError(
            f"dataset {dataset.id} is {dataset.task}; only classification datasets "
            f"({', '.join(REVISABLE)}) can be relabelled or have items excluded"
        )
    if not exclude and not relabel:
        raise DatasetError("nothing to change: name items to --exclude or --relabel ITEM=LABEL")
    wrong = sorted(i for i in (*exclude, *relabel) if not 0 <= i < n)
    if wrong:
        raise DatasetError(f"dataset {dataset.id} has items 0 to {n - 1}; there is no item {wrong[0]}")
    both = sorted(exclude & set(relabel))
    if both:
        raise DatasetError(f"item {both[0]} is both excluded and relabelled; choose one")
    unknown = next((label for label in relabel.values() if label not in classes), None)
    if unknown is not None:
        raise DatasetError(
            f"'{unknown}' is not a class of dataset {dataset.id}; relabel to one of: {', '.join(classes)}"
        )
    if len(exclude) >= n - 1:
        raise DatasetError(f"excluding {len(exclude)} of {n} items leaves too few to train on")


def _revise_table(
    dataset: DatasetInfo, exclude: set[int], relabel: dict[int, str], staging: Path
) -> tuple[Any, ...]:
    from core.data import tabular

    frame = pd.read_parquet(Path(dataset.path) / "data.parquet")
    target = dataset.schema["target"]
    _check(dataset, len(frame), exclude, relabel, list(dataset.schema.get("classes") or []))
    # A new label takes the column's own form of that class (5, not "5", in a column of numbers).
    spelled = {as_category(v): v for v in frame[target].dropna().unique()}
    column = frame[target].astype(object)
    for item, label in relabel.items():
        column.iloc[item] = spelled.get(label, label)
    frame[target] = column.infer_objects()
    frame = frame.drop(index=frame.index[sorted(exclude)]).reset_index(drop=True)
    task, schema, report = tabular.inspect_table(frame, target, dataset.task)
    schema["source"] = dataset.schema.get("source", "")
    frame.to_parquet(staging / "data.parquet", index=False)
    return task, schema, report, len(frame), staging / "data.parquet"


def _revise_texts(
    dataset: DatasetInfo, exclude: set[int], relabel: dict[int, str], staging: Path
) -> tuple[Any, ...]:
    from core.data import text

    frame = pd.read_parquet(Path(dataset.path) / "data.parquet")
    _check(dataset, len(frame), exclude, relabel, list(dataset.schema.get("classes") or []))
    for item, label in relabel.items():
        frame.loc[frame.index[item], "label"] = label
    frame = frame.drop(index=frame.index[sorted(exclude)]).reset_index(drop=True)
    data, schema, report = text.inspect_texts(frame, "text", "label", str(dataset.schema.get("source", "")))
    data.to_parquet(staging / "data.parquet", index=False)
    return dataset.task, schema, report, len(data), staging / "data.parquet"


def _revise_files(
    dataset: DatasetInfo, exclude: set[int], relabel: dict[int, str], staging: Path
) -> tuple[Any, ...]:
    from core.tasks import read_index

    folder = "images" if dataset.task == "image-classification" else "clips"
    index = read_index(dataset, folder[:-1])
    _check(dataset, len(index), exclude, relabel, list(dataset.schema.get("classes") or []))
    for item, label in relabel.items():
        index.loc[index.index[item], "label"] = label
    index = index.drop(index=index.index[sorted(exclude)]).reset_index(drop=True)
    counts = Counter(index["label"])
    if len(counts) < 2:
        raise DatasetError("the new version would have one class left; classification needs two or more")
    root = Path(dataset.path) / folder
    for rel in index["path"]:
        _link_or_copy(root / rel, staging / folder / rel)
    index.to_parquet(staging / "index.parquet", index=False)
    schema = {**dataset.schema, "classes": sorted(counts)}
    report = {**dataset.report, folder: len(index), "class_counts": {c: counts[c] for c in sorted(counts)}}
    return dataset.task, schema, report, len(index), staging / "index.parquet"


def revise(
    dataset_id: int,
    *,
    exclude: list[int] | None = None,
    relabel: dict[int, str] | None = None,
    actor: Actor = LOCAL,
) -> DatasetInfo:
    """A new version of dataset `dataset_id` without the items `exclude` and with the labels of
    `relabel` ({item: class}) changed. The dataset itself is left as it is."""
    require(actor, Action.UPLOAD)
    dataset = ingest.get_dataset(dataset_id)
    drop, change = set(exclude or []), dict(relabel or {})
    revise_one = {
        "tabular-classification": _revise_table,
        "text-classification": _revise_texts,
        "image-classification": _revise_files,
        "audio-classification": _revise_files,
    }.get(dataset.task)
    if revise_one is None:
        _check(dataset, 0, drop, change, [])  # raises: not a classification dataset
        raise AssertionError("unreachable")
    with ingest.staging_folder() as staging:
        try:
            task, schema, report, n_items, written = revise_one(dataset, drop, change, staging)
        except (OSError, ValueError, KeyError) as exc:
            if isinstance(exc, DatasetError):
                raise
            raise DatasetError(
                f"dataset {dataset_id}'s stored files cannot be read ({type(exc).__name__}); add it again"
            ) from exc
        report["revision"] = {
            "from": dataset.id,
            "excluded": sorted(drop),
            "relabelled": {str(k): v for k, v in sorted(change.items())},
        }
        size = sum(p.stat().st_size for p in staging.rglob("*") if p.is_file())
        return ingest.commit(
            staging,
            written,
            dataset.name,
            task,
            dataset.format,
            size,
            n_items,
            schema,
            report,
            actor.name,
            parent=dataset,
        )
