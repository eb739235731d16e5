"""The REST endpoint: finished runs' exported models behind FastAPI (`python -m core serve`).

Each request runs the same runtime code as `python -m core predict` and the Predict page
(`core.runtime`), on ONNX sessions opened once per model file and kept (a few at a time).
Refusals are one line in `{"detail": ...}` with a 4xx status, and nothing is written: bad input
422, an unknown run 404, a run without an exported model 409, the wrong kind of body 415, a body
over the limit 413, a prediction over the time limit 504, a missing or unknown API key 401 (keys
are needed once the installation has users; any role may predict).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import pprint
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from core.access import KEY_TTL_S
from core.errors import AscentError, NotFoundError
from core.runtime import RuntimeInputError

MAX_BODY_BYTES = 64 * 1024 * 1024  # one request's body
MAX_ITEMS = 1_000  # rows, texts or files one request predicts
MAX_SECONDS = 60.0  # one request's predictions
SESSIONS = 4  # ONNX models kept open, the least recently used closed first

# What each task's predict endpoint takes, for GET /runs/{id} and the refusals.
TAKES = {
    "tabular-classification": 'JSON {"rows": [{"column": value, ...}, ...]}',
    "tabular-regression": 'JSON {"rows": [{"column": value, ...}, ...]}',
    "text-classification": 'JSON {"texts": ["...", ...]}',
    "image-classification": "multipart/form-data: image files in the field 'files'",
    "audio-classification": "multipart/form-data: WAV or FLAC clips in the field 'files'",
    "object-detection": "multipart/form-data: image files in the field 'files' (?threshold=0.25)",
    "semantic-segmentation": "multipart/form-data: image files in the field 'files'",
    "speech-recognition": "multipart/form-data: WAV or FLAC clips in the field 'files' (?beams=1)",
    "translation": 'JSON {"texts": ["...", ...]} (?beams=1)',
    "text-generation": 'JSON {"prompt": "..."} or {"messages": [{"role": "user", "content": "..."}, ...]}, '
    'with "max_new_tokens", "temperature", "top_p" and "stream": true (one JSON line per token) if wanted',
}
FILE_TASKS = (
    "image-classification",
    "audio-classification",
    "object-detection",
    "semantic-segmentation",
    "speech-recognition",
)
MAX_BEAMS = 8


class Refused(Exception):
    """A request refused in one line, with its HTTP status."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


class Keys:
    """Whether calls need an API key (they do once the installation has users) and whose a key
    is, each looked up in the database at most every KEY_TTL_S seconds: a revoked key stops
    working within that, and a call costs no query in between."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._needed: tuple[float, bool] = (-KEY_TTL_S, False)
        self._owners: dict[str, tuple[float, Any]] = {}

    def needed(self) -> bool:
        from core import access

        with self._lock:
            checked, needed = self._needed
            if time.monotonic() - checked > KEY_TTL_S:
                needed = access.any_users()
                self._needed = (time.monotonic(), needed)
            return needed

    def owner(self, key: str) -> Any:
        from core import access

        with self._lock:
            checked, actor = self._owners.get(key, (-KEY_TTL_S, None))
            if time.monotonic() - checked > KEY_TTL_S:
                actor = access.key_actor(key)
                if len(self._owners) > 1000:  # bounded: a flood of wrong keys
                    self._owners.clear()
                self._owners[key] = (time.monotonic(), actor)
            return actor


def caller(keys: Keys, request: Request) -> Any:
    """Who calls: LOCAL while the installation has no users (loopback only, then), else the
    owner of the request's API key (any role may predict); Refused 401 without a valid one."""
    from core.access import LOCAL, Action, can

    if not keys.needed():
        return LOCAL
    said = request.headers.get("authorization", "")
    key = said[7:].strip() if said[:7].lower() == "bearer " else request.headers.get("x-api-key", "").strip()
    if not key:
        raise Refused(
            401,
            "this endpoint needs an API key: send the header 'Authorization: Bearer KEY' "
            "(`python -m core users key NAME` makes one)",
        )
    actor = keys.owner(key)
    if actor is None:
        raise Refused(401, "that API key is not valid (revoked, mistyped, or of another installation)")
    if not can(actor, Action.PREDICT):
        raise Refused(403, f"{actor.label} is a {actor.role.value} and may not predict")
    return actor


