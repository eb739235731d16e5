"""Users, sign-in, sessions and roles: the CLI's users commands, Argon2id hashes, the growing
delay after failed sign-ins, signed expiring tokens, the role checks in core, the router's
sign-in gate and each page as a viewer and a member (AppTest), and where the studio may serve."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import train_here
from sqlalchemy import text
from streamlit.testing.v1 import AppTest

from core import access, jobs, summary
from core.access import LOCAL, Action, Actor, can
from core.data.ingest import delete_dataset, get_dataset, ingest_file
from core.errors import AccessError, ConfigError
from db.models import Role
from db.session import engine

ROOT = Path(__file__).resolve().parents[1]


def _cli(*argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "core", *argv],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_users_from_the_command_line(any_home: Path) -> None:
    added = _cli("users", "add", "ada", "--password-stdin", "--json", stdin="correct horse\n")
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["role"] == "admin"  # the first user is an admin
    assert _cli("users", "add", "bob", "--password-stdin", stdin="battery staple\n").returncode == 0
    viewer = _cli("users", "add", "val", "--role", "viewer", "--password-stdin", stdin="staple battery\n")
    assert viewer.returncode == 0 and viewer.stdout.strip() == "user val added (viewer)"
    listed = json.loads(_cli("users", "list", "--json").stdout)
    assert [(u["name"], u["role"]) for u in listed] == [
        ("ada", "admin"),
        ("bob", "member"),
        ("val", "viewer"),
    ]

    # Only Argon2id hashes are stored, never the password.
    with engine(access.database()).connect() as conn:
        hashes = [h for (h,) in conn.execute(text("SELECT password_hash FROM users"))]
    assert all(h.startswith("$argon2id$") for h in hashes)
    assert not any("correct horse" in h for h in hashes)

    changed = _cli("users", "passwd", "bob", "--password-stdin", "--json", stdin="a new password\n")
    assert changed.returncode == 0 and json.loads(changed.stdout)["password_changed"] is True
    with pytest.raises(AccessError):
        access.sign_in("bob", "battery staple")
    time.sleep(1.1)  # the failed attempt holds the next one back 1 s
    assert access.sign_in("bob", "a new password")[0].name == "bob"
    # API keys: printed once, kept as SHA-256 only, listed without the key, gone with their user.
    made = _cli("users", "key", "val", "--label", "till", "--json")
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)["key"]
    assert access.key_actor(key) == access.Actor("val", Role.VIEWER) and access.key_actor(key + "x") is None
    second, _ = access.add_key("bob")
    with engine(access.database()).connect() as conn:
        stored = [tuple(r) for r in conn.execute(text("SELECT label, key_sha256 FROM api_keys ORDER BY id"))]
    assert stored[0] == ("till", hashlib.sha256(key.encode()).hexdigest()) and stored[1][0] == "key"
    assert [(k.user, k.label) for k in access.list_keys()] == [("val", "till"), ("bob", "key")]
    assert [k.id for k in access.list_keys("bob")] == [second.id]
    assert _cli("users", "revoke-key", str(second.id)).returncode == 0 and access.list_keys("bob") == []
    assert _cli("users", "delete", "val").returncode == 0
    assert [u.name for u in access.list_users()] == ["ada", "bob"]
    assert access.list_keys() == [] and access.key_actor(key) is None


def test_failed_sign_ins_cost_a_growing_delay(any_home: Path) -> None:
    access.add_user("ada", "correct horse")
    with pytest.raises(AccessError, match="wrong user name or password"):
        access.sign_in("ada", "wrong one")
    # Held back 1 s: even the right password is not checked yet.
    with pytest.raises(AccessError, match="try again in"):
        access.sign_in("ada", "correct horse")
    time.sleep(1.1)
    with pytest.raises(AccessError, match="wrong user name or password"):
        access.sign_in("ada", "wrong again")
    time.sleep(1.1)  # now 2 s
    with pytest.raises(AccessError, match="try again in"):
        access.sign_in("ada", "correct horse")
    time.sleep(1.0)
    user, token = access.sign_in("ada", "correct horse")
    assert access.session_user(token) == user
    assert [access.retry_delay(n) for n in (0, 1, 2, 3, 10, 20)] == [0, 1, 2, 4, 300, 300]
    # An unknown name answers like a wrong password, and is held back the same way, so the
    # answers do not tell which names exist.
    with pytest.raises(AccessError, match="wrong user name or password"):
        access.sign_in("nobody", "correct horse")
    with pytest.raises(AccessError, match="too many failed sign-ins for this name: try again in 1 s"):
        access.sign_in("nobody", "correct horse")


def test_session_tokens_are_signed_expire_and_end_on_sign_out(
    any_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ada = access.add_user("ada", "correct horse")
    token = access.issue_token(ada)
    assert access.session_user(token) == ada
    payload, signature = token.split(".")
    assert access.session_user(f"{payload}.{signature[:-2]}AA") is None  # forged signature
    assert access.session_user("not a token") is None and access.session_user(None) is None
    expired = access.issue_token(ada, now=time.time() - 13 * 3600)  # sessions last 12 h
    assert access.session_user(expired) is None
    access.sign_out(ada)
    assert access.session_user(token) is None  # every session of the user ended
    access.set_password("ada", "another horse")
    access.delete_user("ada")
    assert access.session_user(access.issue_token(ada)) is None


def test_roles_are_checked_in_core(home: Path, data_dir: Path) -> None:
    viewer, member, other, admin = (
        Actor("val", Role.VIEWER),
        Actor("bob", Role.MEMBER),
        Actor("eve", Role.MEMBER),
        Actor("ada", Role.ADMIN),
    )
    with pytest.raises(AccessError, match="a viewer cannot upload"):
        ingest_file(data_dir / "wine.csv", actor=viewer)
    ds = ingest_file(data_dir / "wine.csv", actor=member)
    assert get_dataset(ds.id).created_by == "bob"
    with pytest.raises(AccessError, match="a viewer cannot train"):
        jobs.submit(jobs.config_for(ds.id), actor=viewer)
    run = jobs.submit(jobs.config_for(ds.id), actor=member)
    assert run.created_by == "bob"
    with pytest.raises(AccessError, match="a viewer cannot cancel"):
        jobs.cancel(run.id, actor=viewer)
    with pytest.raises(AccessError, match="bob's work"):
        jobs.rename(run.id, "mine now", actor=other)
    with pytest.raises(AccessError, match="bob's work"):
        delete_dataset(ds.id, actor=other)
    jobs.rename(run.id, "renamed by bob", actor=member)
    jobs.cancel(run.id, actor=other)  # members cancel any run
    jobs.delete_run(run.id, actor=admin)  # admins delete others' work
    delete_dataset(ds.id, actor=admin)
    assert can(viewer, Action.PREDICT) and not can(viewer, Action.MEASURE)
    assert can(LOCAL, Action.EDIT, owner=None) and not can(member, Action.EDIT, owner=None)


def test_only_admins_name_weights_on_the_server(home: Path, data_dir: Path, tmp_path: Path) -> None:
    """A member cannot point initial weights at server files (which would let error messages
    map the server's folders); a hub id is fetched from the hub, never read from a folder of
    the same name; admins and the command line name any path."""
    from core.data.samples import bbc_news_csv

    member, admin = Actor("bob", Role.MEMBER), Actor("ada", Role.ADMIN)
    wine = ingest_file(data_dir / "wine.csv", actor=member)
    texts = ingest_file(bbc_news_csv(tmp_path / "bbc.csv", per_class=4, chars=80), task="text-classification")
    for weights in ("/etc", "../../etc/passwd", "~/x", "C:\\x"):
        with pytest.raises(AccessError, match="only an admin may name"):
            jobs.submit(jobs.config_for(texts.id, model="hf-transformer", weights=weights), actor=member)
    with pytest.raises(AccessError, match="only an admin may name a weights file"):
        jobs.submit(jobs.config_for(wine.id, weights="/etc/passwd"), actor=member)
    hub = jobs.submit(jobs.config_for(texts.id, model="hf-transformer", weights="core/models"), actor=member)
    assert hub.config["weights"] == "hub:core/models"  # not the repository folder of that name
    kept = jobs.submit(jobs.config_for(texts.id, model="hf-transformer", weights="/srv/m"), actor=admin)
    assert kept.config["weights"] == "/srv/m"
    assert jobs.submit(jobs.config_for(wine.id), actor=member).config["weights"] == "default"
    # A hub id is never looked up as a folder: offline, the hub answers, not core/models/.
    import huggingface_hub.constants

    from core.models.text import load_hf

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        with pytest.raises(ConfigError, match="hub has no such model or could not be reached"):
            load_hf("hub:core/models", 2)


def test_names_are_checked_before_the_insert(any_home: Path, data_dir: Path) -> None:
    ds = ingest_file(data_dir / "wine.csv", name="w" * 200)
    assert len(ds.name) == 200
    with pytest.raises(ConfigError, match="at most 200 characters"):
        jobs.submit(jobs.config_for(ds.id, name="r" * 201))
    run = jobs.submit(jobs.config_for(ds.id))
    assert len(run.name) <= 200  # the automatic name is cut, not refused
    with pytest.raises(ConfigError, match="at most 200 characters"):
        jobs.rename(run.id, "x" * 201)
    with pytest.raises(ConfigError, match="at most 20 tags"):
        jobs.set_tags(run.id, [f"t{i}" for i in range(21)])


def test_the_studio_refuses_to_serve_off_loopback_without_users(home: Path) -> None:
    assert access.serving_refusal("127.0.0.1") is None and access.serving_refusal("localhost") is None
    for address in ("0.0.0.0", "", "10.1.2.3", "example.org"):
        assert "users add" in (access.serving_refusal(address) or "")
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=60)
    at.run()
    assert not at.exception and not at.error  # on loopback, open while no user exists
    from streamlit import config

    config.set_option("server.address", "0.0.0.0")
    try:
        at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=60).run()
        assert not at.exception
        assert "will not serve on 0.0.0.0" in at.error[0].value
        assert not at.title  # no page ran
    finally:
        config.set_option("server.address", "127.0.0.1")
    access.add_user("ada", "correct horse")
    assert access.serving_refusal("0.0.0.0") is None


# --- the studio with users (AppTest) --------------------------------------------------------


def _signed_in(path: str, name: str, password: str) -> AppTest:
    at = AppTest.from_file(str(ROOT / path), default_timeout=60)
    _user, token = access.sign_in(name, password)
    at.session_state["ascent-session-token"] = token
    return at.run()


def test_the_router_shows_only_a_sign_in_form_until_someone_signs_in(home: Path, data_dir: Path) -> None:
    ingest_file(data_dir / "wine.csv", name="secret data")
    access.add_user("ada", "correct horse")
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=60).run()
    assert not at.exception
    assert at.title[0].value == "Ascent" and [t.label for t in at.text_input] == ["User name", "Password"]
    everything = " ".join(str(e.value) for e in (*at.markdown, *at.caption, *at.title) if hasattr(e, "value"))
    assert "secret data" not in everything and "Device" not in everything
    at.text_input[0].input("ada")
    at.text_input[1].input("wrong password")
    at.button[0].click().run()
    assert "wrong user name or password" in at.error[0].value
    time.sleep(1.1)
    at.text_input[0].input("ada")
    at.text_input[1].input("correct horse")
    at.button[0].click().run()
    assert not at.exception
    assert any("Signed in as **ada**" in c.value for c in at.caption)
    # (Signing out is clicked in Chromium, tests/test_e2e.py: AppTest loses the router's
    # bar widgets on a click under st.navigation.)


@pytest.fixture
def team(home: Path, data_dir: Path) -> dict[str, int]:
    """An admin, a member and a viewer; a dataset and a finished run of the member's."""

    access.add_user("ada", "correct horse")
    access.add_user("bob", "battery staple", "member")
    access.add_user("val", "staple battery", "viewer")
    bob = Actor("bob", Role.MEMBER)
    ds = ingest_file(data_dir / "wine.csv", actor=bob, name="bob's wine")
    run = jobs.submit(jobs.config_for(ds.id, epochs=2, name="![x](http://127.0.0.1:9/x)"), actor=bob)
    train_here(run.id)
    return {"dataset": ds.id, "run": run.id}


def _select_run(at: AppTest, run_id: int) -> AppTest:
    at.multiselect[0].select(run_id).run()
    return at


def test_a_viewer_browses_and_predicts_but_cannot_change_anything(team: dict[str, int]) -> None:
    at = _signed_in("pages/datasets.py", "val", "staple battery")
    assert not at.exception and not at.get("file_uploader")
    assert not [e for e in at.expander if "Delete" in e.label]
    at = _select_run(_signed_in("pages/runs.py", "val", "staple battery"), team["run"])
    assert not at.exception
    assert not [e for e in at.expander if "delete" in e.label]
    assert not [b for b in at.button if b.label in ("Measure the certificate", "Resume")]
    at = _signed_in("pages/train.py", "val", "staple battery")
    assert at.button[0].disabled  # Launch
    at = _signed_in("pages/predict.py", "val", "staple battery")
    at.button[0].click().run()
    assert not at.exception and any("on CPUExecutionProvider" in c.value for c in at.caption)


def test_a_member_changes_their_own_work_only(team: dict[str, int], data_dir: Path) -> None:
    eve = Actor("eve", Role.MEMBER)
    access.add_user("eve", "eve's password", "member")
    own = ingest_file(data_dir / "wine.csv", actor=eve, name="eve's wine")
    at = _signed_in("pages/datasets.py", "eve", "eve's password")
    at.selectbox[0].set_value(next(d for d in _datasets() if d.id == team["dataset"])).run()
    assert not [e for e in at.expander if "Delete" in e.label]  # bob's
    at.selectbox[0].set_value(next(d for d in _datasets() if d.id == own.id)).run()
    assert [e for e in at.expander if "Delete" in e.label]  # her own
    at = _select_run(_signed_in("pages/runs.py", "bob", "battery staple"), team["run"])
    assert [e for e in at.expander if "delete" in e.label]
    # The run's name, Markdown that would fetch an image, is shown escaped.
    assert at.header[-1].value == f"Run {team['run']} · " + summary.md("![x](http://127.0.0.1:9/x)")
    assert summary.md("![x](http://127.0.0.1:9/x)") == "\\!\\[x\\]\\(http\\:\u2060//127\\.0\\.0\\.1\\:9/x\\)"


def _datasets():  # type: ignore[no-untyped-def]
    from core.data.ingest import list_datasets

    return list_datasets()


def test_a_signed_out_token_is_refused_by_every_page(team: dict[str, int]) -> None:
    user, token = access.sign_in("ada", "correct horse")
    access.sign_out(user)
    for page in ("home", "datasets", "train", "runs", "predict"):
        at = AppTest.from_file(str(ROOT / "pages" / f"{page}.py"), default_timeout=60)
        at.session_state["ascent-session-token"] = token
        at.run()
        assert not at.exception and not at.title  # the page stopped before showing anything
