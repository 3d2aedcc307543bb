"""`llmgw budgets|limits|models`: set, list, and explain everything that applies to a key."""
from __future__ import annotations

import pytest

from llmgw.proxy.cli import main


@pytest.fixture
def llmgw(tmp_path, monkeypatch, capsys):
    for var in ("LLMGW_KAFKA_BOOTSTRAP", "LLMGW_CONFIG", "LLMGW_DATA_DIR"):
        monkeypatch.delenv(var, raising=False)

    def run(*args: str) -> tuple[int, str, str]:
        rc = main(["--data-dir", str(tmp_path), *args])
        out = capsys.readouterr()
        return rc, out.out, out.err
    return run


def test_explain_lists_budgets_rate_limits_and_model_lists(llmgw):
    rc, key, err = llmgw("keys", "create", "--org", "acme", "--workspace", "interns", "--user", "ivy",
                         "--models", "claude-*")
    key_id = key.strip().split("-")[2]
    assert llmgw("budgets", "set", "user:ivy", "day", "20", "--action", "downgrade:claude-haiku-4-5")[0] == 0
    assert llmgw("limits", "set", "user:*", "rpm", "60", "--burst", "10")[0] == 0
    assert llmgw("limits", "set", "workspace:interns", "tpd", "2000000", "--org", "acme")[0] == 0
    assert llmgw("limits", "set", "user:ivy", "rpm", "30")[0] == 0       # replaces the default for ivy
    assert llmgw("models", "allow", "workspace:interns", "claude-haiku-*,gpt-4o-mini")[0] == 0
    rc, out, _ = llmgw("budgets", "explain", "--key", key_id)
    assert rc == 0
    assert "$20.00 on user acme/ivy" in out and "at cap: downgrade to claude-haiku-4-5" in out
    assert "  rpm            30 on user acme/ivy  <- explicit" in out
    assert "60 burst" not in out
    assert "  tpd     2,000,000 on workspace acme/interns  <- explicit (ratelimit:acme|workspace:interns|tpd)" in out
    assert f"key {key_id}: claude-*  <- the key itself" in out
    assert "workspace interns: claude-haiku-*, gpt-4o-mini  <- models:|workspace:interns" in out


def test_limits_and_models_list_unset_and_clear(llmgw):
    llmgw("limits", "set", "key:k123", "tpm", "50000")
    llmgw("limits", "set", "user:*", "rpd", "1000", "--burst", "100")
    _, out, _ = llmgw("limits", "list")
    assert sorted(out.splitlines()) == ["every user: 1,000 requests per day, burst 100",
                                        "key k123: 50,000 tokens per minute"]
    assert llmgw("limits", "unset", "key:k123", "tpm")[0] == 0
    assert llmgw("limits", "unset", "key:k123", "tpm")[0] == 1
    assert llmgw("limits", "list")[1].splitlines() == ["every user: 1,000 requests per day, burst 100"]
    llmgw("models", "allow", "user:*", "gpt-4o-mini")
    assert llmgw("models", "list")[1] == "every user: gpt-4o-mini\n"
    llmgw("models", "clear", "user:*")
    assert llmgw("models", "list")[1] == ""


def test_bad_input_is_refused_with_a_hint(llmgw):
    rc, _, err = llmgw("limits", "set", "team:x", "rpm", "5")
    assert rc == 2 and "expected one of org:NAME" in err
    rc, _, err = llmgw("budgets", "set", "user:x", "day", "5", "--action", "downgrade")
    assert rc == 2 and "downgrade:MODEL" in err
    rc, _, err = llmgw("limits", "set", "user:x", "rpm", "-1")
    assert rc == 2 and "cannot be negative" in err


def test_budgets_delete_keys_update_and_every_change_names_the_person(llmgw, tmp_path):
    import asyncio
    import getpass

    from llmgw.ledger.configlog import open_config_log
    from llmgw.core.budgets import Budget
    _, key, _ = llmgw("keys", "create", "--org", "acme", "--workspace", "backend", "--user", "ivy")
    key_id = key.strip().split("-")[2]
    assert llmgw("budgets", "set", "workspace:acme/backend", "day", "5", "--hold", "strict")[0] == 0
    assert llmgw("budgets", "set", "user:ivy", "day", "0.001")[1] == "set: user ivy daily budget $0.001; at cap: refuse\n"
    rc, out, _ = llmgw("budgets", "explain", "--key", key_id)
    assert "workspace acme/backend" in out                       # the ORG/NAME form applies to the key
    assert llmgw("budgets", "delete", "workspace:acme/backend", "day")[0] == 0
    assert llmgw("budgets", "delete", "workspace:acme/backend", "day")[0] == 1     # already gone
    assert "workspace" not in llmgw("budgets", "list")[1]
    rc, out, _ = llmgw("keys", "update", key_id, "--tag", "project:payments", "--models", "claude-haiku-*")
    assert rc == 0 and "tags=project:payments models=claude-haiku-*" in out
    state = asyncio.run(open_config_log(tmp_path, None, "llmgw").load())
    rec = state.get("key", key_id)
    assert rec.data["tags"] == ["project:payments"] and rec.data["allowed_models"] == ["claude-haiku-*"]
    assert rec.actor == f"cli:{getpass.getuser()}"
    assert Budget.from_record(state.get("budget", "budget||user:ivy||day")).hold == "predicted"
    assert {r.actor for r in state.records.values()} == {f"cli:{getpass.getuser()}"}
