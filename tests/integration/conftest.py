"""Fixtures for integration tests: real servers started on loopback ports."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lkmedia.testing.rtmp_server import NginxRtmp


@pytest.fixture
def rtmp_server(tmp_path: Path) -> Iterator[NginxRtmp]:
    """A fresh nginx-rtmp per test (tests restart it), recording to tmp_path/nginx/records."""
    try:
        server = NginxRtmp(tmp_path / "nginx")
    except RuntimeError as e:
        pytest.fail(f"{e} (scripts/setup.sh installs nginx and libnginx-mod-rtmp)")
    server.start()
    try:
        yield server
    finally:
        server.cleanup()
