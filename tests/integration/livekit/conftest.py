"""Fixtures for LiveKit integration tests: one real livekit-server + Redis per session
(starting one takes ~0.2 s, but rooms are cheap), a fresh room name per test."""
from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from lkmedia.dev.stack import DevStack, StackError

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.path).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def livekit_stack() -> Iterator[DevStack]:
    try:
        DevStack.check_installed()
    except StackError as e:
        pytest.fail(f"{e} (scripts/install_livekit.sh installs both)")
    stack = DevStack()
    stack.start()
    try:
        yield stack
    finally:
        stack.cleanup()


@pytest.fixture
def room_name() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def publisher(livekit_stack: DevStack, room_name: str) -> AsyncIterator[object]:
    """The synthetic flash/beep participant ("pub") publishing 640x360 A/V in room_name,
    from a child process."""
    from lkmedia.dev.publisher import PublisherProcess

    # A separate process, as a real publisher is: it shares neither the GIL nor the
    # livekit FFI runtime with the egress under test.
    pub = PublisherProcess(livekit_stack.url, livekit_stack.token("pub", room_name))
    await pub.start()
    try:
        yield pub
    finally:
        await pub.stop()


@pytest.fixture
def backup_dir(tmp_path: Path) -> Path:
    """A local directory for an egress service's ``backup:`` storage."""
    d = tmp_path / "backup"
    d.mkdir()
    return d


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Every lkmedia log line, down to DEBUG (tests check that no secret reaches them)."""
    caplog.set_level(logging.DEBUG, logger="lkmedia")
    caplog.set_level(logging.INFO)
    return caplog
