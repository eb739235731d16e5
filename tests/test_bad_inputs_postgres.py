"""The bad-input battery's cases marked for PostgreSQL, against a home on a fresh PostgreSQL
database holding tables, speech and translation datasets and a trained table run (CI sets
ASCENT_TEST_DATABASE_URL). The cases, the home and the checks are test_bad_inputs.py's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_bad_inputs import (
    CASES,
    PG_ADMIN_URL,
    Home,
    Outcome,
    _battery,
    _build_home,
    _check,
    _files,
    _fresh_postgres,
)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _files(tmp_path_factory.mktemp("bad-files"))


@pytest.fixture(scope="module")
def postgres_home(tmp_path_factory: pytest.TempPathFactory, files: dict[str, Path]) -> Iterator[Home]:
    if not PG_ADMIN_URL:
        pytest.skip("ASCENT_TEST_DATABASE_URL is not set (CI sets it)")
    url, drop = _fresh_postgres()
    try:
        yield _build_home(tmp_path_factory.mktemp("bad-pg") / "home", url, files, full=False)
    finally:
        from db.session import dispose_all

        dispose_all()
        drop()


@pytest.fixture(scope="module")
def postgres_outcomes(postgres_home: Home, files: dict[str, Path]) -> dict[str, Outcome]:
    return _battery(postgres_home, files, [n for n, c in CASES.items() if c.postgres])


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.postgres])
def test_bad_input_on_postgresql(name: str, postgres_outcomes: dict[str, Outcome]) -> None:
    _check(CASES[name], postgres_outcomes[name])
