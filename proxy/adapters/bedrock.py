"""Amazon Bedrock runtime: InvokeModel (Anthropic Messages bodies) and Converse, plain and streamed.

The model is named by the URL (``/model/{modelId}/invoke``, ``/invoke-with-response-stream``,
``/converse``, ``/converse-stream``), not the body, so one adapter instance is made per call
(``for_path``). Streams are AWS event-stream frames (``proxy/eventstream.py``) relayed untouched:

- InvokeModelWithResponseStream: each ``chunk`` event carries ``{"bytes": base64}`` of one Anthropic
  stream event; those are metered by the Anthropic meter itself (fed as SSE), and the last chunk's
  ``amazon-bedrock-invocationMetrics`` are the fallback when the Anthropic usage never completed.
- ConverseStream: usage (``inputTokens``, ``outputTokens``, ``cacheReadInputTokens``,
  ``cacheWriteInputTokens``) arrives once, in the ``metadata`` event; Converse JSON has it at ``usage``.

Callers authenticate with their gateway key (``Authorization: Bearer``, which is what Claude Code and
the SDKs send from ``AWS_BEARER_TOKEN_BEDROCK``); upstream the gateway signs with SigV4 (``SigV4Signer``).
"""
from __future__ import annotations

import asyncio
import binascii
import re
from dataclasses import replace
from typing import Any, MutableMapping
from urllib.parse import quote

import orjson

from llmgw.core.events import Tokens

from ..errors import BadRequest, GatewayError, UpstreamError
from ..eventstream import EventStreamSplitter
from ..types import Call, Usage
from ..usage import UsageReader, sane, settled
from ._common import (NO_TOKENS, count_url_images, has_web_search, optional_bool, optional_int, parse_object,
                      take_metadata_tags)
from .anthropic_messages import AnthropicMeter

INVOKE, INVOKE_STREAM, CONVERSE, CONVERSE_STREAM = "invoke", "invoke-with-response-stream", "converse", "converse-stream"
ACTIONS = (INVOKE, INVOKE_STREAM, CONVERSE, CONVERSE_STREAM)

# Bedrock's exception names by status, for errors the gateway itself returns (botocore reads ``__type``).
_EXCEPTIONS = {400: "ValidationException", 401: "AccessDeniedException", 403: "AccessDeniedException",
               404: "ResourceNotFoundException", 413: "ValidationException", 429: "ThrottlingException",
               502: "InternalServerException", 503: "ServiceUnavailableException", 504: "ModelTimeoutException"}
_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+=,-]{0,255}$")
# geo / global cross-region inference profile prefixes, the vendor, and the version suffix
_PROFILE = re.compile(r"^(?:(?:us|eu|apac|global|jp|au|ca|us-gov)\.)?(?:anthropic\.)?")
_VERSION = re.compile(r"-v\d+(?::\d+)?$")


def catalog_model(model_id: str) -> str:
    """The catalog's name for a Bedrock model id: ``us.anthropic.claude-sonnet-4-5-20250929-v1:0``
    and ``arn:...:inference-profile/us.anthropic.claude-opus-5-5`` price as ``claude-sonnet-4-5-20250929``
    and ``claude-opus-5-5``. Ids of other vendors keep their vendor prefix."""
    name = model_id.rsplit("/", 1)[-1] if model_id.startswith("arn:") else model_id
    return _VERSION.sub("", _PROFILE.sub("", name, count=1))


def endpoint_tier(model_id: str) -> str:
    """``global.`` inference profiles bill at list price; geographic (``us.``, ``eu.``...) and in-region
    ids at the catalog's ``regional`` tier (10% more from Sonnet 4.5 and Haiku 4.5 on)."""
    name = model_id.rsplit("/", 1)[-1] if model_id.startswith("arn:") else model_id
    return "standard" if name.startswith("global.") else "regional"


def error_object(err: GatewayError) -> dict[str, Any]:
    return {"__type": _EXCEPTIONS.get(err.status, "InternalServerException"), "message": err.message}


class BedrockErrors:
    """Bedrock's error shape, also for calls refused before the path named a model."""

    def error_body(self, err: GatewayError) -> bytes:
        return orjson.dumps(error_object(err))


class _Bedrock(BedrockErrors):
    family = "bedrock"

    def __init__(self, model_id: str, action: str) -> None:
        if not _MODEL_ID.match(model_id):
            raise BadRequest("the model id in the path is not a Bedrock model id or ARN")
        self.model_id, self.action = model_id, action
        self.stream = action in (INVOKE_STREAM, CONVERSE_STREAM)
        # boto3 percent-encodes the whole id (``:`` and the ``/`` of ARNs); so does the gateway
        self.upstream_path = f"/model/{quote(model_id, safe='')}/{action}"