class Models:
    """Predictors by model file, opened once and kept while they are among the last SESSIONS
    used; a re-exported file (a new modification time) is opened anew."""

    def __init__(self, size: int = SESSIONS) -> None:
        self._open: OrderedDict[tuple[str, str, float], Any] = OrderedDict()
        self._lock = threading.Lock()
        self.size = size

    def get(self, path: Path, task: str = "") -> Any:
        """The runtime for `path`: a Transcriber, Translator or Generator for those tasks, else
        a Predictor."""
        from core.runtime import Generator, Predictor, Transcriber, Translator

        kind = {"speech-recognition": Transcriber, "translation": Translator, "text-generation": Generator}
        opener: Any = kind.get(task, Predictor)
        key = (opener.__name__, str(path), path.stat().st_mtime)
        with self._lock:
            if key in self._open:
                self._open.move_to_end(key)
                return self._open[key]
        predictor = opener(path)  # outside the lock: opening a large model takes a while
        with self._lock:
            self._open[key] = predictor
            while len(self._open) > self.size:
                self._open.popitem(last=False)
        return predictor


def _model_file(run_id: int) -> tuple[Any, Path]:
    """The run and its exported model.onnx, or a refusal."""
    from core import jobs

    try:
        run = jobs.get_run(run_id)
    except NotFoundError as exc:
        raise Refused(404, str(exc)) from exc
    path = next((Path(a.path) for a in jobs.artifacts(run_id) if a.kind == "onnx"), None)
    if path is None or not path.is_file():
        raise Refused(409, f"run {run_id} is {run.status} and has no exported model to predict with")
    return run, path


async def _body(request: Request) -> bytes:
    """The request's body, refused past MAX_BODY_BYTES (by its stated length, or as it comes)."""
    stated = request.headers.get("content-length")
    if stated is not None and stated.isdigit() and int(stated) > MAX_BODY_BYTES:
        raise Refused(413, f"the body is {int(stated):,} bytes; send at most {MAX_BODY_BYTES:,} per request")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise Refused(413, f"the body is over {MAX_BODY_BYTES:,} bytes; send at most that per request")
        chunks.append(chunk)
    return b"".join(chunks)


def _doc(body: bytes, task: str) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Refused(422, f"the body is not valid JSON ({exc}); {task} takes {TAKES[task]}") from exc


def _json(body: bytes, key: str, task: str) -> list[Any]:
    doc = _doc(body, task)
    if not isinstance(doc, dict) or not isinstance(doc.get(key), list):
        raise Refused(422, f"{task} takes {TAKES[task]}")
    extra = sorted(set(doc) - {key})
    sampling = [k for k in extra if k in GENERATION_OPTIONS - {"max_new_tokens"}]
    if sampling:
        raise Refused(422, f"{', '.join(sampling)} are for text generation runs; this run is {task}")
    if extra:
        raise Refused(422, f"unknown field(s) {', '.join(extra)}; {task} takes {TAKES[task]}")
    items = doc[key]
    if not items:
        raise Refused(422, f"'{key}' is empty; give at least one")
    if len(items) > MAX_ITEMS:
        raise Refused(422, f"{len(items)} {key}; send at most {MAX_ITEMS:,} per request")
    return items


def _rows_to_columns(rows: list[Any]) -> dict[str, list[Any]]:
    """Rows as the runtime takes tables: each column's values, None where a row lacks it."""
    if not all(isinstance(r, dict) for r in rows):
        raise Refused(422, 'each row must be an object of column: value, such as {"alcohol": 13.2}')
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    bad = next((c for r in rows for c, v in r.items() if isinstance(v, dict | list)), None)
    if bad is not None:
        raise Refused(422, f"column '{bad}' holds a list or an object; give one number or text per cell")
    return {c: [r.get(c) for r in rows] for c in columns}


