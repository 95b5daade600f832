"""What the server runs: generation backends over the course's models, and the embedding model.

- :class:`GPTBackend` — generation for a batch of prompts of different lengths: prompts are **left**-padded, a
  padding mask hides the pads, and each decode step is one forward pass over the whole batch with a KV cache.
  RoPE only sees relative positions, so a left-padded row computes the same tokens as the row alone.
- :class:`EchoBackend` — model-free, for measuring the serving machinery alone.
- :class:`EmbeddingBackend` — chapter 6's all-MiniLM-L6-v2 (384-dim, unit-length vectors), loaded on first use.
- :func:`load_backend` — a backend by name (``tiny-gpt``, ``course-chat``) or from a checkpoint.

``on_token(row, token_id, logprob, top)`` is called as tokens appear (``top``: ``{id: logprob}`` or None); when it
returns ``False`` the row is cancelled (its client went away) and decoding stops for it.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoints import load_checkpoint
from ..data import corpus_tokenizer
from ..model import GPT, GPTConfig
from ..rag import DEFAULT_MODEL, embed, load_model
from ..validate import check_int
from .models import SERVED_MODELS, AsciiTokenizer, load_served_model
from .sampling import DEFAULT_MAX_TOKENS, SamplingParams, sample_token

log = logging.getLogger("course_utils.serving")


class ByteTokenizer:
    """UTF-8 bytes as tokens (ids 0–255): the simplest tokenizer a byte-level model can serve."""

    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(int(i) % 256 for i in ids).decode("utf-8", errors="replace")


class GenRequest:
    """One generation job: token ids in, up to ``sampling.max_tokens`` ids out, sampled with ``sampling``
    (a :class:`~course_utils.sampling.SamplingParams`, the one place a request's settings live).

    ``GenRequest(ids, sampling=params)``; the short form ``GenRequest(ids, max_tokens, temperature, top_p, seed,
    **other_sampling_fields)`` builds the params (greedy by default). Every field of the params reads through:
    ``req.max_tokens``, ``req.seed``, … (read-only).
    """

    __slots__ = ("prompt_ids", "sampling")

    def __init__(
        self,
        prompt_ids,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        temperature: float = 0.0,
        top_p: float | None = None,
        seed: int | None = None,
        *,
        sampling: SamplingParams | None = None,
        **fields,
    ):
        if sampling is None:
            if "top_logprobs" in fields:  # the older name of `logprobs` (0 meant none)
                fields["logprobs"] = fields.pop("top_logprobs") or None
            top_p = 1.0 if top_p is None else top_p
            sampling = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed, **fields)
        elif not isinstance(sampling, SamplingParams):
            raise TypeError(f"sampling must be SamplingParams, got {type(sampling).__name__}")
        elif fields or (max_tokens, temperature, top_p, seed) != (DEFAULT_MAX_TOKENS, 0.0, None, None):
            raise TypeError("pass either sampling=SamplingParams(...) or the sampling fields, not both")
        object.__setattr__(self, "prompt_ids", list(prompt_ids))
        object.__setattr__(self, "sampling", sampling)

    def __getattr__(self, name):  # only reached for names that are not slots: the sampling fields
        if name in _SAMPLING_FIELDS:
            return getattr(self.sampling, name)
        raise AttributeError(f"GenRequest has no attribute {name!r}")

    def __setattr__(self, name, value):
        raise AttributeError("GenRequest is read-only: build a new one (sampling.replace(...) for other settings)")

    @property
    def top_logprobs(self) -> int:
        """Alternatives reported per token (0 when none)."""
        return self.sampling.logprobs or 0

    def __eq__(self, other) -> bool:
        return isinstance(other, GenRequest) and (self.prompt_ids, self.sampling) == (other.prompt_ids, other.sampling)

    __hash__ = None

    def __reduce__(self):  # copy and pickle rebuild through __init__ (setting attributes is refused)
        return (functools.partial(GenRequest, sampling=self.sampling), (list(self.prompt_ids),))

    def __repr__(self) -> str:
        return f"GenRequest({len(self.prompt_ids)} prompt tokens, {self.sampling!r})"


_SAMPLING_FIELDS = frozenset(f.name for f in dataclasses.fields(SamplingParams))


@dataclass
class Generation:
    """What a backend returns per request: the new ids, their log-probabilities and the decoded text."""

    token_ids: list[int]
    logprobs: list[float]
    text: str
    prompt_tokens: int
    finish_reason: str = "length"
    top_logprobs: list[dict[int, float]] | None = None

    @property
    def mean_logprob(self) -> float:
        """Average log-probability per generated token: the model's confidence (used by the cascade)."""
        return sum(self.logprobs) / len(self.logprobs) if self.logprobs else 0.0


class OneRequest:
    """``generate`` for a backend that has ``tokenizer`` and ``generate_batch``: one request through the batch path."""

    def generate(
        self,
        prompt,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        temperature: float = 0.0,
        seed: int | None = None,
        top_p: float | None = None,
    ) -> Generation:
        """One request, unbatched: ``prompt`` is text or a list of token ids; an error result is raised."""
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        return raise_if_error(self.generate_batch([GenRequest(ids, max_tokens, temperature, top_p, seed)])[0])


def raise_if_error(result):
    if isinstance(result, BaseException):
        raise result
    return result


def check_requests(reqs, max_context: int) -> None:
    if not isinstance(reqs, (list, tuple)) or not reqs:
        raise ValueError("reqs must be a non-empty list of GenRequest")
    for r in reqs:
        if not isinstance(r, GenRequest):
            raise TypeError(f"reqs must hold GenRequest objects, got {type(r).__name__}")
        if not r.prompt_ids:
            raise ValueError("prompt_ids must hold at least one token")
        if len(r.prompt_ids) + r.max_tokens > max_context:
            raise ValueError(
                f"prompt ({len(r.prompt_ids)} tokens) + max_tokens ({r.max_tokens}) exceeds the "
                f"context of {max_context}"
            )


class GPTBackend(OneRequest):
    """Serve a course :class:`~course_utils.model.GPT` (or any model with the same blocks) with batched decoding."""

    def __init__(self, model, tokenizer=None, *, name: str = "tiny-gpt"):
        config = getattr(model, "config", None)
        if config is None or not hasattr(model, "blocks") or not hasattr(model, "new_caches"):
            raise TypeError(
                f"model must be a course_utils.model.GPT (config, blocks, new_caches), got {type(model).__name__}"
            )
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty str, got {name!r}")
        self.model = model.eval()
        self.tokenizer = tokenizer if tokenizer is not None else ByteTokenizer()
        vocab = getattr(self.tokenizer, "vocab_size", None)
        if vocab is not None and vocab > config.vocab_size:
            raise ValueError(f"the tokenizer has {vocab} ids but the model only {config.vocab_size}")
        self.name = name
        self.max_context = int(config.max_seq_len)
        self._lock = threading.Lock()  # one forward pass at a time: the weights are shared, torch uses all cores

    def _forward(self, idx: torch.Tensor, caches, attn_mask):
        """The model's own forward pass with a padding mask: logits ``[B, T, V]``."""
        logits, _ = self.model(idx, caches=caches, attn_mask=attn_mask)
        return logits

    @torch.no_grad()
    def prompt_logprobs(self, ids: list[int], top: int = 0) -> list[tuple[int, float | None, dict | None]]:
        """``(token, logprob, alternatives)`` for every prompt token, from one forward pass over the prompt.

        Token ``i``'s log-probability is the model's given tokens ``0 … i−1`` (the logits at position ``i − 1``),
        so the first token has none (``None``, as OpenAI's ``echo`` answers). ``top`` > 0 adds the ``top`` most
        likely tokens at each position ``{id: logprob}``; the first token's alternatives are ``None`` too.
        """
        check_int("top", top, 0)
        if not ids:
            raise ValueError("ids must hold at least one token")
        with self._lock:
            logp = torch.log_softmax(self._forward(torch.tensor([list(ids)]), None, None)[0].float(), dim=-1)
        picked = logp[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0].tolist()
        alts = [None] * (len(ids) - 1)
        if top:
            values, idx = torch.topk(logp[:-1], min(top, logp.shape[-1]), dim=-1)
            alts = [dict(zip(i, v)) for i, v in zip(idx.tolist(), values.tolist())]
        return [(ids[0], None, None)] + list(zip(ids[1:], picked, alts))

    @torch.no_grad()
    def generate_batch(self, reqs: list[GenRequest], on_token: Callable | None = None) -> list:
        """Generate for every request in one batch; ``on_token(row, id, logprob, top)`` is called as tokens appear.
        A request whose sampling fails gets its exception in its place in the result list; the others go on."""
        check_requests(reqs, self.max_context)
        longest = max(len(r.prompt_ids) for r in reqs)
        steps = max(r.max_tokens for r in reqs)
        if len(reqs) > 1 and longest + steps > self.max_context:
            # A long prompt and a long answer do not fit one padded batch: split it (rows keep their order).
            half = len(reqs) // 2
            shift = (lambda row, *a: on_token(row + half, *a)) if on_token else None  # noqa: E731
            return self.generate_batch(reqs[:half], on_token) + self.generate_batch(reqs[half:], shift)
        with self._lock:
            return self._generate(reqs, longest, steps, on_token)

    def _prefill(self, reqs, T):
        B = len(reqs)
        pads = torch.tensor([T - len(r.prompt_ids) for r in reqs])
        idx = torch.zeros(B, T, dtype=torch.long)
        for b, r in enumerate(reqs):
            idx[b, int(pads[b]) :] = torch.tensor(r.prompt_ids, dtype=torch.long)
        valid = torch.arange(T)[None, :] >= pads[:, None]  # [B, T] True on real tokens
        padded = bool(pads.any())
        # A pad query may attend to itself, so no softmax row is empty (an empty row gives NaN, and NaN values
        # in the cache would leak into real rows through 0 · NaN).
        mask = (valid[:, None, None, :] | torch.eye(T, dtype=torch.bool)[None, None]) if padded else None
        caches = self.model.new_caches()
        return self._forward(idx, caches, mask)[:, -1], caches, valid, padded

    def _generate(self, reqs, T, steps, on_token):
        logits, caches, valid, padded = self._prefill(reqs, T)
        rows = [_Row(r) for r in reqs]
        for _ in range(steps):
            nxt = [row.step(b, logits[b], on_token) for b, row in enumerate(rows)]
            if all(row.finish is not None for row in rows):
                break
            valid = torch.cat([valid, torch.ones(len(reqs), 1, dtype=torch.bool)], dim=1)
            step_mask = valid[:, None, None, :] if padded else None
            logits = self._forward(torch.tensor(nxt)[:, None], caches, step_mask)[:, -1]
        return [row.result(self.tokenizer) for row in rows]


class _Row:
    """One request's decoding state inside a static batch."""

    def __init__(self, req: GenRequest):
        self.req, self.params = req, req.sampling
        self.out, self.lps, self.tops, self.finish, self.error = [], [], [], None, None
        self.gen = None if req.seed is None else torch.Generator().manual_seed(req.seed)

    def step(self, b, logits, on_token) -> int:
        if self.finish is not None:
            return 0  # a finished row rides along until the longest one is done (static batching's waste)
        try:
            choice = sample_token(logits, self.out, self.params, self.gen)
        except Exception as err:  # this request fails alone (a server error, not the client's); the batch goes on
            self.error, self.finish = RuntimeError(f"sampling failed for this request: {err}"), "error"
            self.error.__cause__ = err
            return 0
        top = dict(choice.top_logprobs) if self.params.logprobs else None
        self.out.append(choice.token_id)
        self.lps.append(choice.logprob)
        self.tops.append(top)
        if on_token is not None and on_token(b, choice.token_id, choice.logprob, top) is False:
            self.finish = "cancelled"  # nobody waits for this row any more: stop computing it
        elif choice.token_id in self.params.stop_token_ids:
            self.finish = "stop"
        elif len(self.out) >= self.params.max_tokens:
            self.finish = "length"
        return choice.token_id

    def result(self, tokenizer) -> Generation | Exception:
        if self.error is not None:
            return self.error
        tops = self.tops if self.params.logprobs else None
        return Generation(
            self.out, self.lps, tokenizer.decode(self.out), len(self.req.prompt_ids), self.finish or "length", tops
        )


class EchoBackend(OneRequest):
    """A model-free backend that answers every prompt with its first ``max_tokens`` bytes: for measuring the
    serving machinery (retries, limits, caches) without paying for a forward pass."""

    def __init__(self, name: str = "echo", max_context: int = 1024):
        self.name, self.max_context, self.tokenizer = name, max_context, ByteTokenizer()

    def generate_batch(self, reqs: list[GenRequest], on_token=None) -> list:
        check_requests(reqs, self.max_context)  # max_tokens=-3 used to answer '' instead of saying why
        out = []
        for row, r in enumerate(reqs):
            ids = (list(r.prompt_ids) * r.max_tokens)[: r.max_tokens]
            for i, tok in enumerate(ids):
                if on_token is not None and on_token(row, tok, 0.0, None) is False:
                    ids = ids[: i + 1]  # cancelled
                    break
            out.append(Generation(ids, [0.0] * len(ids), self.tokenizer.decode(ids), len(r.prompt_ids)))
        return out


class EmbeddingBackend:
    """Chapter 6's sentence embedder (:func:`course_utils.rag.embed`): unit-length vectors, loaded on first use."""

    def __init__(self, name: str | None = None):

        self.name = name or DEFAULT_MODEL
        self.model_name = DEFAULT_MODEL
        self.dimensions = 384

    def embed(self, texts: list[str]) -> tuple[list[list[float]], int]:
        """The vectors and the number of tokens the model read (its own tokenizer, special tokens included)."""

        vecs = embed(texts, self.model_name, cache=False)
        tokens = sum(len(ids) for ids in load_model(self.model_name).tokenizer(texts)["input_ids"])
        return vecs.tolist(), tokens


# ----------------------------------------------------------------------------------------------- loading
def load_backend(
    name: str = "tiny-gpt", checkpoint: str | Path | None = None, *, seed: int = 0, allow_untrained: bool = False
) -> GPTBackend:
    """A backend for the command line: ``checkpoint`` (safetensors + JSON, no pickle), else the course's trained
    model called ``name`` (``tiny-gpt``, ``course-chat``: :data:`course_utils.served_models.SERVED_MODELS`,
    sha256-checked). A seeded untrained GPT over bytes (it answers noise, but every piece of the server works) only
    with ``allow_untrained=True`` and a name that is not a trained model."""

    if checkpoint is not None:
        model = load_checkpoint(checkpoint, warn_unchecked=True)  # its records checked whenever present
        return GPTBackend(model, _tokenizer_for(model.config.vocab_size), name=name)
    if name in SERVED_MODELS:
        model, tokenizer = load_served_model(name)
        return GPTBackend(model, tokenizer, name=name)
    if not allow_untrained:
        raise FileNotFoundError(
            f"{name!r} is not a trained course model ({', '.join(sorted(SERVED_MODELS))}): pass "
            "--checkpoint PATH, or --untrained to serve noise from a random network"
        )
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=4, max_seq_len=256))
    log.warning("serving an untrained %s (pass --checkpoint to serve trained weights)", name)
    return GPTBackend(model, ByteTokenizer(), name=name)


def _tokenizer_for(vocab_size: int):
    """Bytes for a byte-level model, chapter 7's characters for a 128-id model, else chapter 1's corpus BPE of the
    model's vocabulary size."""

    if vocab_size == AsciiTokenizer.vocab_size:
        return AsciiTokenizer()
    return ByteTokenizer() if vocab_size <= 256 else corpus_tokenizer(vocab_size)
