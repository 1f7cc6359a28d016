"""Fixtures shared by several test modules."""

import os

import pytest

from nx_dagster import settings
from nxd.cli import main

pytest_plugins = ["tests.s3_server"]  # fixtures s3_server (moto's standalone server) and s3_home


@pytest.fixture(scope="session")
def bundled_run(tmp_path_factory):
    """The README's main job on the embedded defaults (bundled model and corpus, offline explainer),
    320 sequences, and `nxd check-method`, run once per session: returns the folder holding `nx_data/` (NX_HOME) and the Dagster
    instance (DAGSTER_HOME). The settings (every one at its default but NX_HOME) and DAGSTER_HOME hold
    for the run only, so tests pass the paths explicitly (`--home`, `Catalog(path)`)."""
    root = tmp_path_factory.mktemp("main")
    mp = pytest.MonkeyPatch()
    mp.setenv("DAGSTER_HOME", str(root))  # Dagster's own setting
    try:
        with settings.use(settings.from_values(nx_home=str(root / "nx_data"))):
            assert main(["run", "--max-sequences", "320"]) == 0
            assert main(["check-method"]) == 0  # the README's known-answer check (docs/scores.md queries it)
            assert main(["release", "r1", "--message", "the README's examples query this release"]) == 0
    finally:
        mp.undo()
    return root


@pytest.fixture(scope="session")
def pg_server():
    """A real PostgreSQL server on loopback for the whole session (tests/pg_server.py). Skips where none
    is installed, but fails under CI, whose .ci/run installs it."""
    from tests.pg_server import NoPostgres, running_server, server_binaries

    try:
        server_binaries()
    except NoPostgres as e:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(e))
    with running_server() as server:
        yield server


@pytest.fixture
def pg_url(pg_server):
    """The URL of a fresh, empty database on the session's PostgreSQL server."""
    return pg_server.create_database()


@pytest.fixture(params=["sqlite", "postgres"])
def catalog_db(request, monkeypatch):
    """Run a test once with the embedded SQLite catalog and once with the catalog in PostgreSQL (a fresh
    database on the session's server): NX_CATALOG is set for the test and the processes it starts."""
    if request.param == "postgres":
        url = request.getfixturevalue("pg_url")
        monkeypatch.setenv("NX_CATALOG", url)
        return url
    monkeypatch.delenv("NX_CATALOG", raising=False)
    return None