async def _files(request: Request, body: bytes, task: str) -> list[tuple[str, bytes]]:
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise Refused(415, f"{task} takes {TAKES[task]}")

    async def stream() -> Any:
        yield body

    try:
        form = await MultiPartParser(
            request.headers, stream(), max_files=MAX_ITEMS, max_fields=MAX_ITEMS, max_part_size=MAX_BODY_BYTES
        ).parse()
    except MultiPartException as exc:
        raise Refused(422, f"the multipart body cannot be read: {exc.message}") from exc
    files = [f for f in form.getlist("files") if isinstance(f, UploadFile)]
    if not files:
        raise Refused(422, f"no files in the field 'files'; {task} takes {TAKES[task]}")
    return [(f.filename or f"file {i}", await f.read()) for i, f in enumerate(files, 1)]


def _predict(predictor: Any, task: str, items: Any, threshold: float, beams: int) -> list[dict[str, Any]]:
    """What the model says of each item, in the CLI's JSON shapes."""
    from core.runtime import mask_png

    if task in ("tabular-classification", "tabular-regression"):
        preds = predictor.predict_table(items)
        if task == "tabular-regression":
            return [{"row": i, "value": p.value} for i, p in enumerate(preds)]
        return [{"row": i, "label": p.label, "probabilities": p.probabilities} for i, p in enumerate(preds)]
    if task == "text-classification":
        preds = predictor.predict_texts(items)
        return [{"text": t, "label": p.label, "top": _top(p)} for t, p in zip(items, preds, strict=True)]
    if task == "translation":
        found = predictor.translate(items, beams=beams)
        return [{"source": t, **dataclasses.asdict(f)} for t, f in zip(items, found, strict=True)]
    out: list[dict[str, Any]] = []
    for name, data in items:
        try:
            if task == "speech-recognition":
                (heard,) = predictor.transcribe([data], beams=beams)
                out.append({"file": name, **dataclasses.asdict(heard)})
            elif task in ("image-classification", "audio-classification"):
                predict = predictor.predict_images if task.startswith("image") else predictor.predict_audio
                (pred,) = predict([data])
                out.append({"file": name, "label": pred.label, "top": _top(pred)})
            elif task == "object-detection":
                boxes = predictor.detect(data, threshold)
                found = [{"label": b.label, "score": b.score, "box": list(b.box)} for b in boxes]
                out.append({"file": name, "boxes": found})
            else:
                seg = predictor.segment(data)
                png = mask_png(seg.mask, len(predictor.labels))
                shares = {k: round(v, 4) for k, v in seg.shares.items() if v > 0}
                out.append({"file": name, "shares": shares, "mask_png": base64.b64encode(png).decode()})
        except (AscentError, RuntimeInputError) as exc:  # an unreadable or oversized file
            raise Refused(422, f"{name}: {exc}") from exc
    return out


GENERATION_OPTIONS = {
    "prompt",
    "messages",
    "max_new_tokens",
    "temperature",
    "top_p",
    "stop",
    "seed",
    "stream",
}


