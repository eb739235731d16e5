"""The REST endpoint (`python -m core serve`), a real server on 127.0.0.1: a table run and an
image run answer as `python -m core predict` does, many requests at once each get their own
answer, and bad requests get one line and a 4xx status with nothing written."""

from __future__ import annotations

import ast
import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core import jobs
from core.data import scenes
from core.data.ingest import ingest_file
from tests.conftest import ROOT, train_here
from tests.test_explain_maps import SIZE, _picture, _png, _shapes_zip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _call(url: str, body: bytes | None = None, content_type: str | None = None) -> tuple[int, Any]:
    """(status, JSON) of a GET (no body) or a POST."""
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    if content_type:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        text = err.read()
        try:
            return err.code, json.loads(text)
        except ValueError:
            return err.code, text.decode(errors="replace")


def _multipart(files: list[tuple[str, bytes]], field: str = "files") -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n".encode()
        + data
        + b"\r\n"
        for name, data in files
    ]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _cli(*args: str) -> Any:
    done = subprocess.run(
        [sys.executable, "-m", "core", *args, "--json"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _serve(*args: str) -> tuple[subprocess.Popen[str], str]:
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "core", "serve", "--port", str(port), *args],
        cwd=ROOT,
        env=os.environ.copy(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if _call(base + "/health")[0] == 200:
                return server, base
        except OSError:
            time.sleep(0.1)
    server.terminate()
    raise AssertionError("the endpoint never answered /health")


@pytest.fixture
def served(home: Path, data_dir: Path, tmp_path: Path) -> Iterator[tuple[str, int, int, int]]:
    """(base URL, table run, image run, segmentation run) of `python -m core serve` on a free loopback port."""
    table = ingest_file(data_dir / "wine.csv")
    shapes = ingest_file(_shapes_zip(tmp_path / "shapes.zip", per_class=12))
    masks = ingest_file(scenes.segmentation_zip(tmp_path / "masks.zip", 12, size=64, seed=5))
    wine = jobs.submit(jobs.config_for(table.id, epochs=3)).id
    image = jobs.submit(jobs.config_for(shapes.id, model="small-cnn", epochs=1, image_size=SIZE)).id
    segmentation = jobs.submit(jobs.config_for(masks.id, epochs=1, image_size=64, batch_size=8)).id
    train_here(wine, image, segmentation)
    server, base = _serve()
    try:
        yield base, wine, image, segmentation
    finally:
        server.terminate()
        print(server.communicate(timeout=30)[0][-3000:])  # the server's own words, when a check failed


def _files_listing(home: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(home)), p.stat().st_size) for p in home.rglob("*") if p.is_file())


