"""Completions and chat completions as one job: prompts × ``n`` choices, run on a scheduler, answered as one JSON
body or as server-sent events (OpenAI's chunk format, usage last when ``stream_options.include_usage``).

Choice ``j`` of a seeded request samples with ``seed + j``, so ``n`` seeded choices differ from each other and are
the same on every call. Deterministic choices (greedy, or seeded) go through the server's cache, scoped by the
model, every sampling setting and the API key's client (one tenant never receives another's cached answer).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

from ..chat import END_OF_TURN, END_OF_TURN_ID
from . import protocol
from .backends import GenRequest
from .generation import Choice, Delta, collect, merge, run_choice
from .protocol import ApiError
from .sampling import MAX_SEED, SamplingError


@dataclass
class Job:
    """One request, ready to run: ``reqs[i]`` is choice ``i`` (prompt ``i // n``, sample ``i % n``)."""

    chat: bool
    model: str
    backend: object
    scheduler: object
    client: str
    prompt_texts: list[str]
    reqs: list[GenRequest]
    stops: list[str]
    n: int = 1
    echo: bool = False
    logprobs: int | None = None  # None: no logprobs; k: k alternatives per token
    include_usage: bool = False
    cache: object = None
    rid: str = ""
    created: int = 0
    prompt_tokens: int = 0
    cache_hits: list = field(default_factory=list)
    # echo + logprobs: per prompt, (token, logprob, alternatives) of its tokens (GPTBackend.prompt_logprobs)
    prompt_logprobs: list = field(default_factory=list)

    @property
    def obj(self) -> str:
        return "chat.completion" if self.chat else "text_completion"


def prompt_ids(backend, prompt, param: str = "prompt") -> list[int]:
    """A prompt (text or token ids) as ids that fit the model, or a 400 naming ``param``."""
    if isinstance(prompt, str):
        try:
            ids = backend.tokenizer.encode(prompt)
        except Exception:
            raise ApiError(400, f"'{param}' could not be tokenized", param=param) from None
    else:
        ids = list(prompt)
        vocab = getattr(backend.tokenizer, "vocab_size", None)
        if vocab is not None and max(ids) >= vocab:
            raise ApiError(
                400, f"'{param}' holds token id {max(ids)}, outside the vocabulary [0, {vocab})", param=param
            )
    if not ids or len(ids) >= backend.max_context:
        raise ApiError(
            400, f"'{param}' has {len(ids)} tokens; this model's context is {backend.max_context}", param=param
        )
    return ids


def sampling_requests(body, ids_list, *, max_tokens, top_logprobs=None, stop_token_ids=(), vocab_size=None):
    """``n`` :class:`GenRequest` per prompt, every one carrying the request's ``body.to_sampling_params(max_tokens)``
    (``max_tokens``: the budget when the request names none); choice ``j`` samples with ``seed + j``.

    A ``logit_bias`` id outside the vocabulary is this request's 400 (found later, it would fail the request in
    the middle of a batch). ``top_logprobs``, when given, must be what the request asks for (a caller's check).
    """
    params = body.to_sampling_params(max_tokens, stop_token_ids=stop_token_ids)
    if top_logprobs is not None and (params.logprobs or 0) != top_logprobs:
        raise ValueError(f"top_logprobs={top_logprobs} disagrees with the request's {params.logprobs}")
    if vocab_size is not None:
        try:
            params.check_vocab(vocab_size)
        except SamplingError as err:
            raise ApiError(400, f"'{err.field}' {str(err).split(' ', 1)[1]}", param=err.field) from None
    choices = []
    for j in range(body.n or 1):
        seed = None if params.seed is None else (params.seed + j) % (MAX_SEED + 1)
        choices.append(params if seed == params.seed else params.replace(seed=seed))
    return [GenRequest(ids, sampling=p) for ids in ids_list for p in choices]


def check_budget(backend, ids_list, max_tokens: int, limit: int, param: str) -> None:
    room = min(limit, backend.max_context - max(len(ids) for ids in ids_list))
    if not 1 <= max_tokens <= room:
        raise ApiError(
            400,
            f"'{param}' must be between 1 and {room} for this prompt (server limit {limit}, "
            f"context {backend.max_context}), got {max_tokens}",
            param=param,
        )


def chat_stops(backend) -> tuple[list[str], tuple[int, ...]]:
    """The chat template's end of turn: a stop token when it is one token of the model's tokenizer."""
    own = getattr(backend.tokenizer, "end_of_turn", None)  # a model with its own template: its end of turn and EOS
    if own is not None:
        return [own], tuple(backend.tokenizer.stop_token_ids)
    ids = backend.tokenizer.encode(END_OF_TURN)
    return [END_OF_TURN], ((END_OF_TURN_ID,) if ids == [END_OF_TURN_ID] else ())


# ----------------------------------------------------------------------------------------------- running
def cache_scope(job: Job, req: GenRequest, text: str) -> dict:
    """What a cached answer is keyed on besides the prompt text: the model, the client, the endpoint, the text-level
    stops (the request's and the chat template's), every sampling setting (``SamplingParams.cache_key()``, so a
    field added there is part of the key without an edit here), and the prompt's token ids when its text does not
    give them back (ids that decode alike, e.g. two invalid bytes, must not share an answer)."""
    ids = list(req.prompt_ids)
    exact = job.backend.tokenizer.encode(text) == ids
    return {
        "model": job.model,
        "client": job.client,
        "chat": job.chat,
        "stops": list(job.stops),
        "sampling": req.sampling.cache_key(),
        "prompt_ids": None if exact else ids,
    }


async def _choice(job: Job, i: int):
    """The deltas of choice ``i``, through the cache when the choice is deterministic."""
    req, text = job.reqs[i], job.prompt_texts[i // job.n]
    cacheable = job.cache is not None and (req.temperature == 0 or req.seed is not None)
    if cacheable:
        scope = cache_scope(job, req, text)
        hit = await asyncio.to_thread(job.cache.get, text, scope)
        job.cache_hits.append(hit is not None)
        if hit is not None:
            yield Delta(i, hit.text, list(hit.tokens), hit.finish_reason, hit.completion_tokens)
            return
    done = Choice(i)
    async for d in run_choice(job.scheduler, req, job.backend.tokenizer, job.stops, i):
        done.add(d)
        yield d
    if cacheable:
        await asyncio.to_thread(job.cache.put, text, done, scope)


async def run(job: Job) -> list[Choice]:
    """All choices, concurrently (a batching scheduler runs them together)."""
    return list(await asyncio.gather(*(collect(_choice(job, i)) for i in range(len(job.reqs)))))


def stream(job: Job):
    """The deltas of every choice as they arrive."""
    return merge([_choice(job, i) for i in range(len(job.reqs))])


# ----------------------------------------------------------------------------------------------- answers
def _logprobs(job: Job, tokens: list, offset: int) -> dict | None:
    if job.logprobs is None:
        return None
    dec = job.backend.tokenizer.decode
    texts, lps = [dec([t]) for t, _, _ in tokens], [lp for _, lp, _ in tokens]
    tops = None
    if job.logprobs:  # a first echoed prompt token has no logprob and no alternatives (None)
        tops = [None if lp is None else {dec([a]): v for a, v in (top or {}).items()} for _, lp, top in tokens]
    if job.chat:
        return protocol.chat_logprobs(texts, lps, tops)
    return protocol.completion_logprobs(texts, lps, tops, offset)


def _echo(job: Job, i: int) -> str:
    return job.prompt_texts[i // job.n] if job.echo else ""


def _echoed(job: Job, i: int, tokens: list) -> tuple[list, int]:
    """Choice ``i``'s tokens for its logprobs, the echoed prompt's first when they were computed, and the text
    offset of the first of them (0 then; after the echoed text otherwise)."""
    if job.echo and job.prompt_logprobs:
        return list(job.prompt_logprobs[i // job.n]) + list(tokens), 0
    return list(tokens), len(_echo(job, i))


def body(job: Job, choices: list[Choice]) -> dict:
    """The whole answer as one JSON body."""
    out = protocol.envelope(job.rid, job.obj, job.model, job.created)
    items = []
    for c in choices:
        text = _echo(job, c.index) + c.text
        lp = _logprobs(job, *_echoed(job, c.index, c.tokens))
        if job.chat:
            items.append(
                {
                    "index": c.index,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": lp,
                    "finish_reason": c.finish_reason,
                }
            )
        else:
            items.append({"text": text, "index": c.index, "logprobs": lp, "finish_reason": c.finish_reason})
    out["choices"] = items
    out["usage"] = protocol.usage(job.prompt_tokens, sum(c.completion_tokens for c in choices))
    return protocol.checked(protocol.ChatCompletion if job.chat else protocol.Completion, out)


def _chunk(job: Job, choice: dict | None) -> str:
    out = protocol.envelope(job.rid, "chat.completion.chunk" if job.chat else "text_completion", job.model, job.created)
    out["choices"] = [] if choice is None else [choice]
    if job.include_usage:
        out["usage"] = None
    return f"data: {json.dumps(protocol.checked(_chunk_schema(job), out))}\n\n"


def _chunk_schema(job: Job):
    return protocol.ChatCompletionChunk if job.chat else protocol.Completion


def _delta_chunk(job: Job, d: Delta, offset: int, first: bool) -> str:
    lp = _logprobs(job, d.tokens, offset) if d.tokens else None
    if job.chat:
        delta = {"role": "assistant", "content": d.text} if first else ({"content": d.text} if d.text else {})
        return _chunk(job, {"index": d.index, "delta": delta, "logprobs": lp, "finish_reason": d.finish_reason})
    return _chunk(job, {"text": d.text, "index": d.index, "logprobs": lp, "finish_reason": d.finish_reason})


async def sse(job: Job, deltas, first: Delta | None):
    """Server-sent events: a chunk per delta (chat's first chunk per choice carries ``role``), the usage chunk
    when asked, then ``data: [DONE]``. Yields ``(event_text, completion_tokens_so_far)``."""
    offsets: dict[int, int] = {}
    tokens = 0

    async def all_deltas():
        if first is not None:
            yield first
        async for d in deltas:
            yield d

    async for d in all_deltas():
        if d.index not in offsets:
            echo = _echo(job, d.index)
            toks, start = _echoed(job, d.index, d.tokens)
            d = Delta(d.index, echo + d.text, toks, d.finish_reason, d.completion_tokens)
            yield _delta_chunk(job, d, start, True), tokens
            offsets[d.index] = len(d.text)
        else:
            yield _delta_chunk(job, d, offsets[d.index], False), tokens
            offsets[d.index] += len(d.text)
        tokens += d.completion_tokens
    if job.include_usage:
        out = protocol.envelope(
            job.rid, "chat.completion.chunk" if job.chat else "text_completion", job.model, job.created
        )
        out.update(choices=[], usage=protocol.usage(job.prompt_tokens, tokens))
        yield f"data: {json.dumps(protocol.checked(_chunk_schema(job), out))}\n\n", tokens
    yield "data: [DONE]\n\n", tokens