class BedrockInvoke(_Bedrock):
    """InvokeModel / InvokeModelWithResponseStream with an Anthropic Messages body."""

    api = "bedrock_invoke"

    def parse(self, body: bytes) -> Call:
        obj = parse_object(body)
        optional_bool(obj, "stream")         # the action decides; a body flag is Bedrock's to refuse
        tags, changed = take_metadata_tags(obj, string_values_are_tags=False)
        return Call(model=self.model_id, stream=self.stream, body=orjson.dumps(obj) if changed else body,
                    max_output_tokens=optional_int(obj, "max_tokens"), image_count=count_url_images(obj.get("messages")),
                    web_search=has_web_search(obj.get("tools")), tags=tags, service_tier=endpoint_tier(self.model_id))

    def meter(self, call: Call) -> "InvokeMeter":
        return InvokeMeter(call)


class BedrockConverse(_Bedrock):
    """Converse / ConverseStream: Bedrock's own message shape, any model vendor."""

    api = "bedrock_converse"

    def parse(self, body: bytes) -> Call:
        obj = parse_object(body)
        cfg = obj.get("inferenceConfig")
        if cfg is not None and not isinstance(cfg, dict):
            raise BadRequest("`inferenceConfig` must be an object")
        tools = (obj.get("toolConfig") or {}).get("tools") if isinstance(obj.get("toolConfig"), dict) else None
        return Call(model=self.model_id, stream=self.stream, body=body,
                    max_output_tokens=optional_int(cfg or {}, "maxTokens"),
                    web_search=has_web_search(tools), service_tier=endpoint_tier(self.model_id))

    def meter(self, call: Call) -> "ConverseMeter":
        return ConverseMeter(call)


def for_path(model_id: str, action: str) -> BedrockInvoke | BedrockConverse:
    cls = BedrockConverse if action in (CONVERSE, CONVERSE_STREAM) else BedrockInvoke
    return cls(model_id, action)


def _exception_type(headers: Any) -> str:
    return str(headers.get(":exception-type") or headers.get(":error-code") or "exception")


class InvokeMeter:
    """Event-stream ``chunk`` events unwrapped into the Anthropic stream they carry."""

    __slots__ = ("_call", "_inner", "_split", "_metrics", "_error")

    def __init__(self, call: Call | None) -> None:
        self._call = call
        self._inner = AnthropicMeter(call)
        self._split = EventStreamSplitter()
        self._metrics: dict[str, Any] | None = None
        self._error = ""

    def feed(self, chunk: bytes) -> bytes:
        for msg in self._split.feed(chunk):
            if msg.message_type != "event":
                self._error = _exception_type(msg.headers)
            elif msg.event_type == "chunk":
                self._chunk(msg.payload)
        return chunk

    def _chunk(self, payload: bytes) -> None:
        try:
            raw = binascii.a2b_base64(orjson.loads(payload)["bytes"])
            if raw.find(b'"content_block_delta"') >= 0:        # most events: no usage in them, no need to parse
                kind = b"content_block_delta"
            else:
                event = orjson.loads(raw)
                metrics = event.get("amazon-bedrock-invocationMetrics")
                if isinstance(metrics, dict):
                    self._metrics = metrics
                kind = str(event.get("type")).encode()
        except (orjson.JSONDecodeError, binascii.Error, KeyError, TypeError, ValueError, AttributeError):
            return
        self._inner.feed(b"event: " + kind + b"\ndata: " + raw + b"\n\n")

    def finish_json(self, body: bytes) -> None:
        self._inner.finish_json(body)

    def result(self) -> Usage:
        usage = self._inner.result()
        m = self._metrics
        if not usage.complete and m is not None:
            r = UsageReader()
            tokens = Tokens(input=r.count(m, "inputTokenCount", name="input") or 0,
                            output=r.count(m, "outputTokenCount", name="output") or 0,
                            cache_read=r.count(m, "cacheReadInputTokenCount", name="cache_read") or 0,
                            cache_write_5m=r.count(m, "cacheWriteInputTokenCount", name="cache_write") or 0)
            usage = sane(settled(replace(usage, tokens=tokens, complete=True), r), self._call)
        if self._error:
            usage = replace(usage, error_type=self._error)
        return usage

    def tail(self) -> bytes:
        return b""

    def saw_output(self) -> bool:
        return self._inner.saw_output()