def _generation(generator: Any, run_id: int, content_type: str, body: bytes) -> Any:
    """A generator's answer to a prompt or a conversation: whole, or one JSON line per token
    (the last line the whole generation) when "stream" is true."""
    from fastapi.responses import StreamingResponse

    from core.runtime import Generation

    task = "text-generation"
    if not content_type.startswith("application/json"):
        raise Refused(415, f"{task} takes {TAKES[task]}")
    doc = _doc(body, task)
    if not isinstance(doc, dict) or ("prompt" in doc) == ("messages" in doc):
        raise Refused(422, f"{task} takes {TAKES[task]}")
    unknown = sorted(set(doc) - GENERATION_OPTIONS)
    if unknown:
        raise Refused(
            422, f"unknown field(s) {', '.join(unknown)}; give {', '.join(sorted(GENERATION_OPTIONS))}"
        )
    prompt = doc.get("prompt", doc.get("messages"))
    ok_messages = (
        isinstance(prompt, list)
        and prompt
        and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in prompt
        )
    )
    if not (isinstance(prompt, str) and prompt.strip()) and not ok_messages:
        raise Refused(422, 'the prompt must be a non-empty string, or messages a list of {"role", "content"}')
    numbers = {
        k: doc[k] for k in ("max_new_tokens", "temperature", "top_p", "seed") if doc.get(k) is not None
    }
    if any(isinstance(v, bool) or not isinstance(v, int | float) for v in numbers.values()):
        raise Refused(422, "max_new_tokens, temperature, top_p and seed must be numbers")
    stop = doc.get("stop", [])
    if not isinstance(stop, list) or not all(isinstance(x, str) for x in stop):
        raise Refused(422, "stop must be a list of strings")
    options: dict[str, Any] = {**numbers, "stop": stop}
    limit = int(generator.settings["max_new_tokens"])
    if "max_new_tokens" in options and not 1 <= options["max_new_tokens"] <= limit:
        raise Refused(422, f"max_new_tokens must be from 1 to {limit}")
    result = Generation("", [], 0, 0.0, 0.0, "length")
    tokens = generator.stream(prompt, result=result, **options)
    try:
        first = next(tokens, None)  # the options and the prompt's length are checked here
    except RuntimeInputError as exc:
        raise Refused(422, str(exc)) from exc

    def lines() -> Any:
        if first is not None:
            yield json.dumps({"token": first.text, "ms": round(first.ms, 2)}) + "\n"
        for token in tokens:
            yield json.dumps({"token": token.text, "ms": round(token.ms, 2)}) + "\n"
        yield json.dumps({"run": run_id, "generation": dataclasses.asdict(result)}) + "\n"

    if doc.get("stream"):
        return StreamingResponse(lines(), media_type="application/x-ndjson")
    for _ in lines():
        pass
    return {"run": run_id, "provider": generator.provider, "generation": dataclasses.asdict(result)}


def _top(pred: Any, k: int = 5) -> list[dict[str, Any]]:
    return [{"label": label, "probability": p} for label, p in pred.top(k)]


