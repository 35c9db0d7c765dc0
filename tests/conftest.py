from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.stack import Stack


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    """One real stack for the integration tests of the session; removed at the end."""
    s = Stack()
    try:
        s.start()
        yield s
    finally:
        s.close()
