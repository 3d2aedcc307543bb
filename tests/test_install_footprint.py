"""The lighter install for Kafka-mode replicas stays the product's dependencies minus chDB."""
from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _requirements(lines: list[str]) -> list[str]:
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def test_the_replica_requirements_are_the_dependencies_without_chdb():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    replica = _requirements((ROOT / "deploy" / "requirements-replica.txt").read_text().splitlines())
    assert replica == [d.replace("clickhouse-connect[chdb]", "clickhouse-connect") for d in deps]
    assert not any("chdb" in r or "pyarrow" in r or "pandas" in r for r in replica)


def test_a_kafka_mode_gateway_imports_neither_chdb_nor_pyarrow_nor_pandas():
    """What a replica loads: the app, the Kafka ledger, the admin and analytics pages, the CLI."""
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('chdb', 'chdb_core', 'pyarrow', 'pandas'):\n"
            "            raise ImportError('not installed in a replica: ' + name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "from llmgw.proxy.app import create_app\n"
            "from llmgw.core.settings import Settings\n"
            "import llmgw.ledger.kafka_ledger, llmgw.ledger.worker, llmgw.analytics.sink_cli, llmgw.proxy.reports.web\n"
            "from llmgw.proxy import cli\n"
            "create_app(Settings(kafka_bootstrap='127.0.0.1:9', openai_api_key='x'))\n"
            "cli.build_parser()\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
