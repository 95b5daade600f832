"""The OpenAI wire format: pydantic schemas of the requests and of the responses, and the error body.

Requests are validated strictly (``"5"`` is not an int, ``true`` is not a number, NaN is refused) and an invalid
field is OpenAI's ``400 invalid_request_error`` naming it in ``param`` (FastAPI alone would answer 422, which the
official client raises as ``UnprocessableEntityError`` instead of ``BadRequestError``).

Fields, as OpenAI treats them: a field the API does not know is a 400 "Unrecognized request argument supplied:
<name>". Every field the official ``openai`` client (3.x) can send is known: the ones this server implements are
validated; hints that do not change the answer (``metadata``, ``store``, ``service_tier``, ``prompt_cache_key``, …)
are accepted and ignored; features it does not have (``tools``, ``response_format`` JSON modes, ``audio``, …) are
accepted only with their default value (null, or what means "off") and otherwise a 400 naming the field.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .sampling import (  # the limits live with SamplingParams; re-exported here for the schemas' users
    DEFAULT_MAX_TOKENS,
    MAX_LOGIT_BIAS,
    MAX_N,
    MAX_PENALTY,
    MAX_SEED,
    MAX_STOP,
    MAX_TEMPERATURE,
    MAX_TOP_LOGPROBS,
    SamplingError,
    SamplingParams,
)

MAX_EMBEDDING_INPUTS = 256  # inputs per embeddings request (OpenAI allows 2,048; our CPU embedder is slower)
SYSTEM_FINGERPRINT = "fp_course_utils"

Float = Annotated[float, Field(allow_inf_nan=False)]
Penalty = Annotated[float, Field(ge=-MAX_PENALTY, le=MAX_PENALTY, allow_inf_nan=False)]
Bias = Annotated[float, Field(ge=-MAX_LOGIT_BIAS, le=MAX_LOGIT_BIAS, allow_inf_nan=False)]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]


class ApiError(Exception):
    """An error answered as OpenAI's JSON body ``{"error": {message, type, param, code}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type_: str = "invalid_request_error",
        headers: dict | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type, self.headers = (
            status,
            message,
            param,
            code,
            type_,
            headers or {},
        )

    def body(self) -> dict:
        return error_body(self.status, self.message, self.param, self.code, self.type)


