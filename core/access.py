"""Who may do what: users with Argon2id password hashes, signed expiring session tokens for the
studio, and the one permission check the pages, the command line and the REST endpoint share (its API keys here too).

Roles: viewers browse and predict; members also upload, train, cancel and measure; admins also
delete or edit others' work and manage users. The command line acts as LOCAL (whoever has a
shell on the machine already owns its files and database), and so does a studio on loopback
while no user exists.
"""

from __future__ import annotations

import base64
import contextlib
import enum
import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import dataclass
from datetime import datetime

from core.config import database, get_settings
from core.errors import AccessError, ConfigError, NotFoundError
from db import queries
from db.models import NAME_MAX, Role
from db.queries import UserInfo
from db.session import session_scope

ROLES = tuple(r.value for r in Role)
MIN_PASSWORD = 8
MAX_PASSWORD = 1024
# A failed sign-in holds the next attempt for that user back 1 s, then 2, 4, ... up to this.
MAX_DELAY_S = 300.0
_SESSION_KEY = "session_signing_key"
_USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]*")


class Action(enum.StrEnum):
    BROWSE = "browse"
    PREDICT = "predict"
    UPLOAD = "upload"
    TRAIN = "train"
    CANCEL = "cancel"
    MEASURE = "measure"
    # Delete, rename or tag: members their own work, admins anyone's.
    EDIT = "edit"
    MANAGE_USERS = "manage users"
    # Name a file or folder on the server (initial weights): admins only, so that a signed-in
    # member cannot probe the server's folders through error messages.
    SERVER_FILES = "name files on the server"


_MEMBER = {Action.BROWSE, Action.PREDICT, Action.UPLOAD, Action.TRAIN, Action.CANCEL, Action.MEASURE}
_ALLOWED = {
    Role.VIEWER: {Action.BROWSE, Action.PREDICT},
    Role.MEMBER: _MEMBER | {Action.EDIT},
    Role.ADMIN: set(Action),
}


@dataclass(frozen=True)
class Actor:
    """Who is asking: a signed-in user, or LOCAL (name None) with every right."""

    name: str | None
    role: Role

    @property
    def label(self) -> str:
        return self.name or "local"


LOCAL = Actor(None, Role.ADMIN)


def actor_for(user: UserInfo) -> Actor:
    return Actor(user.name, Role(user.role))


def can(actor: Actor, action: Action, owner: str | None = None) -> bool:
    """Whether `actor` may do `action` (to work created by `owner`, for EDIT)."""
    if action not in _ALLOWED[actor.role]:
        return False
    if action == Action.EDIT and actor.role != Role.ADMIN:
        return owner is not None and owner == actor.name
    return True


def require(actor: Actor, action: Action, owner: str | None = None, *, what: str = "") -> None:
    """Raise AccessError, in words, unless `actor` may do `action`."""
    if can(actor, action, owner):
        return
    if action == Action.EDIT and actor.role == Role.MEMBER:
        if not owner:
            raise AccessError(f"{what or 'this'} was made without sign-in; only an admin may change it")
        raise AccessError(f"{what or 'this'} is {owner}'s work; only its creator or an admin may change it")
    raise AccessError(f"{actor.label} is a {actor.role.value}; a {actor.role.value} cannot {action.value}")


# --- users ------------------------------------------------------------------------------


def _hasher():  # type: ignore[no-untyped-def]
    from argon2 import PasswordHasher

    return PasswordHasher()  # Argon2id, RFC 9106's low-memory profile


def check_name(name: str, what: str) -> str:
    """A name as stored: trimmed, one line, 1..NAME_MAX characters; else ConfigError."""
    clean = name.strip()
    if not clean:
        raise ConfigError(f"a {what} needs a name")
    if len(clean) > NAME_MAX:
        raise ConfigError(f"a {what} name is at most {NAME_MAX} characters; this one has {len(clean)}")
    if any(ord(c) < 32 or ord(c) == 127 for c in clean):
        raise ConfigError(f"a {what} name is one line of text without control characters")
    return clean


