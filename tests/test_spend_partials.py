"""A proxy's spend view sums the snapshot partitions' partial totals of a key (``SpendView.apply_snapshot``
with the record's partition): the reader side of spreading one organization's calls over every usage
partition (issue 21, item 2). Pure; the keying change itself is not in yet."""
from __future__ import annotations

from llmgw.core import events as E
from hypothesis import given, settings, strategies as st

from llmgw.ledger.fold import Totals, keys_of
from llmgw.ledger.spend import SpendView

T0 = 1_764_000_000_000


def usage(cost: int) -> E.UsageEvent:
    return E.UsageEvent(E.uuid7_of(T0, 1), T0, T0 + 10, "acme", "backend", "alice", "acme-key", "anthropic",
                        "messages", "claude-sonnet-4-5", "claude-sonnet-4-5", E.Tokens(input=3, output=4),
                        cost_nano_usd=cost)


@settings(max_examples=150, deadline=None)
@given(updates=st.lists(st.tuples(st.integers(0, 5), st.sampled_from(["a", "b", "c"]),
                                  st.one_of(st.none(), st.integers(0, 10**12))), max_size=60))
def test_the_view_is_always_the_sum_of_each_partitions_latest_partial(
        updates: list[tuple[int, str, int | None]]) -> None:
    """Snapshot records arrive partition by partition in any interleaving, absolute values and
    tombstones: after each one, a key's view is the sum of every partition's latest value."""
    view, latest = SpendView(), {}
    for p, key, nano in updates:
        totals = None if nano is None else Totals(spend_nano_usd=nano, requests=1)
        view.apply_snapshot(key, totals, p)
        latest[(p, key)] = totals
        for k in ("a", "b", "c"):
            parts = [t for (_, kk), t in latest.items() if kk == k and t is not None]
            if parts:
                assert view.totals(k) == Totals(spend_nano_usd=sum(t.spend_nano_usd for t in parts),
                                                requests=len(parts))
                assert view.spent_nano(k) == sum(t.spend_nano_usd for t in parts)
            else:
                assert k not in view.folded


def test_a_proxys_own_call_is_counted_once_whichever_partition_it_landed_in() -> None:
    """Read-your-writes with partials: the local count is dropped when the partition the event was
    placed in shows progress past it; the other partitions' progress does not drop it."""
    ev = usage(7_000)
    key = keys_of(ev)[0]
    view = SpendView()
    view.apply_snapshot(key, Totals(spend_nano_usd=1_000, requests=1), 0)
    view.add_local(ev)
    view.placed(ev, 3, 10)
    view.advance(0, 50)                                   # another partition moves on: still local
    assert view.spent_nano(key) == 8_000
    view.apply_snapshot(key, Totals(spend_nano_usd=7_000, requests=1), 3)
    view.advance(3, 10)                                   # its partition's partial now includes it
    assert view.spent_nano(key) == 8_000 and view.local_backlog == 0
