"""The models of the session's tiny study, served once for every test of this folder."""

from __future__ import annotations

import pytest

from nanobard.serve.app import create_app
from nanobard.serve.models import open_models
from nanobard.serve.server import running


@pytest.fixture(scope="session")
def served(study):
    out, _, _ = study
    return open_models([str(out)])


@pytest.fixture(scope="session")
def server(served):
    """The URL of a real server (uvicorn on a free port) over the study's three models."""
    with running(create_app(served)) as url:
        yield url