def converse_tokens(u: dict[str, Any], r: UsageReader | None = None) -> Tokens:
    """Converse counts cache reads and writes apart from ``inputTokens``; writes are 5-minute ones."""
    r = r or UsageReader()
    return Tokens(input=r.count(u, "inputTokens", name="input") or 0, output=r.count(u, "outputTokens", name="output") or 0,
                  cache_read=r.count(u, "cacheReadInputTokens", name="cache_read") or 0,
                  cache_write_5m=r.count(u, "cacheWriteInputTokens", name="cache_write") or 0)


class ConverseMeter:
    __slots__ = ("usage", "_split", "_call", "_read", "_deltas", "_delta_bytes")

    def __init__(self, call: Call | None) -> None:
        self.usage = Usage(tokens=NO_TOKENS)
        self._split = EventStreamSplitter()
        self._call = call
        self._read = UsageReader()
        self._deltas = 0
        self._delta_bytes = 0

    def feed(self, chunk: bytes) -> bytes:
        for msg in self._split.feed(chunk):
            if msg.message_type != "event":
                self.usage.error_type = _exception_type(msg.headers)
            elif msg.event_type == "contentBlockDelta":
                self._deltas += 1
                self._delta_bytes += len(msg.payload)
            elif msg.event_type == "metadata":
                self._take(msg.payload)
        return chunk

    def _take(self, body: bytes) -> None:
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            return
        if isinstance(obj, dict) and isinstance(obj.get("usage"), dict):
            self._read = UsageReader()
            self.usage.tokens = converse_tokens(obj["usage"], self._read)
            self.usage.complete = True

    def finish_json(self, body: bytes) -> None:
        self._take(body)

    def result(self) -> Usage:
        usage = self.usage
        if not usage.complete and self._deltas:
            # Cut mid-stream: bill what was generated. Each delta is a token or more; past ~60 bytes
            # of JSON around the text, ~3 bytes of text per token (errs high, as a budget should).
            est = max(self._deltas, (self._delta_bytes - 60 * self._deltas) // 3)
            if self._call is not None and self._call.max_output_tokens:
                est = min(est, self._call.max_output_tokens)
            usage = replace(usage, tokens=replace(usage.tokens, output=max(usage.tokens.output, est)))
        return sane(settled(usage, self._read), self._call)

    def tail(self) -> bytes:
        return b""

    def saw_output(self) -> bool:
        return self._deltas > 0


class SigV4Signer:
    """Signs each upstream request with the gateway's AWS credentials (botocore's SigV4).

    Only ``host``, ``content-type`` and ``x-amz-date`` are signed: a caller's other headers travel as
    they came (SigV4 checks only what it signed) and a caller's own ``x-amz-*`` never go up. With no
    keys configured, botocore's default chain finds them (environment, profile, instance or pod role).
    """

    def __init__(self, region: str, access_key: str = "", secret_key: str = "", session_token: str = "",
                 service: str = "bedrock") -> None:
        try:
            from botocore.credentials import Credentials
            from botocore.session import get_session
        except ImportError:
            raise ValueError("a bedrock upstream needs botocore (pip install 'llmgw[bedrock]')") from None

        self.region, self.service = region, service
        if access_key:
            self._creds = Credentials(access_key, secret_key, session_token or None)
        else:
            self._creds = get_session().get_credentials()
            if self._creds is None:
                raise ValueError("bedrock upstream: no AWS credentials configured or found by botocore")

    async def sign(self, method: str, url: str, headers: MutableMapping[str, str], body: bytes | None) -> None:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from yarl import URL

        for name in [k for k in headers if k.lower().startswith("x-amz-") or k.lower() == "authorization"]:
            headers.pop(name, None)
        headers.setdefault("content-type", "application/json")
        from botocore.exceptions import BotoCoreError

        creds = self._creds
        try:
            if getattr(creds, "refresh_needed", lambda: False)():
                frozen = await asyncio.to_thread(creds.get_frozen_credentials)     # may call STS / IMDS
            else:
                frozen = creds.get_frozen_credentials()
        except BotoCoreError as exc:
            raise UpstreamError(f"could not get AWS credentials to sign the Bedrock call: {type(exc).__name__}") from None
        # sign the path exactly as the HTTP client will send it (yarl leaves ``:`` unescaped)
        req = AWSRequest(method=method, url=str(URL(url)), data=body or b"",
                         headers={"content-type": headers["content-type"]})
        SigV4Auth(frozen, self.service, self.region).add_auth(req)
        for name in ("Authorization", "X-Amz-Date", "X-Amz-Security-Token"):
            if name in req.headers:
                headers[name] = req.headers[name]
