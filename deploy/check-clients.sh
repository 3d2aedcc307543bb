#!/usr/bin/env bash
# Manual check, run by hand: Claude Code and Codex complete a prompt through llmgw, offline.
# The upstream is the fake provider (tests/fake_provider.py); the gateway runs on its embedded default.
# Install the CLIs first:  npm install @anthropic-ai/claude-code @openai/codex
# then:  CLAUDE=node_modules/.bin/claude CODEX=node_modules/.bin/codex deploy/check-clients.sh
# CLAUDE_MODEL=... picks Claude Code's model (default: its own default).
# BUDGET=USD sets a daily budget on the check's user first: BUDGET=0.000001 shows each client's refusal
# (docs/budgets.md, "What each client shows"), BUDGET=2 a small budget a first call must fit.
set -u
cd "$(dirname "$0")/.."
T=$(mktemp -d)
python -m tests.fake_provider --port 18777 > $T/fake.log 2>&1 &
FP=$!
sleep 1.5
export LLMGW_DATA_DIR=$T/gw LLMGW_OPENAI_BASE_URL=http://127.0.0.1:18777/openai/v1 LLMGW_OPENAI_API_KEY=sk-openai-upstream-test \
  LLMGW_ANTHROPIC_BASE_URL=http://127.0.0.1:18777/anthropic LLMGW_ANTHROPIC_API_KEY=sk-ant-upstream-test LLMGW_ANALYTICS=0
KEY=$(python -m llmgw.proxy.cli keys create --org acme --workspace eng --user cli-check 2>/dev/null)
[ -n "${BUDGET:-}" ] && python -m llmgw.proxy.cli budgets set user:cli-check day "$BUDGET"
python -m llmgw.proxy.cli serve --port 18778 > $T/gw.log 2>&1 &
GP=$!
sleep 3
echo "== claude"
HOME=$T/home ANTHROPIC_BASE_URL=http://127.0.0.1:18778 ANTHROPIC_API_KEY=$KEY DISABLE_TELEMETRY=1 \
  CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 DISABLE_AUTOUPDATER=1 \
  timeout 120 ${CLAUDE:-claude} -p "say hi" ${CLAUDE_MODEL:+--model $CLAUDE_MODEL} 2>&1 | tail -5
echo "== codex"
mkdir -p $T/codex
cat > $T/codex/config.toml <<TOML
model_provider = "llmgw"
[model_providers.llmgw]
name = "llmgw"
base_url = "http://127.0.0.1:18778/v1"
env_key = "LLMGW_KEY"
wire_api = "responses"
TOML
HOME=$T/home CODEX_HOME=$T/codex LLMGW_KEY=$KEY timeout 120 ${CODEX:-codex} exec --skip-git-repo-check "say hi" 2>&1 | tail -8
sleep 1
kill -TERM $GP; wait $GP
kill $FP
echo "== events"
python - <<PY
from ledger.events import decode
for l in open("$T/gw/ledger/events.log","rb"):
    e=decode(l); print(e.api, e.model_requested, e.outcome, e.http_status, e.tokens.input, e.tokens.output, e.cost_micro_usd, e.session_id[:8], e.error_type)
PY
grep -i "error\|Traceback" $T/gw.log | head -5