def test_a_table_run_and_an_image_run_answer_as_the_command_line_does(  # type: ignore[no-untyped-def]
    served, data_dir: Path, tmp_path: Path
) -> None:
    base, wine, image, segmentation = served
    status, health = _call(base + "/health")
    assert status == 200 and health["status"] == "ok" and health["runs"] == "every finished run"

    status, about = _call(f"{base}/runs/{wine}")
    assert status == 200 and about["task"] == "tabular-classification" and about["labels"] == ["0", "1", "2"]
    assert about["inputs"][0]["columns"][:2] == ["alcohol", "malic_acid"]
    assert about["takes"].startswith('JSON {"rows"')

    rows = pd.read_csv(data_dir / "wine.csv").drop(columns="target").sample(20, random_state=1)
    rows.to_csv(tmp_path / "rows.csv", index=False)
    expected = _cli("predict", "--run", str(wine), str(tmp_path / "rows.csv"))["predictions"]
    body = json.dumps({"rows": rows.to_dict(orient="records")}).encode()
    status, got = _call(f"{base}/runs/{wine}/predict", body, "application/json")
    assert status == 200, got
    table_labels = [p["label"] for p in expected]
    assert [p["label"] for p in got["predictions"]] == table_labels
    for a, b in zip(got["predictions"], expected, strict=True):
        assert a["row"] == b["row"]
        assert np.allclose(list(a["probabilities"].values()), list(b["probabilities"].values()), atol=1e-6)

    rng = np.random.default_rng(4)
    pictures = [tmp_path / "a.png", tmp_path / "b.png"]
    _png(_picture(rng, (2, 2)), pictures[0])
    _png(_picture(rng, None), pictures[1])
    expected = _cli("predict", "--run", str(image), *map(str, pictures))["predictions"]
    body, kind = _multipart([(p.name, p.read_bytes()) for p in pictures])
    status, got = _call(f"{base}/runs/{image}/predict", body, kind)
    assert status == 200, got
    assert [(p["file"], p["label"]) for p in got["predictions"]] == [("a.png", expected[0]["label"]),
                                                                     ("b.png", expected[1]["label"])]  # fmt: skip
    for a, b in zip(got["predictions"], expected, strict=True):
        assert [t["label"] for t in a["top"]] == [t["label"] for t in b["top"]]
        assert np.allclose(
            [t["probability"] for t in a["top"]], [t["probability"] for t in b["top"]], atol=1e-6
        )

    # The run page's "Use this model" snippets, run as they are shown: the same answers.
    from core.serve import snippets

    for run, picture in ((wine, None), (image, pictures[0])):
        program = snippets(run, base=base)["python"]
        if picture is not None:
            (tmp_path / "photo.jpg").write_bytes(picture.read_bytes())  # the name the snippet reads
        done = subprocess.run([sys.executable, "-c", program], cwd=tmp_path, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        (answer,) = ast.literal_eval(done.stdout)  # one row, or one picture
        assert answer["label"] in (["0", "1", "2"] if picture is None else ["plain", "square"]), answer
    assert snippets(wine, base=base)["curl"].startswith(
        f"# python -m core serve --run {wine}\ncurl -s -X POST"
    )

    # A segmenter's mask comes back as a palette PNG of the image's own size, as `predict --out` writes it.
    scene = tmp_path / "scene.png"
    scene.write_bytes(_png(np.kron(_picture(rng, (3, 3)), np.ones((2, 3, 1), np.uint8))))  # 96 x 64
    expected = _cli("predict", "--run", str(segmentation), str(scene), "--out", str(tmp_path / "masks"))
    body, kind = _multipart([("scene.png", scene.read_bytes())])
    status, got = _call(f"{base}/runs/{segmentation}/predict", body, kind)
    assert status == 200, got
    (found,) = got["predictions"]
    assert found["shares"] == expected["predictions"][0]["shares"]
    with (
        Image.open(io.BytesIO(base64.b64decode(found["mask_png"]))) as mask,
        Image.open(tmp_path / "masks" / "scene.png") as written,
    ):
        assert mask.mode == "P" and mask.size == (96, 64)
        assert np.array_equal(np.asarray(mask), np.asarray(written))

    # Many requests at once, each of one row: every answer is its own row's.
    single = [{k: float(v) for k, v in r.items()} for r in rows.to_dict(orient="records")]

    def one(i: int) -> str:
        status, found = _call(
            f"{base}/runs/{wine}/predict", json.dumps({"rows": [single[i % 20]]}).encode(), "application/json"
        )
        assert status == 200, found
        return str(found["predictions"][0]["label"])

    with ThreadPoolExecutor(16) as pool:
        labels = list(pool.map(one, range(96)))
    assert labels == [table_labels[i % 20] for i in range(96)]


# (what, method and path, body, content type, status, words the one-line answer holds)
REFUSALS: list[tuple[str, str, bytes | None, str | None, int, str]] = [
    ("an unknown run", "/runs/999/predict", b'{"rows": []}', "application/json", 404, "no run with id 999"),
    ("a run id that is no number", "/runs/abc", None, None, 422, "run_id: Input should be a valid integer"),
    ("rows that are not JSON", "/runs/{wine}/predict", b'{"rows": [', "application/json", 422, "not valid JSON"),
    ("no rows", "/runs/{wine}/predict", b'{"rows": []}', "application/json", 422, "'rows' is empty"),
    ("texts to a table run", "/runs/{wine}/predict", b'{"texts": ["a"]}', "application/json", 422,
     'takes JSON {"rows"'),
    ("a row that is a list", "/runs/{wine}/predict", b'{"rows": [[1, 2]]}', "application/json", 422,
     "each row must be an object"),
    ("a row missing columns", "/runs/{wine}/predict", b'{"rows": [{"alcohol": 13}]}', "application/json", 422,
     "missing column(s) malic_acid"),
    ("a cell holding a list", "/runs/{wine}/predict", b'{"rows": [{"alcohol": [1]}]}', "application/json", 422,
     "column 'alcohol' holds a list"),
    ("a file to a table run", "/runs/{wine}/predict", b"x", "multipart/form-data; boundary=x", 415,
     'takes JSON {"rows"'),
    ("a threshold to a table run", "/runs/{wine}/predict?threshold=0.5", b'{"rows": [{}]}', "application/json",
     422, "threshold is for detection runs"),
    ("JSON to an image run", "/runs/{image}/predict", b'{"rows": [{}]}', "application/json", 415,
     "takes multipart/form-data"),
    ("no files to an image run", "/runs/{image}/predict", b"--x--\r\n", "multipart/form-data; boundary=x", 422,
     "no files in the field 'files'"),
    ("a text file as an image", "/runs/{image}/predict", None, "files:notes.png=hello", 422,
     "notes.png: not a readable image"),
]  # fmt: skip


def test_bad_requests_get_one_line_and_a_4xx_status_and_write_nothing(  # type: ignore[no-untyped-def]
    served, home: Path
) -> None:
    base, wine, image, _ = served
    before = _files_listing(home)
    for what, path, body, kind, status, words in REFUSALS:
        url = base + path.format(wine=wine, image=image)
        if kind is not None and kind.startswith("files:"):
            name, text = kind.removeprefix("files:").split("=")
            body, kind = _multipart([(name, text.encode())])
        got_status, got = _call(url, body, kind)
        assert got_status == status, (what, got_status, got)
        assert set(got) == {"detail"} and words in got["detail"] and "\n" not in got["detail"], (what, got)
    assert _files_listing(home) == before


def test_a_generator_answers_whole_or_token_by_token_and_a_translator_translates(
    home: Path, tmp_path: Path, bare_python: Path
) -> None:
    from core.data.samples import HELPDESK_FILE
    from core.models.translation import small_marian, train_tokenizer
    from core.runtime import Generator
    from tests.conftest import tiny_llama
    from tests.test_generation import QUESTION
    from tests.test_translation import PAIRS, pairs_csv

    chat = ingest_file(HELPDESK_FILE)
    tiny = tiny_llama(tmp_path / "tiny-llama")
    generation = jobs.submit(jobs.config_for(chat.id, model="hf-causal-lm", weights=str(tiny), epochs=1)).id
    pairs = ingest_file(pairs_csv(tmp_path / "pairs.csv"))
    tok = train_tokenizer([s for pair in PAIRS for s in pair] * 3)
    marian = tmp_path / "marian"
    small_marian(tok, 0.0).save_pretrained(marian)
    tok.save_pretrained(marian)
    translation = jobs.submit(jobs.config_for(pairs.id, model="hf-marian", weights=str(marian), epochs=1)).id
    train_here(generation, translation)
    server, base = _serve("--run", str(generation), "--run", str(translation))
    try:
        expected = Generator(jobs.run_dir(generation) / "model.onnx").generate(QUESTION, max_new_tokens=8)
        ask = json.dumps({"prompt": QUESTION, "max_new_tokens": 8}).encode()
        status, got = _call(f"{base}/runs/{generation}/predict", ask, "application/json")
        assert status == 200, got
        assert got["generation"]["tokens"] == expected.tokens and got["generation"]["text"] == expected.text

        # Streamed: one JSON line per token as it comes, then the whole generation.
        streamed = json.dumps({"messages": [{"role": "user", "content": QUESTION}], "max_new_tokens": 8,
                               "stream": True}).encode()  # fmt: skip
        request = urllib.request.Request(f"{base}/runs/{generation}/predict", data=streamed, method="POST")
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=60) as response:
            assert response.headers["content-type"] == "application/x-ndjson"
            lines = [json.loads(line) for line in response.read().decode().splitlines()]
        *tokens, last = lines
        assert "".join(t["token"] for t in tokens) == last["generation"]["text"] == expected.text
        assert [t["ms"] for t in tokens] == sorted(t["ms"] for t in tokens)

        for body, words in (
            ({"prompt": "hi", "messages": []}, "takes JSON"),
            ({"prompt": "hi", "max_new_tokens": 0}, "max_new_tokens must be from 1 to"),
            ({"prompt": "hi", "temperature": "hot"}, "must be numbers"),
            ({"prompt": "hi", "top_p": 2.0}, "top-p in (0, 1]"),
            ({"prompt": "hi", "colour": "red"}, "unknown field(s) colour"),
            ({"prompt": "  "}, "the prompt must be a non-empty string"),
        ):
            status, refused = _call(
                f"{base}/runs/{generation}/predict", json.dumps(body).encode(), "application/json"
            )
            assert status == 422 and words in refused["detail"], (body, refused)

        sentences = [PAIRS[0][0], PAIRS[1][0]]
        cli = _cli("predict", "--run", str(translation), "--text", sentences[0], "--text", sentences[1])
        status, got = _call(f"{base}/runs/{translation}/predict", json.dumps({"texts": sentences}).encode(),
                            "application/json")  # fmt: skip
        assert status == 200, got
        assert [t["source"] for t in got["predictions"]] == sentences
        assert [t["text"] for t in got["predictions"]] == [t["text"] for t in cli["translations"]]
        assert [t["tokens"] for t in got["predictions"]] == [t["tokens"] for t in cli["translations"]]
        status, refused = _call(
            f"{base}/runs/{translation}/predict?beams=9", b'{"texts": ["a"]}', "application/json"
        )
        assert status == 422 and "beams 9 is out of range" in refused["detail"]
        status, refused = _call(
            f"{base}/runs/{generation}/predict?beams=2", b'{"prompt": "a"}', "application/json"
        )
        assert status == 422 and "beams is for speech recognition and translation" in refused["detail"]
    finally:
        server.terminate()
        print(server.communicate(timeout=30)[0][-3000:])  # the server's own words, when a check failed

    # Their bundles: predict.py answers as the runtime does where tokenizers is installed, and
    # says to install it where only numpy and onnxruntime are.
    from tests.test_bundle import _bare, _bundle, _records

    folder = _bundle(translation, tmp_path / "translator")
    assert {"decoder.onnx", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    assert "pip install numpy onnxruntime tokenizers" in (folder / "README.md").read_text()
    argv = ["--text", sentences[0], "--text", sentences[1]]
    assert [r["text"] for r in _records(Path(sys.executable), folder, *argv)] == [
        t["text"] for t in cli["translations"]
    ]
    bare = _bare(bare_python, folder, *argv)
    assert bare.returncode == 2
    assert bare.stderr == "error: a translation model needs the tokenizers package: pip install tokenizers\n"
    folder = _bundle(generation, tmp_path / "generator")
    (made,) = _records(Path(sys.executable), folder, "--text", QUESTION, "--max-new-tokens", "8")
    assert made["text"] == expected.text and made["tokens"] == expected.tokens


def test_bodies_over_the_limit_and_slow_predictions_are_refused(home: Path, data_dir: Path) -> None:
    from starlette.testclient import TestClient

    from core import serve

    wine = jobs.submit(jobs.config_for(ingest_file(data_dir / "wine.csv").id, epochs=1)).id
    train_here(wine)
    row = pd.read_csv(data_dir / "wine.csv").drop(columns="target").iloc[:1].to_dict(orient="records")
    with TestClient(serve.create_app([wine])) as client:
        assert client.post(f"/runs/{wine}/predict", json={"rows": row}).status_code == 200
        big = b" " * (serve.MAX_BODY_BYTES + 1)
        said = client.post(f"/runs/{wine}/predict", content=big, headers={"content-type": "application/json"})
        assert said.status_code == 413 and "send at most 67,108,864 per request" in said.json()["detail"]

        def pieces() -> Iterator[bytes]:  # no stated length: counted as it arrives
            for _ in range(65):
                yield b" " * (1024 * 1024)

        said = client.post(
            f"/runs/{wine}/predict", content=pieces(), headers={"content-type": "application/json"}
        )
        assert said.status_code == 413 and "over 67,108,864 bytes" in said.json()["detail"]
        said = client.get(f"/runs/{wine + 1}")
        assert said.status_code == 404 and said.json() == {
            "detail": f"run {wine + 1} is not served here; this endpoint serves runs {wine}"
        }
    with TestClient(serve.create_app([wine], timeout_s=1e-6)) as client:
        said = client.post(f"/runs/{wine}/predict", json={"rows": row})
        assert said.status_code == 504 and said.json()["detail"].startswith(
            "the predictions took over 1e-06 s"
        )


def test_with_users_every_call_needs_a_key_and_a_viewers_key_predicts(home: Path, data_dir: Path) -> None:
    """No users: loopback only, no key. With users: /runs/... answers only to a valid key (a
    viewer's predicts), by either header; the page's Python snippet works with the key in
    $ASCENT_API_KEY; a revoked key is refused within the endpoint's memory of keys; only the
    key's SHA-256 is stored."""
    import hashlib

    from sqlalchemy import text

    from core import access
    from core.serve import snippets
    from db.session import session_scope

    wine = jobs.submit(jobs.config_for(ingest_file(data_dir / "wine.csv").id, epochs=2)).id
    train_here(wine)
    done = subprocess.run(
        [sys.executable, "-m", "core", "serve", "--host", "0.0.0.0"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 1 and done.stderr == (
        "error: serve listens on 0.0.0.0 only with API keys, which need users: add one (`users add NAME`) and "
        "a key (`users key NAME`), or give --host 127.0.0.1\n"
    )

    access.add_user("ada", "correct horse", "admin")
    access.add_user("val", "battery staple", "viewer")
    made = _cli("users", "key", "val", "--label", "the tests")
    secret = made["key"]
    assert secret.startswith("asc_") and len(secret) > 40 and made["prefix"] == secret[:12]
    listed = _cli("users", "keys")
    assert [(k["user"], k["role"], k["label"]) for k in listed] == [("val", "viewer", "the tests")]
    assert all("key" not in k and secret not in json.dumps(k) for k in listed)
    with session_scope() as session:
        stored = [tuple(r) for r in session.execute(text("SELECT prefix, key_sha256 FROM api_keys"))]
    assert stored == [(secret[:12], hashlib.sha256(secret.encode()).hexdigest())]

    server, base = _serve()
    try:
        row = pd.read_csv(data_dir / "wine.csv").drop(columns="target").head(3).to_dict("records")
        body = json.dumps({"rows": row}).encode()
        assert _call(base + "/health")[0] == 200  # open: says nothing about runs
        for path, payload in ((f"/runs/{wine}", None), (f"/runs/{wine}/predict", body), ("/runs/999", None)):
            status, answer = _call(base + path, payload, "application/json" if payload else None)
            assert status == 401 and answer["detail"].startswith("this endpoint needs an API key"), answer
        request = urllib.request.Request(
            base + f"/runs/{wine}", headers={"Authorization": "Bearer asc_wrong"}
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == 401 and refused.value.headers["WWW-Authenticate"] == "Bearer"
        assert json.loads(refused.value.read())["detail"].startswith("that API key is not valid")

        pd.DataFrame(row).to_csv(home.parent / "rows.csv", index=False)
        want = _cli("predict", "--run", str(wine), str(home.parent / "rows.csv"))["predictions"]
        for header in ({"Authorization": f"Bearer {secret}"}, {"X-API-Key": secret}):
            request = urllib.request.Request(
                base + f"/runs/{wine}/predict",
                data=body,
                headers={"Content-Type": "application/json", **header},
            )
            with urllib.request.urlopen(request, timeout=30) as response:
                got = json.loads(response.read())["predictions"]
            assert [p["label"] for p in got] == [p["label"] for p in want]

        shown = snippets(wine, base=base)
        assert 'curl -s -X POST -H "Authorization: Bearer $ASCENT_API_KEY" ' in shown["curl"]
        said = subprocess.run(
            [sys.executable, "-c", shown["python"]],
            capture_output=True,
            text=True,
            env={**os.environ, "ASCENT_API_KEY": secret},
            timeout=60,
        )
        assert said.returncode == 0, said.stderr
        assert ast.literal_eval(said.stdout.strip())[0]["label"] == want[0]["label"]

        assert _cli("users", "revoke-key", str(made["id"])) == {"revoked": made["id"]}

        def with_key() -> int:
            request = urllib.request.Request(
                base + f"/runs/{wine}", headers={"Authorization": f"Bearer {secret}"}
            )
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    return int(response.status)
            except urllib.error.HTTPError as err:
                return err.code

        revoked = time.monotonic()
        while with_key() != 401 and time.monotonic() - revoked < access.KEY_TTL_S + 5:
            time.sleep(0.2)
        assert with_key() == 401 and time.monotonic() - revoked < access.KEY_TTL_S + 5
    finally:
        server.terminate()
        server.communicate(timeout=30)

    # A deleted user's keys go with them.
    again = _cli("users", "key", "val")
    access.delete_user("val")
    assert _cli("users", "keys") == [] and access.key_actor(again["key"]) is None