def create_app(runs: list[int] | None = None, *, timeout_s: float = MAX_SECONDS) -> FastAPI:
    """The endpoint's application: every finished run of this installation, or only `runs`."""
    models = Models()
    keys = Keys()
    app = FastAPI(
        title="Ascent",
        summary="Predictions from the runs of an Ascent installation",
        description="POST /runs/{id}/predict takes what the run's task takes; GET /runs/{id} says what.",
    )

    @app.exception_handler(Refused)
    async def refused(_request: Request, exc: Refused) -> JSONResponse:
        challenge = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=challenge)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("path", "query", "body"))
        return JSONResponse({"detail": f"{where}: {first.get('msg')}" if where else first.get("msg")}, 422)

    @app.exception_handler(Exception)
    async def unexpected(
        request: Request, exc: Exception
    ) -> JSONResponse:  # one line; the traceback to the log
        from core import errorlog

        error_id = errorlog.record(exc, where=f"serve {request.method} {request.url.path}")
        return JSONResponse({"detail": errorlog.user_message(exc, error_id)}, status_code=500)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code)

    known: dict[int, tuple[Any, Path]] = {}  # finished runs and their model files, looked up once

    def served(run_id: int) -> tuple[Any, Path]:
        if runs is not None and run_id not in runs:
            raise Refused(404, f"run {run_id} is not served here; this endpoint serves runs {_ids(runs)}")
        found = known.get(run_id)
        if found is not None and found[1].is_file():  # still there (a deleted run's file is gone)
            return found
        found = _model_file(run_id)
        known[run_id] = found
        return found

    @app.get("/health", summary="Whether the endpoint is up, and which runs it serves")
    def health() -> dict[str, Any]:
        from core.runtime import _cuda_driver_present

        return {
            "status": "ok",
            "runs": runs if runs is not None else "every finished run",
            "cuda": _cuda_driver_present(),
        }

    @app.get("/runs/{run_id}", summary="A run's task, what it takes, its labels and its certificate")
    def describe(run_id: int, request: Request) -> dict[str, Any]:
        from db.queries import list_exports
        from db.session import session_scope

        caller(keys, request)
        run, path = served(run_id)
        predictor = models.get(path, run.task)
        with session_scope() as session:
            exports = list_exports(session=session, run_ids=[run_id])
        return {
            "id": run.id,
            "task": run.task,
            "model": run.model,
            "status": run.status,
            "takes": TAKES.get(run.task, f"{run.task} is not served over HTTP yet"),
            "inputs": getattr(predictor, "inputs", None),
            "labels": getattr(predictor, "labels", None),
            "provider": predictor.provider,
            "certificate": [
                {
                    "variant": e.variant,
                    "status": e.status,
                    "bytes": e.bytes,
                    "max_abs_diff": e.max_abs_diff,
                    "agreement": e.top1_agreement,
                    "metric": e.metric_name,
                    "value": e.metric_value,
                    "latency_ms": e.latency_ms,
                }
                for e in exports
            ],
        }

    @app.post(
        "/runs/{run_id}/predict",
        summary="Predict with a run's exported model",
        openapi_extra={
            "requestBody": {
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "rows": {"type": "array", "items": {"type": "object"}},
                                "texts": {"type": "array", "items": {"type": "string"}},
                            },
                        }
                    },
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "files": {"type": "array", "items": {"type": "string", "format": "binary"}}
                            },
                        }
                    },
                },
                "description": "; ".join(f"{task}: {takes}" for task, takes in TAKES.items()),
            }
        },
    )
    async def predict(
        run_id: int, request: Request, threshold: float | None = None, beams: int | None = None
    ) -> Any:
        from core.runtime import DEFAULT_THRESHOLD

        caller(keys, request)  # a database query at most every few seconds: on the loop
        run, path = served(run_id)
        if threshold is not None and run.task != "object-detection":
            raise Refused(422, f"threshold is for detection runs; run {run_id} is {run.task}")
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise Refused(422, f"threshold {threshold:g} is no score; give one from 0 to 1")
        if beams is not None and run.task not in ("speech-recognition", "translation"):
            raise Refused(
                422, f"beams is for speech recognition and translation runs; run {run_id} is {run.task}"
            )
        if beams is not None and not 1 <= beams <= MAX_BEAMS:
            raise Refused(422, f"beams {beams} is out of range; give 1 (greedy) to {MAX_BEAMS}")
        body = await _body(request)
        if run.task == "text-generation":  # off the event loop: the first token is computed here
            generator = models.get(path, run.task)
            content_type = request.headers.get("content-type", "")
            try:
                with anyio.fail_after(timeout_s):
                    return await anyio.to_thread.run_sync(
                        lambda: _generation(generator, run_id, content_type, body), abandon_on_cancel=True
                    )
            except TimeoutError as exc:
                raise Refused(504, f"the answer took over {timeout_s:g} s; ask for fewer new tokens") from exc
        items: Any
        if run.task in FILE_TASKS:
            items = await _files(request, body, run.task)
            if len(items) > MAX_ITEMS:
                raise Refused(422, f"{len(items)} files; send at most {MAX_ITEMS:,} per request")
        else:
            if not request.headers.get("content-type", "").startswith("application/json"):
                raise Refused(415, f"{run.task} takes {TAKES[run.task]}")
            if run.task in ("text-classification", "translation"):
                items = _json(body, "texts", run.task)
                if not all(isinstance(t, str) and t.strip() for t in items):
                    raise Refused(422, "each text must be a non-empty string")
            else:
                items = _rows_to_columns(_json(body, "rows", run.task))
        predictor = models.get(path, run.task)
        call: Callable[[], list[dict[str, Any]]] = lambda: _predict(  # noqa: E731
            predictor, run.task, items, DEFAULT_THRESHOLD if threshold is None else threshold, beams or 1
        )
        began = time.perf_counter()
        try:
            with anyio.fail_after(timeout_s):
                found = await anyio.to_thread.run_sync(call, abandon_on_cancel=True)
        except TimeoutError as exc:
            raise Refused(
                504, f"the predictions took over {timeout_s:g} s; send fewer items at a time"
            ) from exc
        except (AscentError, RuntimeInputError) as exc:  # a missing column, a value of the wrong kind
            raise Refused(422, str(exc)) from exc
        return {"run": run_id, "provider": predictor.provider, "ms": round((time.perf_counter() - began) * 1000, 3),
                "predictions": found}  # fmt: skip

    return app


def _ids(runs: list[int]) -> str:
    return ", ".join(str(r) for r in runs) or "none"


