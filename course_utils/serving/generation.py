"""From token ids to the text a client sees: one *choice* of a completion, run on a scheduler.

- :class:`TextStream` — incremental detokenization with stop strings applied on the decoded text: a character is
  released only once it cannot be the start of a stop string (so a stop string split across tokens is never
  streamed), the stop text itself is never returned, and UTF-8 characters split across byte tokens wait for
  their last byte.
- :func:`run_choice` — submit one request, feed its tokens through a :class:`TextStream`, yield the deltas; on a
  stop string the request is cancelled at once (the scheduler frees its slot), as it is when the awaiting task
  is cancelled (the client went away).
- :func:`scheduler_errors` — a backend's exceptions as OpenAI errors (a full queue → 503 with ``Retry-After``,
  FaultError → 429/503 with ``Retry-After``, ValueError → 400, anything else → 500 with the traceback in the
  server log only).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from dataclasses import dataclass, field

from .backends import Generation, GenRequest
from .faults import FaultError
from .protocol import ApiError
from .scheduler import QueueFull

log = logging.getLogger("course_utils.serving")


@dataclass
class Delta:
    """New text of one choice and the tokens (``(id, logprob, top)``) it came from; ``finish_reason`` on the last."""

    index: int
    text: str
    tokens: list = field(default_factory=list)
    finish_reason: str | None = None
    completion_tokens: int = 0


class TextStream:
    """Tokens in, text out, cut at the first of ``stops``."""

    def __init__(self, tokenizer, stops: list[str], index: int = 0):
        self.tokenizer, self.stops, self.index = tokenizer, [s for s in stops if s], index
        self.ids: list[int] = []
        self.pending: list = []
        self.starts: list[int] = []  # where each pending token's text starts in the decoded text
        self.text = ""  # the decoded text so far
        self.sent = 0  # characters released so far
        self.dropped = 0  # tokens after a stop string: computed, but neither returned nor counted
        self.stopped = False

    def push(self, tok: int, logprob: float = 0.0, top=None) -> Delta | None:
        self.starts.append(len(self.text.rstrip("\ufffd")))  # a byte that completes a character starts with it
        self.ids.append(int(tok))
        self.pending.append((int(tok), logprob, top))
        text = self.text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            return None
        hits = [i for i in (text.find(s, self.sent) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            # the tokens whose text starts at or after the stop string are not part of the answer: their logprobs
            # and their count go too, so logprobs and usage agree with the text returned (as vLLM's do)
            keep = sum(start < min(hits) for start in self.starts)
            self.dropped, self.pending, self.starts = len(self.pending) - keep, self.pending[:keep], self.starts[:keep]
            return self._release(text, min(hits))
        hold = max((k for s in self.stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        return self._release(text, len(text) - hold)

    def _release(self, text: str, upto: int) -> Delta | None:
        if upto <= self.sent and not self.stopped:
            return None
        n = sum(start < upto for start in self.starts)  # a token whose text is all held back waits with it
        delta = Delta(self.index, text[self.sent : max(upto, self.sent)], self.pending[:n])
        self.sent, self.pending, self.starts = max(upto, self.sent), self.pending[n:], self.starts[n:]
        return delta

    def finish(self, finish_reason: str) -> Delta:
        """What is left (text held back for a stop string that never came), marked as the last delta; its
        ``completion_tokens`` counts the tokens of the answer (not those after a stop string)."""
        rest = "" if self.stopped else self.tokenizer.decode(self.ids)[self.sent :]
        out = Delta(self.index, rest, [] if self.stopped else self.pending, finish_reason, len(self.ids) - self.dropped)
        self.pending, self.starts = [], []
        return out


@contextlib.contextmanager
def scheduler_errors():
    """Map what a backend raises to the HTTP error a client should see."""
    try:
        yield
    except QueueFull as err:  # load shedding: this model's queue is full
        seconds = max(1, math.ceil(err.retry_after))
        headers = {"Retry-After": str(seconds), "retry-after-ms": str(int(err.retry_after * 1000))}
        raise ApiError(503, str(err), code="server_overloaded", type_="server_error", headers=headers) from None
    except FaultError as err:
        headers = {}
        if err.retry_after is not None:
            headers = {
                "Retry-After": str(max(1, math.ceil(err.retry_after))),
                "retry-after-ms": str(int(err.retry_after * 1000)),
            }
        kind = "rate_limit_error" if err.status == 429 else "server_error"
        raise ApiError(
            err.status,
            f"upstream model unavailable (HTTP {err.status})",
            code="overloaded",
            type_=kind,
            headers=headers,
        ) from None
    except ValueError as err:  # the backend refused this request (e.g. it does not fit the context)
        raise ApiError(400, str(err)) from None
    except (asyncio.CancelledError, ApiError):
        raise
    except Exception:
        log.exception("generation failed")
        raise ApiError(500, "generation failed on the server", type_="server_error") from None


async def run_choice(scheduler, req: GenRequest, tokenizer, stops: list[str], index: int = 0):
    """Yield the :class:`Delta` objects of one choice; the last one carries ``finish_reason``."""
    queue: asyncio.Queue = asyncio.Queue()
    task = asyncio.ensure_future(scheduler.submit(req, queue))
    text = TextStream(tokenizer, stops, index)
    try:
        while (item := await queue.get()) is not None:
            delta = text.push(*item)
            if delta is not None and (delta.text or delta.tokens):
                yield delta
            if text.stopped:
                break
        if text.stopped:
            yield text.finish("stop")
            return
        with scheduler_errors():
            gen: Generation = await task
        yield text.finish(gen.finish_reason)
    finally:
        if not task.done():
            task.cancel()  # a stop string or a client that left: the scheduler frees the request's slot
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


@dataclass
class Choice:
    """A finished choice: all its deltas joined."""

    index: int
    text: str = ""
    tokens: list = field(default_factory=list)
    finish_reason: str = "length"
    completion_tokens: int = 0

    def add(self, d: Delta) -> None:
        self.text += d.text
        self.tokens += d.tokens
        if d.finish_reason is not None:
            self.finish_reason, self.completion_tokens = d.finish_reason, d.completion_tokens


async def collect(deltas) -> Choice:
    choice = None
    async for d in deltas:
        choice = choice or Choice(d.index)
        choice.add(d)
    return choice


async def merge(streams):
    """Interleave several async generators of deltas (the ``n`` choices of a stream) as items arrive; an error
    in one is raised here, and leaving early closes them all."""
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(gen):
        try:
            async for item in gen:
                await queue.put(item)
            await queue.put(done)
        except Exception as err:  # handed to the consumer, which re-raises it
            await queue.put(err)
        finally:
            await gen.aclose()  # cancels the choice's request at once, not when the generator is collected

    tasks = [asyncio.ensure_future(pump(g)) for g in streams]
    try:
        left = len(tasks)
        while left:
            item = await queue.get()
            if item is done:
                left -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
