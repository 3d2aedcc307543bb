"""Structured logs: one JSON object per line, one access line per request, secrets redacted."""
from __future__ import annotations

import io
import threading
import logging
import sys

import anthropic
import openai
import orjson
import pytest

from llmgw.core.logs import REDACTED, JsonFormatter, Redactor, configure_logging, secrets_of
from llmgw.core.settings import Settings
from tests.fake_provider import Reply, Usage
from tests.gateway_harness import GatewayHarness


@pytest.fixture
def json_lines():
    """Every llmgw record, formatted by the production formatter, as parsed objects."""
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("llmgw")
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)

    def lines() -> list[dict]:
        handler.flush()
        return [orjson.loads(line) for line in buf.getvalue().splitlines() if line]
    yield lines
    logger.removeHandler(handler)
    logger.setLevel(old)


def test_formatter_writes_one_object_with_extras_and_exceptions():
    rec = logging.LogRecord("llmgw.x", logging.ERROR, __file__, 1, "ledger %s failed", ("write",), None)
    rec.event, rec.request_id, rec.budget = "ledger_error", "req_1", {"a": 1}
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        rec.exc_info = sys.exc_info()
    line = JsonFormatter().format(rec)
    assert "\n" not in line                                  # the traceback is inside the one line
    obj = orjson.loads(line)
    assert obj["event"] == "ledger_error" and obj["message"] == "ledger write failed"
    assert obj["level"] == "error" and obj["logger"] == "llmgw.x" and obj["request_id"] == "req_1"
    assert obj["budget"] == "{'a': 1}" and "RuntimeError: boom" in obj["exc"]


def test_redactor_scrubs_keys_tokens_and_configured_secrets():
    r = Redactor(["sk-ant-upstream-secret-123", "short"])
    text = r("key sk-llmgw-kabc123def456-AbC_d-9 and Authorization: Bearer eyJhbGc.x-y_z and sk-ant-upstream-secret-123 short")
    assert "sk-llmgw-kabc" not in text and "eyJhbGc" not in text and "upstream-secret" not in text
    assert text.count(REDACTED) == 3 and "short" in text       # too short to be a credential


def test_secrets_of_settings_include_config_file_upstream_keys():
    s = Settings(openai_api_key="sk-o-123456789", anthropic_api_key="sk-a-123456789", admin_key="adm-123456789",
                 file_config={"upstreams": {"azure": {"base_url": "https://x", "api_key": "az-secret-123456"}}})
    assert set(secrets_of(s)) == {"sk-o-123456789", "sk-a-123456789", "adm-123456789", "az-secret-123456"}


def test_configure_logging_installs_one_json_handler():
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    buf = io.StringIO()
    handler = configure_logging(Settings(log_level="INFO", openai_api_key="sk-openai-very-secret"), stream=buf)
    try:
        assert root.handlers == [handler]
        logging.getLogger("llmgw.test").warning("upstream key was %s", "sk-openai-very-secret",
                                                extra={"event": "oops"})
        try:
            raise ValueError("boom with sk-openai-very-secret")
        except ValueError:
            logging.getLogger("llmgw.test").exception("failed")
        handler.flush()                              # the line is written by the handler's own thread
        first, second = (orjson.loads(line) for line in buf.getvalue().splitlines()[-2:])
        assert first["event"] == "oops" and first["message"] == f"upstream key was {REDACTED}"
        assert second["message"] == "failed" and "ValueError: boom with <redacted>" in second["exc"]
        assert len(buf.getvalue().splitlines()) == 2           # one line each, traceback inside the JSON
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        handler.close()


def test_the_gateway_log_handler_never_writes_on_the_callers_thread():
    written_by: list[str] = []

    class Spy(io.StringIO):
        def write(self, s: str) -> int:
            written_by.append(threading.current_thread().name)
            return super().write(s)

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        handler = configure_logging(Settings(log_level="INFO"), stream=Spy())
        logging.getLogger("llmgw.test").warning("a line")
        handler.flush()
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        handler.close()
    assert written_by and threading.current_thread().name not in written_by


def test_the_gateway_log_handler_writes_every_line_once_in_order_across_flushes():
    """Lines leave in batches from the writer thread: none lost, none doubled, each thread's in its order,
    also when flushes (a writer stopping and a new one starting) come in the middle of them."""
    buf = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        handler = configure_logging(Settings(log_level="INFO"), stream=buf)

        def burst(n: int) -> None:
            for i in range(300):
                logging.getLogger("llmgw.test").info("line", extra={"event": "t", "n": n, "i": i})
                if i % 97 == 0:
                    handler.flush()
        threads = [threading.Thread(target=burst, args=(n,)) for n in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        handler.flush()
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        handler.close()
    got = [orjson.loads(line) for line in buf.getvalue().splitlines()]
    assert all(o["event"] == "t" for o in got) and len(got) == 900
    for n in range(3):
        assert [o["i"] for o in got if o["n"] == n] == list(range(300))


async def test_each_request_logs_one_access_line(fake_provider, tmp_path, json_lines):
    h = GatewayHarness(fake_provider, tmp_path)
    await h.start()
    try:
        key, key_id = h.key()
        fake_provider.script(Reply(text="x y", usage=Usage(input=7, output=2)))
        stream = await openai.AsyncOpenAI(base_url=h.url + "/v1", api_key=key, max_retries=0).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}], stream=True)
        [c async for c in stream]
        with pytest.raises(anthropic.AuthenticationError):
            await anthropic.AsyncAnthropic(base_url=h.url, api_key=key + "x", max_retries=0).messages.create(
                model="claude-sonnet-4-5", max_tokens=5, messages=[{"role": "user", "content": "x"}])
        [ev] = await h.events()
    finally:
        await h.stop()
    access = [o for o in json_lines() if o["event"] == "request"]
    assert len(access) == 2
    ok, refused = access
    assert ok["request_id"] == ev.request_id and ok["request_id"].startswith("req_")
    assert (ok["api"], ok["model"], ok["status"], ok["outcome"], ok["key_id"]) == ("chat", "gpt-4o-mini", 200, "ok", key_id)
    assert ok["input_tokens"] == 7 and ok["output_tokens"] == 2 and ok["stream"] is True
    assert isinstance(ok["duration_s"], float) and ok["route"] == "/v1/chat/completions"
    assert (refused["api"], refused["status"], refused["outcome"]) == ("messages", 401, "rejected_auth")
    assert refused["key_id"] == key_id                     # the public part of the presented key, nothing more