def snippets(run_id: int, *, base: str = "http://127.0.0.1:8000") -> dict[str, str]:
    """A curl command and a Python program (standard library only) calling the endpoint for
    this run, filled with its real inputs: a validation row's columns and values for a table,
    its task's body otherwise; with the API key from $ASCENT_API_KEY once the installation has
    users. Empty for a task not served over HTTP."""
    from core import access

    found = _snippets(run_id, base)
    if not found or not access.any_users():
        return found
    how = "# export ASCENT_API_KEY=...   (made by: python -m core users key YOUR_NAME)\n"
    curl = found["curl"].replace(
        "curl -s -X POST ", 'curl -s -X POST -H "Authorization: Bearer $ASCENT_API_KEY" ', 1
    )
    python = found["python"].replace("import json, ", "import json, os, ", 1)
    python = python.replace(
        "headers={", "headers={'Authorization': 'Bearer ' + os.environ['ASCENT_API_KEY'],\n    ", 1
    )
    first, rest = (curl + "\n").split("\n", 1)
    curl = (first + "\n" + how + rest).rstrip("\n")
    first, rest = python.split("\n", 1)
    return {"curl": curl, "python": first + "\n" + how + rest}


def _snippets(run_id: int, base: str) -> dict[str, str]:
    from core import jobs, summary
    from core.data.ingest import get_dataset

    run = jobs.get_run(run_id)
    url = f"{base}/runs/{run_id}/predict"
    start = f"python -m core serve --run {run_id}"
    if run.task in ("tabular-classification", "tabular-regression"):
        row: dict[str, Any] = {}
        try:  # a validation row, without its target (a deleted dataset: no values to show)
            dataset = get_dataset(run.dataset_id) if run.dataset_id is not None else None
            found = summary.example_row(dataset, run.config) if dataset is not None else None
        except AscentError:
            dataset = found = None
        if dataset is not None and found is not None:
            row = {k: v for k, v in found[1].items() if k != dataset.schema.get("target")}
        doc: dict[str, Any] = {"rows": [row]}
    elif run.task in ("text-classification", "translation"):
        doc = {"texts": ["Your text here."]}
    elif run.task == "text-generation":
        doc = {"prompt": "Your question here.", "max_new_tokens": 64}
    elif run.task in FILE_TASKS:
        kind = "clip.wav" if run.task in ("audio-classification", "speech-recognition") else "photo.jpg"
        query = "?threshold=0.25" if run.task == "object-detection" else ""
        return {
            "curl": f"# {start}\ncurl -s -X POST '{url}{query}' -F files=@{kind}",
            "python": (
                f"# {start}\n"
                "import json, urllib.request, uuid\n"
                f'path = "{kind}"\n'
                "boundary = uuid.uuid4().hex\n"
                'body = (f\'--{boundary}\\r\\nContent-Disposition: form-data; name="files"; filename="{path}"\'\n'
                "        '\\r\\nContent-Type: application/octet-stream\\r\\n\\r\\n').encode()\n"
                "body += open(path, 'rb').read() + f'\\r\\n--{boundary}--\\r\\n'.encode()\n"
                f'request = urllib.request.Request("{url}{query}", data=body,\n'
                "    headers={'Content-Type': f'multipart/form-data; boundary={boundary}'})\n"
                'print(json.load(urllib.request.urlopen(request))["predictions"])\n'
            ),
        }
    else:
        return {}
    payload = json.dumps(doc, default=str)
    shown = payload.replace("'", "'\\''")
    answer = "generation" if run.task == "text-generation" else "predictions"
    return {
        "curl": f"# {start}\ncurl -s -X POST {url} -H 'content-type: application/json' \\\n  -d '{shown}'",
        "python": (
            f"# {start}\n"
            "import json, urllib.request\n"
            f"doc = {pprint.pformat(doc, sort_dicts=False, width=96)}\n"
            f'request = urllib.request.Request("{url}", data=json.dumps(doc).encode(),\n'
            '    headers={"Content-Type": "application/json"})\n'
            f'print(json.load(urllib.request.urlopen(request))["{answer}"])\n'
        ),
    }
