"""Request ids (``x-llmgw-request-id``): unique across calls and across forked workers."""
from __future__ import annotations

import os
import re

from llmgw.proxy.app import new_request_id


def test_request_ids_are_unique_and_keep_their_shape() -> None:
    ids = [new_request_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"req_[0-9a-f]{24}", i) for i in ids)


def test_a_forked_worker_draws_different_request_ids() -> None:
    """``llmgw serve --workers`` forks: a child that kept its parent's generator state would hand
    out the parent's next ids, and two calls would share one id."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:                                # the child: its next ids, then out without cleanup
        os.write(write_end, " ".join(new_request_id() for _ in range(8)).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as r:
        child = set(r.read().decode().split())
    os.waitpid(pid, 0)
    parent = {new_request_id() for _ in range(8)}
    assert len(child) == 8 and not child & parent
