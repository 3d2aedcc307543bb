"""Fixtures shared by the whole suite live in tests/fixtures/, one module per real part."""
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import blockbuster.blockbuster as _bb_module
from blockbuster import BlockBuster, BlockingError

pytest_plugins = [
    "tests.fixtures.kafka",
    "tests.fixtures.chdb",
    "tests.fixtures.provider",
    "tests.fixtures.gateway",
]


def _disarm_sdk_client_finalizers() -> None:
    """Stop leaked anthropic/openai async clients from stealing other connections' fds.

    Their ``AsyncHttpxClientWrapper.__del__`` schedules ``aclose()`` on the running loop. When the GC
    collects an unclosed client it finalizes the whole cycle at once: asyncio's transport ``__del__``
    first closes each pooled socket (its fd number is free again), then that task, resurrected by
    ``__del__``, aborts the same transports and removes their stale fd numbers from the loop, by then
    often a new proxy connection's (CPython gh-130141). That connection is never read again and
    its client hangs. Without the finalizer a leaked client just drops its sockets. Tests should
    still close their clients; this keeps one that does not from hanging a later, unrelated test.
    """
    import importlib

    for name in ("anthropic._base_client", "openai._base_client"):
        try:
            wrapper = importlib.import_module(name).AsyncHttpxClientWrapper
        except (ImportError, AttributeError):
            continue
        if "__del__" in vars(wrapper):
            del wrapper.__del__


_disarm_sdk_client_finalizers()


def pytest_collection_modifyitems(items: list) -> None:  # type: ignore[type-arg]
    """A test that starts or reaches the real broker is marked ``kafka`` by its fixtures, whatever its
    module says, so ``-m "not kafka"`` never waits on a broker by accident; ``slow`` comes from
    tests/slow_tests.txt, so ``-m "not kafka and not slow"`` is the fast inner loop."""
    import pytest

    slow = _slow_tests()
    for item in items:
        if {"kafka_broker", "kafka_bootstrap", "kafka_cluster"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.kafka)
        if item.nodeid.split("[")[0] in slow:
            item.add_marker(pytest.mark.slow)


def _slow_tests() -> frozenset[str]:
    """tests/slow_tests.txt: measured, not guessed (its header says how to regenerate it)."""
    from pathlib import Path

    path = Path(__file__).with_name("slow_tests.txt")
    return frozenset(line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#"))


# What blockbuster watches: our packages. A blocking call (file, socket, sleep) made on the event loop
# with our code on the stack fails the test, except where this file allows it.
_SCANNED = ["llmgw.core", "llmgw.pricing", "llmgw.ledger", "llmgw.analytics", "llmgw.proxy"]
_TESTS_DIR = str(Path(__file__).resolve().parent) + os.sep
_CHECKOUT = str(Path(__file__).resolve().parent.parent) + os.sep      # our frames, for the error message


def _called_by_a_test() -> bool:
    """A test's own blocking call (the harness appending to the config log, reading the event log) is the
    test's business; the gateway's own tasks (handlers, followers, sweepers) never run test code. pytest's
    own log handlers (its capture and its /dev/null log file) write synchronously: the gateway's handler
    (core/logs.py) hands records to a thread, and that is what runs in production."""
    frame = sys._getframe(1)
    while frame is not None:
        name = frame.f_code.co_filename
        if name.startswith(_TESTS_DIR) and name != __file__:      # not this check itself
            return True
        if frame.f_code.co_name == "emit" and type(frame.f_locals.get("self")).__module__.startswith("_pytest"):
            return True
        frame = frame.f_back
    return False


def _or_called_by_a_test(allowed: Callable[..., bool]) -> Callable[..., bool]:
    """blockbuster's own exceptions (a non-blocking socket's send, ...) stand; a test's calls join them."""
    return lambda *args, **kwargs: allowed(*args, **kwargs) or _called_by_a_test()


class _Raised:
    """Every BlockingError raised during a test, also those a background task swallowed or died of
    (a follower or sweeper that hits one never fails the request the test is looking at)."""

    errors: list[BlockingError] = []

    class Error(BlockingError):
        def __init__(self, func: str) -> None:
            where = [f"{f.filename}:{f.lineno} {f.name}" for f in traceback.extract_stack()[:-3]
                     if f.filename.startswith(_CHECKOUT) or f"{os.sep}llmgw{os.sep}" in f.filename]
            super().__init__(f"{func} from {' <- '.join(reversed(where[-4:]))}")
            _Raised.errors.append(self)


@pytest.fixture(autouse=True)
def blockbuster() -> Iterator[BlockBuster]:
    bb = BlockBuster(_SCANNED)
    for fn in bb.functions.values():
        fn.can_block_predicate = _or_called_by_a_test(fn.can_block_predicate)
        # Startup, before the gateway serves: opening the ledger's files and the price catalog may block.
        fn.can_block_in("proxy/app.py", {"ctx", "_default_ledger"})
        # A time zone's rules, read once per process the first time a window needs them (core/windows.py).
        fn.can_block_in("core/windows.py", {"zone"})
    _Raised.errors.clear()
    original, _bb_module.BlockingError = _bb_module.BlockingError, _Raised.Error  # type: ignore[misc]
    bb.activate()
    try:
        yield bb
    finally:
        bb.deactivate()
        _bb_module.BlockingError = original  # type: ignore[misc]
    raised = list(_Raised.errors)
    _Raised.errors.clear()
    assert not raised, f"blocking calls on the event loop: {[str(e) for e in raised]}"