def error_body(status, message, param=None, code=None, type_="invalid_request_error") -> dict:
    """OpenAI's error body, exactly its keys (``status`` is the HTTP status line, not part of the body)."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


_TYPE_TAGS = {"str", "int", "bool", "float", "list", "dict", "none"}


def validation_error(err: ValidationError) -> ApiError:
    """The first pydantic error as a 400 naming the field (``messages.1.role``)."""
    errors = err.errors(include_url=False)
    # a union tries every member; the members of the wrong JSON type report "should be a valid string". The
    # member whose type fit says what was wrong with the value ("at most 4 items"): report that one.
    first = next((e for e in errors if not e.get("type", "").endswith("_type")), errors[0])
    # a union reports which member failed (`constrained-str`, `list[constrained-int]`): keep the field path only
    loc = [
        str(p) for p in first.get("loc", ()) if not (isinstance(p, str) and ("[" in p or "-" in p or p in _TYPE_TAGS))
    ]
    param = ".".join(loc) or None
    msg = first.get("msg", "invalid value")
    return ApiError(400, f"invalid '{param}': {msg}" if param else msg, param=param)


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class _Request(_Strict):
    """A request body: besides its fields, the ones the API knows but this server ignores or lacks."""

    IGNORED: ClassVar[frozenset[str]] = frozenset()
    # field -> the values accepted (its defaults); any other value is a 400: this server lacks the feature
    UNSUPPORTED: ClassVar[dict[str, tuple]] = {}


def _same(a, b) -> bool:
    """Equal and of the same JSON type (``true`` is not ``1``)."""
    return type(a) is type(b) and a == b


def check_fields(schema: type[_Request], body: dict) -> None:
    """400 for a field the API does not know, or a known-but-unsupported one set to a non-default value."""
    for name in body:
        if name not in schema.model_fields and name not in schema.IGNORED and name not in schema.UNSUPPORTED:
            raise ApiError(400, f"Unrecognized request argument supplied: {name[:80]}", param=name[:200])
    for name, accepted in schema.UNSUPPORTED.items():
        if name in body and not any(_same(body[name], a) for a in accepted):
            shown = ", ".join("null" if a is None else repr(a) for a in accepted)
            raise ApiError(400, f"'{name}' is not supported by this server (accepted values: {shown})", param=name)


class StreamOptions(_Strict):
    include_usage: bool = False


class _Sampling(_Request):
    """Fields shared by completions and chat completions (OpenAI's names and ranges)."""

    model: Annotated[str, Field(min_length=1)]
    temperature: Annotated[float, Field(ge=0.0, le=MAX_TEMPERATURE, allow_inf_nan=False)] | None = 1.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False)] | None = None
    top_k: Annotated[int, Field(ge=-1)] | None = None  # vLLM's extension: -1, 0 or null = every token
    n: Annotated[int, Field(ge=1, le=MAX_N)] | None = 1
    seed: Seed | None = None
    stop: (
        Annotated[str, Field(min_length=1)]
        | Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=MAX_STOP)]
        | None
    ) = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    presence_penalty: Penalty | None = 0.0
    frequency_penalty: Penalty | None = 0.0
    logit_bias: dict[str, Bias] | None = None
    user: str | None = None

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, value):
        for key in value or {}:
            if not key.isdigit() or len(key) > 9:
                raise ValueError(f"logit_bias keys must be token ids, got {key[:20]!r}")
        return value

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def max_new_tokens(self, default: int) -> tuple[int, str]:
        """The token budget and the field it came from."""
        return (default if self.max_tokens is None else self.max_tokens), "max_tokens"

    def requested_logprobs(self) -> int | None:
        """``None``: no log-probabilities; ``k``: each token's and its ``k`` most likely alternatives."""
        return self.logprobs

    def to_sampling_params(self, default_max_tokens: int = DEFAULT_MAX_TOKENS, *, stop_token_ids=()) -> SamplingParams:
        """This request's one :class:`~course_utils.sampling.SamplingParams` (as vLLM's requests make theirs).

        ``default_max_tokens``: the budget when the request names none; ``stop_token_ids``: the model's own stops
        (a chat template's end of turn). An invalid combination is a 400 naming the field.
        """
        try:
            return SamplingParams(
                max_tokens=self.max_new_tokens(default_max_tokens)[0],
                temperature=1.0 if self.temperature is None else self.temperature,
                top_p=1.0 if self.top_p is None else self.top_p,
                top_k=max(self.top_k or 0, 0),
                seed=self.seed,
                presence_penalty=self.presence_penalty or 0.0,
                frequency_penalty=self.frequency_penalty or 0.0,
                logit_bias=dict(self.logit_bias or {}),
                logprobs=self.requested_logprobs(),
                stop=tuple(self.stops()),
                stop_token_ids=tuple(stop_token_ids),
            )
        except SamplingError as err:
            raise ApiError(400, str(err), param=err.field) from None


TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


class CompletionRequest(_Sampling):
    UNSUPPORTED = {"suffix": (None, ""), "best_of": (None, 1)}
    prompt: (
        Annotated[str, Field(min_length=1)]
        | TokenIds
        | Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=32)]
        | Annotated[list[TokenIds], Field(min_length=1, max_length=32)]
    )
    max_tokens: Annotated[int, Field(ge=1)] | None = DEFAULT_MAX_TOKENS
    logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    echo: bool | None = False

    def prompts(self) -> list:
        """One entry per prompt: a str or a list of token ids."""
        p = self.prompt
        if isinstance(p, str) or (p and isinstance(p[0], int)):
            return [p]
        return list(p)


TOOL_ROLES = ("tool", "function")


