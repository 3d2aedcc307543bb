"""OpenAI Embeddings (``POST /v1/embeddings``): input tokens only, never streamed."""
from __future__ import annotations

import orjson

from ..errors import GatewayError
from ..sse import loads_object
from ..types import Call, Usage
from ..usage import UsageReader, sane, settled
from ._common import NO_TOKENS, parse_object, require_embedding_input, require_model, take_metadata_tags
from .openai_chat import error_object, openai_usage_tokens


class EmbeddingsMeter:
    __slots__ = ("usage", "_call", "_read")

    def __init__(self, call: Call | None = None) -> None:
        self.usage = Usage(tokens=NO_TOKENS)
        self._call = call
        self._read = UsageReader()

    def feed(self, chunk: bytes) -> bytes:
        return chunk

    def finish_json(self, body: bytes) -> None:
        obj = loads_object(body)
        if obj is not None and isinstance(obj.get("usage"), dict):
            self.usage.tokens = openai_usage_tokens(obj["usage"], "prompt_tokens", "completion_tokens", self._read,
                                                    output_required=False)
            model = obj.get("model")
            self.usage.model_served = model if isinstance(model, str) else ""
            self.usage.complete = True
        elif obj is not None:
            self._read.flag("missing_usage")

    def result(self) -> Usage:
        return sane(settled(self.usage, self._read), self._call)

    def tail(self) -> bytes:
        return b""

    def saw_output(self) -> bool:
        return False


class OpenAIEmbeddings:
    api = "embeddings"
    family = "openai"
    upstream_path = "/embeddings"

    def parse(self, body: bytes) -> Call:
        obj = parse_object(body)
        model = require_model(obj)
        require_embedding_input(obj)
        tags, changed = take_metadata_tags(obj, string_values_are_tags=False)
        return Call(model=model, stream=False, body=orjson.dumps(obj) if changed else body,
                    max_output_tokens=0, tags=tags)

    def meter(self, call: Call) -> EmbeddingsMeter:
        return EmbeddingsMeter(call)

    def error_body(self, err: GatewayError) -> bytes:
        return orjson.dumps(error_object(err))
