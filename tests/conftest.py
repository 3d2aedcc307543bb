"""Fixtures shared by the whole suite live in tests/fixtures/, one module per real part."""
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
