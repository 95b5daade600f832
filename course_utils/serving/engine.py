"""Chapter 8: continuous batching — iteration-level scheduling over a block KV cache, as in Orca and vLLM.

Static batching gathers requests, then decodes them together until the *longest* is done: a request that
needs 16 tokens waits for its neighbour's 256, and a newcomer waits for the whole batch. Orca (Yu et al., OSDI
2022) schedules at the granularity of one decode step instead:

- every iteration, waiting requests **join** the running batch (up to ``max_batch`` and the free KV memory), and
  every iteration is **one forward pass**: the newcomers' prompt tokens are packed into one row together with the
  running sequences' next tokens (Orca's *selective batching*: the linear layers see all tokens at once, attention
  runs per group — the decoding sequences together, each prompt alone), so the running requests never wait
  through a separate prefill pass. Prompts share a budget of ``max_step_tokens`` per step; a longer prompt is fed
  in chunks over several steps (*chunked prefill*, Sarathi-Serve; vLLM);
- a sequence **leaves** the batch in the iteration it finishes (``max_tokens`` reached, a stop token, or
  :meth:`Engine.cancel`), and its slot and memory go to the next request at once.

Sequences in one batch have different lengths, so each row carries its own positions, and each sequence's
keys/values live in fixed-size **blocks** of one shared pool, found through its *block table* (PagedAttention;
Kwon et al., SOSP 2023): :class:`~course_utils.serving.paged.PagedKVCache`, the engine's own attention path
(:mod:`course_utils.serving.paged`), apart from chapter 2's attention. Memory grows one block at a time, so at
most ``block_size − 1`` slots per sequence are reserved but unused, instead of a ``max_len`` reservation per
request. When the pool runs out mid-generation, the most recently admitted sequence is **preempted** (its blocks
freed; it re-enters the queue and later recomputes its cache from prompt + generated tokens — vLLM's "recompute"
preemption).

- :class:`Engine` — ``submit(prompt_ids, params, on_token) -> RequestHandle`` (thread-safe; the decode loop runs
  in a background thread), ``cancel``, ``stats``, ``close``; ``policy="static"`` runs the same engine as a static
  batcher (admit only into an empty batch, keep finished rows computing until the batch ends) for comparisons.
- :class:`TokenEvent` (what ``on_token`` receives) and :class:`EngineResult` (what ``handle.result()`` returns).
- :func:`run_clients` — a closed-loop load (each client thread sends its requests back to back) for the
  benchmark and the notebook: throughput, latency percentiles, KV memory waste.

The forward pass is the model's own (:meth:`~course_utils.model.GPT.forward`), given one
:class:`~course_utils.serving.paged.PagedKVCache` per layer that holds the pass's positions and slots and computes
each layer's attention (:func:`~course_utils.serving.paged.paged_attention`); sampling is
:func:`course_utils.sampling.sample_tokens` (each row with its request's own seeded generator).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..timing import percentile
from .paged import PagedKVCache
from .sampling import SamplingParams, TokenChoice, sample_tokens

__all__ = ["Engine", "RequestHandle", "TokenEvent", "EngineResult", "BlockAllocator", "run_clients", "POLICIES"]

#: the three ways of serving that chapter 8 compares: name -> Engine options
POLICIES = {
    "continuous": {"policy": "continuous"},
    "static": {"policy": "static"},
    "one-at-a-time": {"policy": "continuous", "max_batch": 1},
}


def gather_wait_s(waiting: int, max_batch: int, opened_at: float, max_wait_s: float, now: float) -> float:
    """Static batching's one rule, shared by :class:`Engine`'s ``policy="static"`` and the server's
    :class:`~course_utils.serving.scheduler.Batcher`: seconds to keep gathering before a batch starts — 0 once
    ``max_batch`` requests wait or ``max_wait_s`` has passed since the window opened at ``opened_at`` (a
    ``perf_counter`` time: the oldest arrival for the engine, the Batcher's first pick for the server). Once
    started, a static batch takes nobody in until it ends."""
    return 0.0 if waiting >= max_batch else max(0.0, opened_at + max_wait_s - now)


@dataclass(frozen=True)
class TokenEvent:
    """One step of one request, given to ``on_token`` from the engine's thread.

    ``token_id`` is ``None`` only on a final event that ends the sequence on a stop token (the stop token is not
    part of the output) or on an error (``finish_reason == "error"``: the request failed alone, ``result()``
    raises). ``finish_reason`` is set on the last event of a sequence, else ``None``.
    """

    request_id: int
    index: int  # position of the token in the completion (0 = first generated token)
    token_id: int | None
    logprob: float | None
    top_logprobs: list[tuple[int, float]]
    finish_reason: str | None = None


@dataclass
class EngineResult:
    """A finished request: generated ids (without a stop token), their logprobs, why it ended, token counts."""

    request_id: int
    token_ids: list[int]
    logprobs: list[float]
    top_logprobs: list[list[tuple[int, float]]]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int  # tokens the model generated, the stop token included (it was computed)
    submitted_at: float = 0.0  # time.perf_counter() stamps, for latency measurements
    first_token_at: float | None = None
    finished_at: float = 0.0
    preemptions: int = 0
    submitted_cpu: float = 0.0  # the same on the engine's CPU clock (see Engine.cpu_seconds)
    finished_cpu: float = 0.0
    submitted_step: int = 0  # the same in forward passes (stats()["steps"]): a latency no machine changes
    finished_step: int = 0


class RequestHandle:
    """Returned by :meth:`Engine.submit`: ``result(timeout)`` waits for the :class:`EngineResult`."""

    def __init__(self, request_id: int):
        self.request_id = request_id
        self._done = threading.Event()
        self._result: EngineResult | None = None
        self._error: BaseException | None = None

    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float | None = None) -> EngineResult:
        """The result once the request finished; ``TimeoutError`` after ``timeout`` seconds."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"request {self.request_id} did not finish within {timeout} s")
        if self._error is not None:
            raise RuntimeError(f"request {self.request_id} failed in the engine") from self._error
        return self._result

    def __repr__(self) -> str:
        return f"RequestHandle(id={self.request_id}, done={self.done()})"


class BlockAllocator:
    """A free list of KV blocks ``1 … num_blocks`` (block 0 is scratch space for padding, never handed out)."""

    def __init__(self, num_blocks: int):
        self.num_blocks = num_blocks
        self._free = list(range(num_blocks, 0, -1))  # pop() hands out the lowest id first

    @property
    def free(self) -> int:
        return len(self._free)

    def allocate(self, n: int) -> list[int] | None:
        """``n`` blocks, or ``None`` (and nothing taken) if fewer are free."""
        if n > len(self._free):
            return None
        return [self._free.pop() for _ in range(n)]

    def release(self, blocks: list[int]) -> None:
        self._free.extend(reversed(blocks))


@dataclass
class _Seq:
    handle: RequestHandle
    prompt: list[int]
    params: SamplingParams
    on_token: Callable[[TokenEvent], None] | None
    generator: torch.Generator | None
    generated: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    tops: list[list[tuple[int, float]]] = field(default_factory=list)
    blocks: list[int] = field(default_factory=list)
    cached: int = 0  # tokens whose keys/values are in the blocks
    pad: int = 0  # static policy: filler tokens a finished row feeds while it waits for the batch to end
    slot: int | None = None  # batch slot while running (for the timeline)
    finish: str | None = None  # set when done; the row may still ride along under the static policy
    stop_token: bool = False
    submitted_at: float = 0.0
    first_token_at: float | None = None
    preemptions: int = 0
    submitted_cpu: float = 0.0
    submitted_step: int = 0

    @property
    def tokens(self) -> list[int]:
        return self.prompt + self.generated + [0] * self.pad

    @property
    def pending(self) -> list[int]:
        """Tokens to feed next: the whole prompt (+ generated) after admission, else the last sampled token."""
        return self.tokens[self.cached :]


class Engine:
    """Continuous batching for a course :class:`~course_utils.model.GPT` with a block (paged) KV cache.

    ``num_blocks`` defaults to enough blocks for ``max_batch`` sequences of ``max_seq_len`` tokens. ``policy``:
    ``"continuous"`` (iteration-level scheduling) or ``"static"`` (gather a batch when the engine is idle, decode
    until every row is done, then deliver all results — the baseline it replaces; like the chapter's ``Batcher``
    it gathers for up to ``max_wait_ms`` or ``max_batch`` requests before it starts). ``max_step_tokens``: the
    prompt tokens one step may carry (chunked prefill). ``record=True`` keeps :attr:`timeline`, one tuple per step
    (= forward pass) with the request id in each batch slot (``None`` = empty).
    """

    def __init__(
        self,
        model,
        *,
        block_size: int = 16,
        num_blocks: int | None = None,
        max_batch: int = 16,
        policy: str = "continuous",
        record: bool = False,
        max_wait_ms: float = 10.0,
        max_step_tokens: int = 256,
    ):
        config = getattr(model, "config", None)
        if config is None or not hasattr(model, "blocks"):
            raise TypeError(f"model must be a course_utils.model.GPT, got {type(model).__name__}")
        for name, value in (("block_size", block_size), ("max_batch", max_batch), ("max_step_tokens", max_step_tokens)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        per_seq = math.ceil(config.max_seq_len / block_size)
        num_blocks = max_batch * per_seq if num_blocks is None else num_blocks
        if isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or num_blocks < 1:
            raise ValueError(f"num_blocks must be a positive int, got {num_blocks!r}")
        if policy not in ("continuous", "static"):
            raise ValueError(f"policy must be 'continuous' or 'static', got {policy!r}")
        if isinstance(max_wait_ms, bool) or not isinstance(max_wait_ms, (int, float)) or max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be a number >= 0, got {max_wait_ms!r}")
        self.max_wait_s = max_wait_ms / 1000
        self.model = model.eval()
        self.block_size, self.max_batch, self.policy, self.record = block_size, max_batch, policy, record
        self.max_step_tokens = max_step_tokens
        self.vocab_size, self.max_seq_len = config.vocab_size, config.max_seq_len
        attn = model.blocks[0].attn
        dtype = next(model.parameters()).dtype
        slots = (num_blocks + 1) * block_size  # + block 0, the scratch block that padding writes into
        self._pools = [
            (
                torch.zeros(slots, attn.n_kv_heads, attn.head_dim, dtype=dtype),
                torch.zeros(slots, attn.n_kv_heads, attn.head_dim, dtype=dtype),
            )
            for _ in model.blocks
        ]
        # keys + values, every layer, one position
        self.bytes_per_token = 2 * len(model.blocks) * attn.n_kv_heads * attn.head_dim * dtype.itemsize
        self.allocator = BlockAllocator(num_blocks)
        self.timeline: list[tuple] = []
        self._cond = threading.Condition()
        self._waiting: deque[_Seq] = deque()
        self._running: list[_Seq] = []
        self._ids = itertools.count()
        self._closed = False
        self._held = False  # hold(): queue requests without starting them
        self._stepping = False  # True while the loop runs a step outside the lock (cancel() then defers)
        self._cancels: list[_Seq] = []  # running requests cancelled during a step, retired at its end
        self._cpu, self._iter_start = 0.0, None  # CPU seconds the loop has computed for; start of this iteration
        self._totals = {"steps": 0, "prefills": 0, "tokens": 0, "used": 0, "reserved": 0, "maxlen": 0, "preemptions": 0}
        self._thread = threading.Thread(target=self._loop, name="course-engine", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------------------- public API
    def submit(
        self, prompt_ids, params: SamplingParams | None = None, on_token: Callable[[TokenEvent], None] | None = None
    ) -> RequestHandle:
        """Queue a request; it joins the running batch at the next iteration with free room. Thread-safe."""
        params = SamplingParams() if params is None else params
        if not isinstance(params, SamplingParams):
            raise TypeError(f"params must be SamplingParams, got {type(params).__name__}")
        if isinstance(prompt_ids, (str, bytes)) or not hasattr(prompt_ids, "__iter__"):
            raise TypeError(f"prompt_ids must be a list of token ids, got {type(prompt_ids).__name__}")
        prompt = [int(t) for t in prompt_ids]
        if not prompt:
            raise ValueError("prompt_ids must hold at least one token")
        if min(prompt) < 0 or max(prompt) >= self.vocab_size:
            raise ValueError(f"prompt_ids must lie in [0, vocab_size={self.vocab_size})")
        params.check_vocab(self.vocab_size)
        need = len(prompt) + params.max_tokens
        if need > self.max_seq_len:
            raise ValueError(
                f"prompt ({len(prompt)} tokens) + max_tokens ({params.max_tokens}) exceeds the "
                f"context of {self.max_seq_len}"
            )
        if math.ceil(need / self.block_size) > self.allocator.num_blocks:
            raise ValueError(
                f"prompt + max_tokens needs {math.ceil(need / self.block_size)} blocks, the cache "
                f"has {self.allocator.num_blocks}"
            )
        if on_token is not None and not callable(on_token):
            raise TypeError(f"on_token must be callable or None, got {type(on_token).__name__}")
        gen = None if params.seed is None else torch.Generator().manual_seed(params.seed)
        with self._cond:
            if self._closed:
                raise RuntimeError("the engine is closed")
            seq = _Seq(
                RequestHandle(next(self._ids)),
                prompt,
                params,
                on_token,
                gen,
                submitted_at=time.perf_counter(),
                submitted_cpu=self.cpu_seconds,
                submitted_step=self._totals["steps"],
            )
            self._waiting.append(seq)
            self._cond.notify_all()
        return seq.handle

    def cancel(self, handle: RequestHandle) -> bool:
        """Stop a request. Thread-safe, and it never touches the engine's state under a running step: a queued
        request (or any, while the engine is between steps) is retired at once; a running one is marked and
        retired at the end of the current step (the engine's own thread frees its slot and KV blocks, then
        ``handle.result()`` returns with ``finish_reason == "cancelled"``). ``False`` if it had already finished."""
        if not isinstance(handle, RequestHandle):
            raise TypeError(f"handle must be a RequestHandle from submit(), got {type(handle).__name__}")
        with self._cond:
            seq = next((s for s in itertools.chain(self._waiting, self._running) if s.handle is handle), None)
            if seq is None or handle.done() or seq in self._cancels:
                return False
            if seq in self._waiting:
                self._waiting.remove(seq)  # never admitted: it holds no blocks
            seq.finish = "cancelled"  # a step in flight skips it (read under the lock in _emit)
            if self._stepping and seq in self._running:
                self._cancels.append(seq)  # its blocks may be in the forward pass: freed at the step's end
            else:
                self._retire(seq)
            self._cond.notify_all()
        return True

    def stats(self) -> dict:
        """Running/waiting requests, blocks used/free, KV bytes reserved (blocks) vs used (tokens) now and over time.

        ``kv_waste`` = 1 − used/reserved summed over every decode step so far (the block cache's internal
        fragmentation); ``kv_waste_maxlen`` is the same for a per-request reservation of prompt + max_tokens.
        ``steps`` counts forward passes (each gives every running sequence its next token), ``prefills`` the passes
        that carried prompt tokens.
        """
        with self._cond:
            used = sum(s.cached for s in self._running)
            blocks = self.allocator.num_blocks - self.allocator.free
            t = self._totals
            return {
                "running": len(self._running),
                "waiting": len(self._waiting),
                "blocks_used": blocks,
                "blocks_free": self.allocator.free,
                "block_size": self.block_size,
                "kv_bytes_reserved": blocks * self.block_size * self.bytes_per_token,
                "kv_bytes_used": used * self.bytes_per_token,
                "steps": t["steps"],
                "prefills": t["prefills"],
                "tokens_generated": t["tokens"],
                "preemptions": t["preemptions"],
                "kv_waste": 1 - t["used"] / t["reserved"] if t["reserved"] else 0.0,
                "kv_waste_maxlen": 1 - t["used"] / t["maxlen"] if t["maxlen"] else 0.0,
            }

    @contextlib.contextmanager
    def hold(self):
        """``with engine.hold():`` — requests submitted inside are queued and start together when the block ends
        (a burst that arrives at one instant, reproducibly; the loop finishes its current step first)."""
        with self._cond:
            self._held = True
        try:
            yield self
        finally:
            with self._cond:
                self._held = False
                self._cond.notify_all()

    @property
    def cpu_seconds(self) -> float:
        """CPU time the engine's loop has spent computing so far (``time.thread_time`` of its thread).

        A clock that only runs while the engine works: on a shared machine other processes slow the wall clock's
        numbers down, not these (torch runs this thread's operations in the thread itself with one intra-op
        thread, as the course sets it).
        """
        start = self._iter_start
        if start is not None and threading.current_thread() is self._thread:
            return self._cpu + time.thread_time() - start
        return self._cpu

    def close(self, timeout: float = 10.0) -> None:
        """Stop the loop; requests still queued or running finish as ``"cancelled"`` (the running ones when the
        current step ends)."""
        with self._cond:
            self._closed = True
            for seq in list(self._waiting):
                seq.finish = "cancelled"
                self._retire(seq)
            self._waiting.clear()
            if not self._stepping:
                self._retire_running()
            self._cond.notify_all()
        self._thread.join(timeout)

    def _retire_running(self) -> None:
        for seq in list(self._running):
            seq.finish = seq.finish or "cancelled"
            self._retire(seq)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------- the loop
    def _loop(self) -> None:
        while True:
            with self._cond:
                self._stepping = False  # a step boundary: what cancel() queued meanwhile is applied here
                for seq in self._cancels:
                    self._retire(seq)
                self._cancels.clear()
                while not self._closed and (self._held or not self._waiting and not self._running):
                    self._cond.wait()
                if self._closed:
                    self._retire_running()
                    return
                if self._gathering():
                    continue
                self._admit()
                batch = [s for s in self._running if s.finish is None]
                if self.policy == "static":  # finished rows still take their turn in the forward pass
                    for s in self._running:
                        if s.finish is not None and s.cached < self.max_seq_len:
                            s.pad = s.cached + 1 - len(s.prompt) - len(s.generated)
                            batch.append(s)
                self._stepping = True  # from here to the next boundary only this thread touches the batch
            self._iter_start = time.thread_time()
            try:
                self._iteration(batch)
            except BaseException as err:  # a bug or bad model: fail these requests, keep serving others
                with self._cond:
                    for seq in batch:
                        if not seq.handle.done():
                            seq.handle._error = err
                            seq.finish = "cancelled"
                            self._retire(seq, error=True)
            finally:
                self._cpu += time.thread_time() - self._iter_start
                self._iter_start = None

    def _gathering(self) -> bool:
        """Static policy: wait (up to ``max_wait_ms`` after the oldest arrival) for a full batch before starting."""
        if self.policy != "static" or self._running:
            return False
        left = gather_wait_s(
            len(self._waiting), self.max_batch, self._waiting[0].submitted_at, self.max_wait_s, time.perf_counter()
        )
        if left <= 0:
            return False
        self._cond.wait(left)
        return True

    def _admit(self) -> None:
        """Move waiting requests into the batch while a slot and the blocks for their pending tokens are free."""
        if self.policy == "static" and self._running:
            return  # static batching: nobody joins a batch in flight
        while self._waiting and len(self._running) < self.max_batch:
            seq = self._waiting[0]
            blocks = self.allocator.allocate(math.ceil((len(seq.tokens) + 1) / self.block_size))
            if blocks is None:
                break
            self._waiting.popleft()
            seq.blocks, seq.cached = blocks, 0
            used = {s.slot for s in self._running}
            seq.slot = min(i for i in range(self.max_batch) if i not in used)
            self._running.append(seq)

    def _iteration(self, batch: list[_Seq]) -> None:
        """One forward pass: every running sequence's next token and the newcomers' prompt tokens, packed together."""
        chunks = self._chunks(batch)
        batch = [s for s in batch if chunks[id(s)]]
        if any(chunks[id(s)] > 1 for s in batch):
            self._totals["prefills"] += 1
        if batch:
            with self._cond:
                self._totals["steps"] += 1  # before the pass: a request finishing in it counts it
            self._step(batch, chunks)
            with self._cond:
                self._account()
            if self.record:
                self.timeline.append(self._slots())
        if self.policy == "static":
            with self._cond:
                if self._running and all(s.finish for s in self._running):
                    for seq in list(self._running):
                        self._retire(seq)

    def _chunks(self, batch: list[_Seq]) -> dict[int, int]:
        """Tokens each sequence feeds this step: 1 for a decoding one; prompts share ``max_step_tokens``, in order.

        Chunked prefill (Sarathi, vLLM): a prompt longer than what is left of the budget is fed in pieces over
        several steps, so one long prompt never stalls the running sequences' next tokens for a long pass.
        """
        budget = self.max_step_tokens
        chunks = {}
        for s in batch:
            n = len(s.pending)
            chunks[id(s)] = 1 if n == 1 else min(n, budget)
            budget -= chunks[id(s)] if n > 1 else 0
        return chunks

    def _slots(self) -> tuple:
        row = [None] * self.max_batch
        with self._cond:
            for s in self._running:
                if s.finish is None:
                    row[s.slot] = s.handle.request_id
        return tuple(row)

    def _account(self) -> None:
        """Add this step's KV usage to the totals behind ``stats()['kv_waste']``."""
        t = self._totals
        for s in self._running:
            t["used"] += s.cached
            t["reserved"] += len(s.blocks) * self.block_size
            t["maxlen"] += len(s.prompt) + s.params.max_tokens

    def _grow(self, seqs: list[_Seq]) -> list[_Seq]:
        """Give every sequence the blocks its pending tokens need, preempting the newest ones if the pool is dry."""
        with self._cond:
            for seq in list(seqs):
                if seq not in self._running:  # cancelled, or preempted while growing the other group
                    seqs.remove(seq)
                    continue
                need = math.ceil((seq.cached + len(seq.pending)) / self.block_size) - len(seq.blocks)
                while need > 0:
                    got = self.allocator.allocate(need)
                    if got is not None:
                        seq.blocks += got
                        break
                    candidates = [s for s in self._running if s.finish is None]
                    if not candidates:
                        raise RuntimeError("the KV cache is full of finished rows (static policy): raise num_blocks")
                    victim = max(candidates, key=lambda s: s.handle.request_id)
                    self._preempt(victim)
                    if victim is seq or victim in seqs:
                        seqs.remove(victim)
                    if victim is seq:
                        break
            return seqs

    def _preempt(self, seq: _Seq) -> None:
        self._running.remove(seq)
        self.allocator.release(seq.blocks)
        seq.blocks, seq.cached, seq.slot = [], 0, None
        seq.preemptions += 1
        self._totals["preemptions"] += 1
        self._waiting.appendleft(seq)  # first in line: it recomputes its cache when memory frees up

    @torch.no_grad()
    def _step(self, seqs: list[_Seq], chunks: dict[int, int]) -> None:
        """One forward pass over ``seqs``, each feeding its next ``chunks[id(seq)]`` pending tokens."""
        seqs = self._grow(list(seqs))
        if not seqs:
            return
        seqs.sort(key=lambda s: chunks[id(s)] > 1)  # decoding sequences first: one attention group (see _packed)
        sizes = [chunks[id(s)] for s in seqs]
        inputs = self._packed(seqs, sizes) if max(sizes) > 1 else self._rows(seqs)
        idx, caches, mask, last = inputs
        logits, _ = self.model(idx, caches=caches, attn_mask=mask)  # each cache attends for its layer (see paged)
        rows = logits.flatten(0, 1)[last]
        # a sequence samples once its last pending token went in (a prompt chunked over steps waits for its end)
        live = [r for r, (s, n) in enumerate(zip(seqs, sizes)) if s.finish is None and n == len(s.pending)]
        choices = (
            sample_tokens(
                rows[live],
                [seqs[r].generated for r in live],
                [seqs[r].params for r in live],
                [seqs[r].generator for r in live],
                isolate=True,  # one request's failure ends that request, not its batch
            )
            if live
            else []
        )
        for s, n in zip(seqs, sizes):
            s.cached += n
        for row, choice in zip(live, choices):
            if isinstance(choice, Exception):
                self._fail(seqs[row], choice)
            else:
                self._emit(seqs[row], choice)

    def _rows(self, seqs: list[_Seq]):
        """Decode only: one row per sequence, one token each; every row reads keys 0 … L−1 (its own, then masked)."""
        B, bs = len(seqs), self.block_size
        L = max(s.cached for s in seqs) + 1
        idx = torch.tensor([[s.pending[0]] for s in seqs])
        positions = torch.tensor([[s.cached] for s in seqs])
        tables = torch.zeros(B, max(math.ceil(L / bs), max(len(s.blocks) for s in seqs)), dtype=torch.long)
        for row, s in enumerate(seqs):
            tables[row, : len(s.blocks)] = torch.tensor(s.blocks)
        write = tables.gather(1, positions // bs) * bs + positions % bs
        j = torch.arange(L)
        read = tables[:, j // bs] * bs + j % bs  # [B, L]: past a row's end this reads padding or scratch, masked
        caches = [PagedKVCache(k, v, write, read, positions=positions) for k, v in self._pools]
        return idx, caches, None, torch.arange(B)

    def _packed(self, seqs: list[_Seq], sizes: list[int]):
        """Prompts and decode tokens in ONE row, no padding (selective batching, Orca; vLLM's packed batches).

        Row layout: sequence 0's new tokens, then sequence 1's, … Each sequence reads its own keys (its cached
        positions and its new ones, through its block table), concatenated the same way; ``attn_mask`` lets a
        query see only keys of its own sequence, and the keys' positions (``key_positions``) make it causal.
        The linear layers see every token at once; attention runs per group (selective batching), so a prompt's
        queries are not scored against the other sequences' keys only to be masked.
        """
        bs = self.block_size
        keys = [torch.arange(s.cached + n) for s, n in zip(seqs, sizes)]  # positions a sequence reads
        slots = [torch.tensor(s.blocks)[k // bs] * bs + k % bs for s, k in zip(seqs, keys)]  # via its block table
        idx = torch.tensor([t for s, n in zip(seqs, sizes) for t in s.pending[:n]])[None]
        write = torch.cat([sl[s.cached :] for s, sl in zip(seqs, slots)])[None]  # the new positions' slots
        read = torch.cat(slots)[None]
        owner, q_sizes, k_sizes = torch.arange(len(seqs)), torch.tensor(sizes), torch.tensor([len(k) for k in keys])
        q_seq, k_seq = owner.repeat_interleave(q_sizes), owner.repeat_interleave(k_sizes)
        mask = (q_seq[:, None] == k_seq[None, :])[None, None]  # [1, 1, N, L_total]
        key_positions = torch.cat(keys)[None]
        # attention groups: the decoding sequences (the first ones) together, then each prompt alone
        q_end, k_end = q_sizes.cumsum(0).tolist(), k_sizes.cumsum(0).tolist()
        decoding = sum(n == 1 for n in sizes)
        cuts = ([decoding - 1] if decoding else []) + list(range(decoding, len(seqs)))
        groups, qa, ka = [], 0, 0
        for c in cuts:
            groups.append((qa, q_end[c], ka, k_end[c]))
            qa, ka = q_end[c], k_end[c]
        positions = torch.cat([k[s.cached :] for s, k in zip(seqs, keys)])[None]
        caches = [PagedKVCache(k, v, write, read, key_positions, groups, positions=positions) for k, v in self._pools]
        last = torch.tensor(q_end) - 1  # each sequence's last new token
        return idx, caches, mask, last

    def _emit(self, seq: _Seq, choice: TokenChoice) -> None:
        """Record the sampled token, tell ``on_token``, and retire the sequence if it is done."""
        with self._cond:
            if seq.handle.done() or seq.finish is not None:  # cancelled while the forward pass ran
                return
            seq.first_token_at = seq.first_token_at or time.perf_counter()
            self._totals["tokens"] += 1
            index = len(seq.generated)
            if choice.token_id in seq.params.stop_token_ids:
                seq.finish, seq.stop_token = "stop", True
                event = TokenEvent(seq.handle.request_id, index, None, None, [], "stop")
            else:
                seq.generated.append(choice.token_id)
                seq.logprobs.append(choice.logprob)
                seq.tops.append(choice.top_logprobs)
                if len(seq.generated) >= seq.params.max_tokens:
                    seq.finish = "length"
                event = TokenEvent(
                    seq.handle.request_id, index, choice.token_id, choice.logprob, choice.top_logprobs, seq.finish
                )
        if seq.on_token is not None:
            try:
                seq.on_token(event)  # outside the lock: a callback may call cancel() or submit()
            except Exception as err:  # a broken callback ends its own request, not the engine
                with self._cond:
                    seq.handle._error = err
                    seq.finish = seq.finish or "cancelled"
                    self._retire(seq, error=True)
                return
        if seq.finish is not None and self.policy == "continuous":
            with self._cond:
                self._retire(seq)

    def _fail(self, seq: _Seq, err: BaseException) -> None:
        """End ``seq`` alone with ``err`` (``handle.result()`` raises it); its ``on_token`` hears ``"error"``."""
        with self._cond:
            if seq.handle.done():
                return
            seq.handle._error = err
            seq.finish = "error"
            self._retire(seq, error=True)
        if seq.on_token is not None:
            with contextlib.suppress(Exception):  # the request already failed: a broken callback adds nothing
                seq.on_token(TokenEvent(seq.handle.request_id, len(seq.generated), None, None, [], "error"))

    def _retire(self, seq: _Seq, *, error: bool = False) -> None:
        """Finish ``seq``: free its blocks and slot now, deliver its result (caller holds the lock)."""
        if seq in self._running:
            self._running.remove(seq)
        self.allocator.release(seq.blocks)
        seq.blocks, seq.slot = [], None
        if seq.handle.done():
            return
        if not error:
            seq.handle._result = EngineResult(
                seq.handle.request_id,
                list(seq.generated),
                list(seq.logprobs),
                list(seq.tops),
                seq.finish,
                len(seq.prompt),
                len(seq.generated) + seq.stop_token,
                seq.submitted_at,
                seq.first_token_at,
                time.perf_counter(),
                seq.preemptions,
                seq.submitted_cpu,
                self.cpu_seconds,
                seq.submitted_step,
                self._totals["steps"],
            )
        seq.handle._done.set()
        self._cond.notify_all()


def run_clients(
    engine: Engine, jobs: list[tuple[list[int], SamplingParams]], n_clients: int | None, timeout: float = 600.0
) -> dict:
    """Send ``jobs`` ``(prompt_ids, params)`` from ``n_clients`` threads, each one request at a time (job ``i`` goes
    to client ``i % n_clients``); ``n_clients=None``: all jobs arrive at once, in order (:meth:`Engine.hold`).

    Returns ``tokens_per_s``, ``p50_s``/``p95_s`` latency (submit → result delivered) and ``wall_s`` on the wall
    clock; the same on the engine's CPU clock (``tokens_per_cpu_s``, ``p50_cpu_s``, ``p95_cpu_s``, ``cpu_s``:
    :attr:`Engine.cpu_seconds`, steady on a machine shared with other work); latency in forward passes
    (``p50_steps``, ``p95_steps``: the same on every machine, blind to what a pass costs); ``tokens``, the engine's
    ``stats()`` and the results in job order."""

    if n_clients is not None and (isinstance(n_clients, bool) or not isinstance(n_clients, int) or n_clients < 1):
        raise ValueError(f"n_clients must be a positive int or None (a burst), got {n_clients!r}")
    if not jobs:
        raise ValueError("jobs must hold at least one (prompt_ids, params) pair")
    results: list[EngineResult | None] = [None] * len(jobs)
    barrier = threading.Barrier(n_clients or 1)

    def client(c: int) -> None:
        barrier.wait(timeout)
        for i in range(c, len(jobs), n_clients):
            results[i] = engine.submit(*jobs[i]).result(timeout)

    start, cpu_start = time.perf_counter(), engine.cpu_seconds
    if n_clients is None:
        with engine.hold():
            handles = [engine.submit(*job) for job in jobs]
        results = [h.result(timeout) for h in handles]
    else:
        threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(n_clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout)
    wall, cpu = time.perf_counter() - start, engine.cpu_seconds - cpu_start
    if any(r is None for r in results):
        raise RuntimeError("some requests did not finish (see the engine's errors)")
    latencies = [r.finished_at - r.submitted_at for r in results]
    cpu_latencies = [r.finished_cpu - r.submitted_cpu for r in results]
    step_latencies = [r.finished_step - r.submitted_step for r in results]
    tokens = sum(r.completion_tokens for r in results)
    return {
        "tokens_per_s": tokens / wall,
        "p50_s": percentile(latencies, 50),
        "p95_s": percentile(latencies, 95),
        "wall_s": wall,
        "tokens_per_cpu_s": tokens / cpu,
        "p50_cpu_s": percentile(cpu_latencies, 50),
        "p95_cpu_s": percentile(cpu_latencies, 95),
        "cpu_s": cpu,
        "p50_steps": percentile(step_latencies, 50),
        "p95_steps": percentile(step_latencies, 95),
        "tokens": tokens,
        "stats": engine.stats(),
        "results": results,
    }