class ChatMessage(_Strict):
    """One message. ``developer`` is OpenAI's newer name for ``system`` (its reference examples open with it) and is
    rendered as the system turn; ``tool``/``function`` messages carry tool results, which this server has no tools
    to produce (a 400 saying so, see :func:`check_messages`). ``content`` is required (a string, or OpenAI's
    content parts, text parts only): null is only meaningful beside ``tool_calls``, which this server lacks."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]]
    name: str | None = None

    def template_role(self) -> str:
        """The course chat template's role for this message."""
        return "system" if self.role == "developer" else self.role


def check_messages(body: dict) -> None:
    """400s that name what is unsupported (tools), before the schema would report a mere field error."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            continue
        if m.get("role") in TOOL_ROLES:
            raise ApiError(
                400,
                f"tools are not supported by this server: messages[{i}] has role {m['role']!r} (a tool result); "
                "send system, developer, user and assistant messages only",
                param=f"messages.{i}.role",
                code="tools_not_supported",
            )
        for field in ("tool_calls", "function_call"):
            if m.get(field) not in (None, []):
                raise ApiError(
                    400,
                    f"tools are not supported by this server: messages[{i}] carries {field!r}",
                    param=f"messages.{i}.{field}",
                    code="tools_not_supported",
                )
        parts = m.get("content") if isinstance(m.get("content"), list) else []
        for j, part in enumerate(parts):
            kind = part.get("type") if isinstance(part, dict) else None
            if isinstance(kind, str) and kind not in ("text", "refusal"):
                raise ApiError(
                    400,
                    f"{kind[:40]!r} content parts are not supported by this server (text parts only): "
                    f"messages[{i}].content[{j}]",
                    param=f"messages.{i}.content.{j}.type",
                )
        if "content" not in m or m["content"] is None:
            raise ApiError(
                400,
                f"messages[{i}].content must be a string or a list of text parts, got "
                f"{'null' if 'content' in m else 'nothing'}",
                param=f"messages.{i}.content",
            )


class ChatCompletionRequest(_Sampling):
    IGNORED = frozenset(
        {
            "metadata",
            "store",
            "service_tier",
            "prompt_cache_key",
            "prompt_cache_options",
            "prompt_cache_retention",
            "safety_identifier",
        }
    )
    UNSUPPORTED = {
        "tools": (None, []),
        "tool_choice": (None, "none", "auto"),
        "parallel_tool_calls": (None, True, False),  # meaningless without tools
        "functions": (None, []),
        "function_call": (None, "none", "auto"),
        "response_format": (None, {"type": "text"}),
        "audio": (None,),
        "modalities": (None, ["text"]),
        "prediction": (None,),
        "reasoning_effort": (None,),
        "verbosity": (None, "medium"),
        "web_search_options": (None,),
        "moderation": (None,),
    }
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool | None = False
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None

    def max_new_tokens(self, default: int) -> tuple[int, str]:
        """The token budget and the field it came from (``max_completion_tokens`` wins, as for OpenAI)."""
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens, "max_completion_tokens"
        if self.max_tokens is not None:
            return self.max_tokens, "max_tokens"
        return default, "max_tokens"

    def requested_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


class EmbeddingRequest(_Request):
    model: Annotated[str, Field(min_length=1)]
    input: (
        Annotated[str, Field(min_length=1)]
        | Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS)]
        | TokenIds
        | Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS)]
    )
    encoding_format: Literal["float", "base64"] | None = "float"  # base64: float32 little-endian
    user: str | None = None
    dimensions: Annotated[int, Field(ge=1)] | None = None  # only the model's own size (no truncated vectors)

    def inputs(self) -> list:
        """One entry per input: a str, or a list of token ids (OpenAI's ``int[]`` / ``int[][]``)."""
        x = self.input
        return [x] if isinstance(x, str) or isinstance(x[0], int) else list(x)


def parse(schema: type[BaseModel], body: dict):
    """``body`` as ``schema``, or an :class:`ApiError` 400 naming the first bad field (see :func:`check_fields`)."""
    if issubclass(schema, _Request):
        check_fields(schema, body)
    if schema is ChatCompletionRequest:
        check_messages(body)
    try:
        req = schema.model_validate(body)
    except ValidationError as err:
        raise validation_error(err) from None
    if getattr(req, "stream_options", None) is not None and not req.stream:  # as OpenAI: a 400, not ignored
        raise ApiError(
            400, "The 'stream_options' parameter is only allowed when 'stream' is true", param="stream_options"
        )
    return req


# ----------------------------------------------------------------------------------------------- responses
# The answers' shapes. Builders below make plain dicts; :func:`checked` passes each one through its schema, so a
# response can never drift from the documented shape, and fields left out stay out (``usage`` on a chunk that
# was not asked for it, ``role`` on a chat delta after the first).
class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Usage(_Out):
    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int


class _Envelope(_Out):
    id: str
    object: str
    created: int
    model: str
    system_fingerprint: str


class CompletionLogprobs(_Out):
    tokens: list[str]
    token_logprobs: list[float | None]  # None: the first prompt token under ``echo`` (nothing before it)
    top_logprobs: list[dict[str, float] | None] | None
    text_offset: list[int]


class CompletionChoice(_Out):
    text: str
    index: int
    logprobs: CompletionLogprobs | None
    finish_reason: Literal["stop", "length", "cancelled"] | None


class Completion(_Envelope):
    """``/v1/completions``' answer, and each of its stream's chunks (``object`` ``text_completion`` in both)."""

    object: Literal["text_completion"]
    choices: list[CompletionChoice]
    usage: Usage | None = None


class TopLogprob(_Out):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(_Out):
    content: list[TokenLogprob]
    refusal: None = None


class AssistantMessage(_Out):
    role: Literal["assistant"]
    content: str
    refusal: None = None


class ChatChoice(_Out):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None
    finish_reason: Literal["stop", "length", "cancelled"]


class ChatCompletion(_Envelope):
    object: Literal["chat.completion"]
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(_Out):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(_Out):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None
    finish_reason: Literal["stop", "length", "cancelled"] | None


class ChatCompletionChunk(_Envelope):
    object: Literal["chat.completion.chunk"]
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class Embedding(_Out):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str  # str: base64 of little-endian float32


class EmbeddingUsage(_Out):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(_Out):
    """Exactly OpenAI's keys: no ``id``, ``created`` or ``system_fingerprint`` on embeddings."""

    object: Literal["list"]
    model: str
    data: list[Embedding]
    usage: EmbeddingUsage


def checked(schema: type[BaseModel], body: dict) -> dict:
    """``body`` validated against its response ``schema``; only the fields it sets are written."""
    return schema.model_validate(body).model_dump(mode="json", exclude_unset=True)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def envelope(rid: str, obj: str, model: str, created: int | None = None) -> dict:
    """The fields every response carries."""
    return {
        "id": rid,
        "object": obj,
        "created": int(time.time()) if created is None else created,
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_logprobs(tokens: list[str], logprobs: list[float], tops: list[dict] | None, start: int = 0) -> dict:
    """``/v1/completions``' logprobs: parallel lists, ``text_offset`` counted from ``start``."""
    offsets, pos = [], start
    for t in tokens:
        offsets.append(pos)
        pos += len(t)
    return {"tokens": tokens, "token_logprobs": logprobs, "top_logprobs": tops, "text_offset": offsets}


def chat_logprobs(tokens: list[str], logprobs: list[float], tops: list[dict] | None) -> dict:
    """Chat's logprobs: one entry per token with its bytes and the ``top_logprobs`` alternatives."""
    content = []
    for i, (t, lp) in enumerate(zip(tokens, logprobs)):
        alts = [
            {"token": a, "logprob": v, "bytes": list(a.encode("utf-8"))} for a, v in (tops[i] if tops else {}).items()
        ]
        content.append({"token": t, "logprob": lp, "bytes": list(t.encode("utf-8")), "top_logprobs": alts})
    return {"content": content, "refusal": None}
