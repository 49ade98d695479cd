"""The container tests' engine and image: one of each for the session (tests/services/docker.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.services.docker import Docker, build_image, docker_engine


@pytest.fixture(scope="session")
def docker() -> Iterator[Docker]:
    """A Docker engine: the machine's if one answers, else dockerd started for the session."""
    with docker_engine() as engine:
        yield engine


@pytest.fixture(scope="session")
def image(docker: Docker) -> str:
    """``factoryflow:local``, built by ``compose/build-image.sh`` (debootstrap base, no registry)."""
    return build_image(docker)
