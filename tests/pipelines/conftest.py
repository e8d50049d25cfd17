"""Prefect fixtures: one temporary Prefect server and home for the whole test session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prefect.settings import PREFECT_HOME, temporary_settings
from prefect.testing.utilities import prefect_test_harness


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One real temporary Prefect server (SQLite) for the session, with PREFECT_HOME in a temporary directory."""
    home = tmp_path_factory.mktemp("prefect-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PREFECT_HOME", str(home))  # for subprocesses, such as the harness's server
        # prefect reads its settings once at import, so the running process needs them set too
        with temporary_settings({PREFECT_HOME: home}), prefect_test_harness(server_startup_timeout=120):
            yield
