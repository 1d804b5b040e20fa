"""Session fixtures: the real Pub/Sub emulator and fake-gcs-server, started once."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from parascribe.gcp.pubsub import PubSubPublisher
from parascribe.gcp.storage import GcsStore
from parascribe.local.emulators import Emulators, provision


@pytest.fixture(scope="session")
def emulators(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulators]:
    """Both emulators, with every topic, subscription (pull) and bucket of the base namespace.

    The process's Google clients are pointed at them through the environment.
    """
    if shutil.which("gcloud") is None or shutil.which("java") is None:
        pytest.skip("the Pub/Sub emulator needs gcloud and java on PATH; integration tests cannot run")
    emu = Emulators(workdir=tmp_path_factory.mktemp("emulators"))
    emu.start()
    saved = {k: os.environ.get(k) for k in emu.env()}
    emu.export_env()
    provision(emu.settings())
    try:
        yield emu
    finally:
        emu.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def store(emulators: Emulators) -> GcsStore:
    """The real adapter on fake-gcs-server, built as the services build it (so it signs URLs for the emulator)."""
    return GcsStore.create(emulators.project, emulators.storage_host)


@pytest.fixture(scope="session")
def publisher(emulators: Emulators) -> PubSubPublisher:
    return PubSubPublisher(emulators.project)


@pytest.fixture(scope="session")
def spoken_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder for audio spoken by espeak-ng, shared across tests."""
    return tmp_path_factory.mktemp("spoken")
