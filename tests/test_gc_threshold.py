"""The collector's young threshold while a gateway serves (proxy/app.py, ``young_gc_ctx``)."""
from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import pytest

from llmgw.proxy.app import GC_YOUNG_THRESHOLD
from tests.gateway_harness import GatewayHarness


@pytest.mark.parametrize("young", [700, GC_YOUNG_THRESHOLD * 3])
async def test_a_serving_gateway_raises_the_young_threshold_and_gives_the_process_its_own_back(
        fake_provider: Any, tmp_path: Path, young: int) -> None:
    own = gc.get_threshold()
    gc.set_threshold(young, 9, 11)
    try:
        async with GatewayHarness(fake_provider, tmp_path):
            assert gc.get_threshold() == (max(young, GC_YOUNG_THRESHOLD), 9, 11)    # never lowered
        assert gc.get_threshold() == (young, 9, 11)
    finally:
        gc.set_threshold(*own)
