"""Fixtures shared by the whole suite live in tests/fixtures/, one module per real part."""
pytest_plugins = [
    "tests.fixtures.kafka",
    "tests.fixtures.chdb",
    "tests.fixtures.provider",
]