def _check_user_name(name: str) -> str:
    clean = check_name(name, "user")
    if not _USER_NAME.fullmatch(clean):
        raise ConfigError(
            "a user name is letters, digits and . _ @ - (starting with a letter or digit), e.g. ada or ada.l"
        )
    return clean


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise ConfigError(f"a password has at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise ConfigError(f"a password has at most {MAX_PASSWORD} characters")


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise ConfigError(f"unknown role '{role}'; choose one of: {', '.join(ROLES)}")
    return role


def any_users() -> bool:
    database()
    with session_scope() as session:
        return queries.count_users(session=session) > 0


def list_users() -> list[UserInfo]:
    database()
    with session_scope() as session:
        return queries.list_users(session=session)


def add_user(name: str, password: str, role: str | None = None) -> UserInfo:
    """A new user. The first one is an admin unless said otherwise; later ones members."""
    from sqlalchemy.exc import IntegrityError

    name = _check_user_name(name)
    _check_password(password)
    database()
    if role is None:
        role = Role.MEMBER.value if any_users() else Role.ADMIN.value
    role = _check_role(role)
    digest = _hasher().hash(password)
    try:
        with session_scope() as session:
            user = queries.add_user(session=session, name=name, role=role, password_hash=digest)
    except IntegrityError:
        user = None
    if user is None:
        raise ConfigError(f"a user named '{name}' already exists; choose another name or `users passwd` it")
    return user


def delete_user(name: str) -> None:
    """Remove a user (their sessions end with them). The last admin stays while others exist."""
    database()
    with session_scope() as session:
        user = queries.get_user(session=session, name=name)
        if user is None:
            raise NotFoundError(f"no user named '{name}'; see `python -m core users list`")
        others = queries.count_users(session=session) - 1
        if user.role == Role.ADMIN and others and queries.count_admins(session=session) == 1:
            raise ConfigError(f"{name} is the last admin; make another user an admin before deleting them")
        queries.delete_user(session=session, name=name)


def set_password(name: str, password: str) -> None:
    """A new password; the user's open sessions end."""
    _check_password(password)
    digest = _hasher().hash(password)
    database()
    with session_scope() as session:
        if not queries.set_password(session=session, name=name, password_hash=digest):
            raise NotFoundError(f"no user named '{name}'; see `python -m core users list`")


def retry_delay(failures: int) -> float:
    """Seconds a user's next sign-in is held back after `failures` failed ones in a row."""
    return 0.0 if failures <= 0 else min(MAX_DELAY_S, 2.0 ** (failures - 1))


_DUMMY_HASH: str | None = None
# Failed sign-ins for names that are no user, in this process: they are held back on the same
# schedule, so the answers do not tell which names exist.
_UNKNOWN: dict[tuple[str, str], tuple[int, float]] = {}


def _held_back(wait_s: float) -> AccessError:
    return AccessError(f"too many failed sign-ins for this name: try again in {max(1, round(wait_s))} s")


def sign_in(name: str, password: str) -> tuple[UserInfo, str]:
    """Check a name and password; returns the user and a signed session token.

    Wrong names and wrong passwords get the same answer. After a failure, that user's next
    attempt is refused unchecked until its delay (1 s, 2 s, 4 s, ...) has passed."""
    from argon2.exceptions import VerificationError

    global _DUMMY_HASH
    unknown = (database(), name.strip())
    hasher = _hasher()
    with session_scope() as session:
        found = queries.credentials(session=session, name=name.strip())
        if found is None:
            failures, until = _UNKNOWN.get(unknown, (0, 0.0))
            if time.monotonic() < until:
                raise _held_back(until - time.monotonic())
            _DUMMY_HASH = _DUMMY_HASH or hasher.hash(secrets.token_hex(16))
            with contextlib.suppress(VerificationError):  # the same work as a real check,
                hasher.verify(_DUMMY_HASH, password)  # so timing does not tell names apart
            if len(_UNKNOWN) > 10_000:
                _UNKNOWN.clear()
            _UNKNOWN[unknown] = (failures + 1, time.monotonic() + retry_delay(failures + 1))
            raise AccessError("wrong user name or password")
        now = queries.db_now(session)
        if found.locked_until is not None and now < found.locked_until:
            raise _held_back((found.locked_until - now).total_seconds())
        try:
            hasher.verify(found.password_hash, password)
        except VerificationError:
            queries.record_login(
                session=session,
                user_id=found.user.id,
                ok=False,
                delay_s=retry_delay(found.failed_logins + 1),
            )
            ok = False
        else:
            queries.record_login(session=session, user_id=found.user.id, ok=True)
            if hasher.check_needs_rehash(found.password_hash):
                queries.set_password(
                    session=session, name=found.user.name, password_hash=hasher.hash(password)
                )
            ok = True
    if not ok:
        raise AccessError("wrong user name or password")
    with session_scope() as session:
        user = queries.get_user_by_id(session=session, user_id=found.user.id)
    assert user is not None
    return user, issue_token(user)


def sign_out(user: UserInfo) -> None:
    """End every session of this user (the signed cookies stop working everywhere)."""
    database()
    with session_scope() as session:
        queries.end_sessions(session=session, user_id=user.id)


# --- session tokens -----------------------------------------------------------------------


def _signing_key() -> bytes:
    from sqlalchemy.exc import IntegrityError

    database()
    candidate = secrets.token_hex(32)
    try:
        with session_scope() as session:
            value = queries.setting(session=session, key=_SESSION_KEY, default=candidate)
    except IntegrityError:  # another process stored its key first
        with session_scope() as session:
            value = queries.setting(session=session, key=_SESSION_KEY, default=candidate)
    return bytes.fromhex(value)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def issue_token(user: UserInfo, *, now: float | None = None) -> str:
    """`payload.signature`: the user's id and session epoch and an expiry, HMAC-SHA256 signed."""
    expires = int((now or time.time()) + get_settings().session_hours * 3600)
    payload = _b64(json.dumps({"u": user.id, "e": user.session_epoch, "x": expires}).encode())
    signature = _b64(hmac.new(_signing_key(), payload.encode(), hashlib.sha256).digest())
    return f"{payload}.{signature}"


def token_expiry(token: str) -> datetime | None:
    from datetime import UTC

    try:
        return datetime.fromtimestamp(json.loads(_unb64(token.split(".", 1)[0]))["x"], UTC)
    except (ValueError, KeyError, TypeError, IndexError):
        return None


def session_user(token: str | None) -> UserInfo | None:
    """The user a session token belongs to, or None (forged, expired, signed out, deleted)."""
    if not token or token.count(".") != 1 or len(token) > 1000:
        return None
    payload, signature = token.split(".")
    expected = _b64(hmac.new(_signing_key(), payload.encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(signature, expected):
        return None
    try:
        claims = json.loads(_unb64(payload))
        user_id, epoch, expires = int(claims["u"]), int(claims["e"]), float(claims["x"])
    except (ValueError, KeyError, TypeError):
        return None
    if expires < time.time():
        return None
    with session_scope() as session:
        user = queries.get_user_by_id(session=session, user_id=user_id)
    if user is None or user.session_epoch != epoch:
        return None
    return user


# --- API keys for the REST endpoint -----------------------------------------------------------

KEY_PREFIX = "asc_"
KEY_TTL_S = 5.0  # how long the endpoint remembers a key's owner: a revoked key works that long


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def add_key(user: str, label: str = "") -> tuple[queries.ApiKeyInfo, str]:
    """A new key for `user` and its secret, which is shown once and never stored (only its
    SHA-256 is)."""
    label = check_name(label, "key") if label else "key"
    database()
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    with session_scope() as session:
        found = queries.get_user(session=session, name=user)
        if found is None:
            raise NotFoundError(f"no user named '{user}'; see `python -m core users list`")
        info = queries.add_api_key(
            session=session, user_id=found.id, label=label, prefix=secret[:12], key_sha256=_digest(secret)
        )
    return info, secret


def list_keys(user: str | None = None) -> list[queries.ApiKeyInfo]:
    database()
    with session_scope() as session:
        if user is not None and queries.get_user(session=session, name=user) is None:
            raise NotFoundError(f"no user named '{user}'; see `python -m core users list`")
        return queries.list_api_keys(session=session, user=user)


def revoke_key(key_id: int) -> None:
    database()
    with session_scope() as session:
        if not queries.delete_api_key(session=session, key_id=key_id):
            raise NotFoundError(f"no API key with id {key_id}; see `python -m core users keys`")


def key_actor(key: str) -> Actor | None:
    """Who sends this key, or None for a key that is not (or no longer) one."""
    if not key.startswith(KEY_PREFIX) or len(key) > 100:
        return None
    database()
    with session_scope() as session:
        found = queries.api_key_owner(session=session, key_sha256=_digest(key))
    return Actor(found.user, Role(found.role)) if found else None


# --- where the studio may listen -------------------------------------------------------------


def is_loopback(address: str) -> bool:
    import ipaddress

    if address.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip().strip("[]")).is_loopback
    except ValueError:
        return False  # "" and 0.0.0.0 mean every interface; a host name may be any


def serving_refusal(address: str) -> str | None:
    """Why the studio must not serve on `address` now (no user exists off loopback), or None."""
    if is_loopback(address) or any_users():
        return None
    shown = address or "every interface"
    return (
        f"Ascent will not serve on {shown} while no user exists: anyone who reaches the port could "
        "delete data and start training. Add an admin first with "
        "`python -m core users add NAME --role admin --password-stdin`, or serve on 127.0.0.1."
    )
