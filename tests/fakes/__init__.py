"""Fake providers beyond tests/fake_provider.py, one module per cloud wire."""
