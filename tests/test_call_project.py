"""The ``project`` of a call's usage event, read from its tags."""
from __future__ import annotations

from hypothesis import given, strategies as st

from llmgw.core.events import normalize_tags
from llmgw.proxy.call import project_of

names = st.sampled_from(["project", "projects", "proj", "team", "agent", "llmgw", "Project", ""])
values = st.text(st.sampled_from("ab:x-"), max_size=6)


@given(st.lists(st.tuples(names, values), max_size=6))
def test_project_is_the_value_a_dict_of_the_tags_holds_under_project(pairs: list[tuple[str, str]]) -> None:
    tags = normalize_tags([f"{n}:{v}" for n, v in pairs])
    assert project_of(tags) == dict(t.split(":", 1) for t in tags).get("project", "")
