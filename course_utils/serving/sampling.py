"""Chapter 8: the sampling parameters of an OpenAI-style request and the one function that applies them.

- :class:`SamplingParams` — ``max_tokens``, ``temperature``, ``top_p``, ``top_k``, ``seed``, ``presence_penalty``,
  ``frequency_penalty``, ``logit_bias``, ``logprobs`` (how many top alternatives to report, 0–20, or ``None`` for
  no log-probabilities), ``stop`` strings and ``stop_token_ids``; keyword-only, frozen, validated once when built
  (:class:`SamplingError`, a ``ValueError`` naming the field); every limit is a constant of this module
  (``DEFAULT_MAX_TOKENS``, ``MAX_SEED``, ``MAX_TOP_LOGPROBS``, …).
- :func:`sample_token` — one row of logits + the ids the sequence has generated so far + a ``torch.Generator`` →
  :class:`TokenChoice` ``(token_id, logprob, top_logprobs)``; :func:`sample_tokens` does a batch of rows at once
  (the same result, with plain greedy rows handled in one vectorised step).

The order of operations follows OpenAI's documentation of the parameters:

1. ``logit_bias`` is added to the logits (``-100`` effectively bans a token, ``+100`` effectively forces it);
2. penalties, with ``c[j]`` = how often token ``j`` appears among the tokens *generated so far* (not the prompt)::

       logit[j] -= frequency_penalty * c[j] + presence_penalty * (c[j] > 0)

3. the draw, which is chapter 3's :func:`course_utils.model.sample_next_token` itself (there is one sampler in the
   course): ``temperature == 0`` takes the argmax (greedy; the first id on a tie); otherwise the logits are divided
   by the temperature, ``top_k`` keeps the k most likely tokens, ``top_p`` keeps the smallest set of most likely
   tokens whose probability reaches ``top_p``, and one token is drawn with the request's generator. With no bias
   and no penalties, :func:`sample_token` picks the token ``sample_next_token`` picks from the same logits and
   generator; this module adds only steps 1–2 and the log-probabilities below.

**Which log-probabilities are reported.** ``logprob`` and ``top_logprobs`` come from the model's own distribution,
``log_softmax(logits)`` at temperature 1, *before* bias, penalties, temperature and top-p (vLLM's default,
``logprobs_mode="raw_logprobs"``). So a logprob says how likely the model found the token, whatever sampling
settings picked it: the same text scores the same under greedy and sampled decoding, and a token forced by
``logit_bias`` shows the (low) probability the model gave it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..model import sample_next_token
from ..validate import ArgumentTypeError, check_int, check_number

__all__ = [
    "SamplingParams",
    "SamplingError",
    "TokenChoice",
    "sample_token",
    "sample_tokens",
    "penalized_logits",
    "DEFAULT_MAX_TOKENS",
    "MAX_TOKENS",
    "MAX_TEMPERATURE",
    "MAX_PENALTY",
    "MAX_LOGIT_BIAS",
    "MAX_TOP_LOGPROBS",
    "MAX_SEED",
    "MAX_STOP",
    "MAX_N",
]

# Every limit of a request's sampling settings, in one place (the HTTP schemas in serving.protocol use these too).
DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
MAX_TOKENS = 1 << 20  # a sanity bound; a server's own limit (create_app's max_tokens_limit) is far lower
MAX_TEMPERATURE = 2.0
MAX_PENALTY = 2.0  # presence_penalty, frequency_penalty in [-2, 2]
MAX_LOGIT_BIAS = 100.0  # logit_bias values in [-100, 100]
MAX_TOP_LOGPROBS = 20  # OpenAI's cap on top_logprobs
MAX_SEED = 2**63 - 1
MAX_STOP = 4  # stop strings per request
MAX_N = 8  # choices per prompt: each one is a full generation


class SamplingError(ValueError):
    """An invalid sampling setting; ``field`` names it (a server answers 400 with ``param=field``)."""

    def __init__(self, field_name: str, message: str):
        super().__init__(message)
        self.field = field_name


class _SamplingTypeError(SamplingError, TypeError):
    """A setting of the wrong type: both a TypeError (the library's convention) and a SamplingError."""


# float32's smallest normal number: a top_p below it would round to 0 in the sampler's float32 comparison (which then
# keeps no token); any top_p under the best token's probability (>= 1/vocab) keeps that token alone, so this is exact
_TINY_TOP_P = float(torch.finfo(torch.float32).tiny)


def _field(name: str, check, value, *bounds, param: str | None = None, **options):
    """``check(name, value, ...)`` from :mod:`course_utils.validate` (the one copy of every range check), its
    error re-raised as a :class:`SamplingError` whose ``field`` is ``param`` or ``name`` (the server's 400)."""
    try:
        return check(name, value, *bounds, **options)
    except ArgumentTypeError as err:
        raise _SamplingTypeError(param or name, str(err)) from None
    except ValueError as err:
        raise SamplingError(param or name, str(err)) from None


def _token_ids(name: str, ids) -> tuple[int, ...]:
    if isinstance(ids, (str, bytes)) or not isinstance(ids, (list, tuple, set, frozenset)):
        raise _SamplingTypeError(name, f"{name} must be a list of token ids, got {type(ids).__name__}")
    return tuple(_field(name, check_int, t, 0) for t in ids)


@dataclass(frozen=True, kw_only=True)
class SamplingParams:
    """How one sequence is sampled (OpenAI's names and ranges; ``top_k`` as vLLM's extension). Frozen: an engine
    may share it across threads. Keyword-only: a new field can be added anywhere without shifting the others.

    Validated once, here, when it is built (a :class:`SamplingError` naming the field). A server builds it from a
    request with ``request.to_sampling_params(...)`` (:mod:`course_utils.serving.protocol`), and keys its cache
    on :meth:`cache_key`, which lists every field: a new field is part of the key without anyone remembering it.
    """

    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: every token (vLLM's extension; OpenAI has none)
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    logprobs: int | None = None  # None: no log-probabilities; k: the chosen token's + the k most likely
    stop: tuple[str, ...] = ()  # stop strings: cut on the decoded text by the server (the engine sees ids only)
    stop_token_ids: tuple[int, ...] = ()

    def __post_init__(self):
        _field("max_tokens", check_int, self.max_tokens, 1, MAX_TOKENS)
        _field("temperature", check_number, self.temperature, 0.0, MAX_TEMPERATURE)
        _field("top_p", check_number, self.top_p, 0.0, 1.0, low_open=True)
        _field("top_k", check_int, self.top_k, 0, MAX_TOKENS)
        if self.seed is not None:
            _field("seed", check_int, self.seed, 0, MAX_SEED)
        _field("presence_penalty", check_number, self.presence_penalty, -MAX_PENALTY, MAX_PENALTY)
        _field("frequency_penalty", check_number, self.frequency_penalty, -MAX_PENALTY, MAX_PENALTY)
        if not isinstance(self.logit_bias, dict):
            raise _SamplingTypeError(
                "logit_bias", f"logit_bias must be a dict {{token_id: bias}}, got {type(self.logit_bias).__name__}"
            )
        bias = {}
        for key, value in self.logit_bias.items():
            # JSON object keys are strings: "42" is token 42, as in OpenAI's API
            tok = int(key) if isinstance(key, str) and key.isdigit() else key
            tok = _field("logit_bias keys (token ids)", check_int, tok, 0, param="logit_bias")
            bias[tok] = _field(f"logit_bias[{key!r}]", check_number, value, -MAX_LOGIT_BIAS, MAX_LOGIT_BIAS)
        object.__setattr__(self, "logit_bias", bias)
        if self.logprobs is not None:
            _field("logprobs", check_int, self.logprobs, 0, MAX_TOP_LOGPROBS)
        stop = (self.stop,) if isinstance(self.stop, str) else self.stop
        if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) and s for s in stop):
            raise _SamplingTypeError("stop", f"stop must be a list of non-empty strings, got {self.stop!r:.80}")
        if len(stop) > MAX_STOP:
            raise SamplingError("stop", f"stop holds {len(stop)} strings; at most {MAX_STOP} are allowed")
        object.__setattr__(self, "stop", tuple(stop))
        object.__setattr__(self, "stop_token_ids", _token_ids("stop_token_ids", self.stop_token_ids))

    def check_vocab(self, vocab_size: int) -> None:
        """Raise :class:`SamplingError` if ``logit_bias`` or ``stop_token_ids`` name an id outside the vocabulary."""
        for name, ids in (("logit_bias", self.logit_bias), ("stop_token_ids", self.stop_token_ids)):
            bad = [t for t in ids if t >= vocab_size]
            if bad:
                raise SamplingError(name, f"{name} holds token id {max(bad)}, outside the vocabulary [0, {vocab_size})")

    def replace(self, **changes) -> SamplingParams:
        """A copy with ``changes`` (validated again), e.g. ``params.replace(seed=params.seed + j)`` for choice ``j``."""
        return dataclasses.replace(self, **changes)

    def cache_key(self) -> tuple:
        """Every field as a hashable, order-independent tuple ``((name, value), ...)``: what a response cache keys
        on besides the prompt, so two requests share an answer only if every setting is equal."""
        return tuple((f.name, _frozen(getattr(self, f.name))) for f in dataclasses.fields(self))

    @property
    def plain_greedy(self) -> bool:
        """Greedy with nothing that changes the logits or asks for alternatives: one argmax, no per-row work."""
        return (
            self.temperature == 0
            and not self.logit_bias
            and not self.presence_penalty
            and not self.frequency_penalty
            and not self.logprobs
        )


def _frozen(value):
    if isinstance(value, dict):
        return tuple(sorted(value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(value)
    return value


class TokenChoice(NamedTuple):
    """The sampled token, its log-probability, and the ``k`` most likely tokens ``[(id, logprob), ...]``."""

    token_id: int
    logprob: float
    top_logprobs: list[tuple[int, float]]


def penalized_logits(logits: torch.Tensor, generated: Sequence[int], params: SamplingParams) -> torch.Tensor:
    """``logits`` [V] + ``logit_bias`` − ``frequency_penalty``·c − ``presence_penalty``·[c > 0] (float32 copy)."""
    out = logits.float().clone()
    V = out.shape[-1]
    if params.logit_bias:
        params.check_vocab(V)
        ids = torch.tensor(list(params.logit_bias), dtype=torch.long)
        out[ids] += torch.tensor(list(params.logit_bias.values()), dtype=out.dtype)
    if generated and (params.frequency_penalty or params.presence_penalty):
        counts = torch.bincount(torch.as_tensor(list(generated), dtype=torch.long), minlength=V)[:V].to(out.dtype)
        out -= params.frequency_penalty * counts + params.presence_penalty * (counts > 0).to(out.dtype)
    return out


def sample_token(
    logits: torch.Tensor, generated: Sequence[int], params: SamplingParams, generator: torch.Generator | None = None
) -> TokenChoice:
    """Pick the next token from one row of ``logits`` [V] for a sequence that has ``generated`` these ids.

    Bias and penalties are applied, then greedy or temperature/top-p sampling with ``generator`` (seeded per
    request, so a seeded request is reproducible whatever else runs in the batch). The reported log-probabilities
    are the model's raw ones (see the module docstring).
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() != 1:
        raise ValueError(f"logits must be a 1-D tensor [vocab], got {getattr(logits, 'shape', type(logits).__name__)}")
    if not isinstance(params, SamplingParams):
        raise TypeError(f"params must be SamplingParams, got {type(params).__name__}")
    token = _draw(penalized_logits(logits, generated, params), params, generator)
    logp = F.log_softmax(logits.float(), dim=-1)
    top: list[tuple[int, float]] = []
    if params.logprobs:
        values, ids = torch.topk(logp, min(params.logprobs, logp.shape[-1]))
        top = [(int(i), float(v)) for i, v in zip(ids, values)]
    return TokenChoice(token, float(logp[token]), top)


def _draw(adjusted: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """Chapter 3's draw (:func:`course_utils.model.sample_next_token`: greedy, or temperature, top-k, top-p and one
    multinomial draw with ``generator``) on ``adjusted`` [V]; the only thing added is that the temperature is
    applied here first, in float64, so that every accepted value is defined: a temperature or top_p too small for
    float32 (1e-46, 1e-300, 5e-324) acts as its limit, the argmax (greedy) and the top-1 token, instead of dividing
    by zero into inf − inf = NaN. For ordinary settings the token is the one ``sample_next_token`` draws from the
    same logits and generator (tests/test_sampling.py checks it)."""
    temperature, scaled = params.temperature, adjusted
    if temperature > 0:
        # the best token at exactly 0 and the others <= 0, divided in float64: x / T is then 0 or a negative number
        # (or -inf), never NaN, so softmax is always defined, and a vanishing T leaves the argmax alone
        scaled, temperature = ((adjusted.double() - adjusted.max()) / temperature).float(), 1.0
    top_p = None if params.top_p >= 1.0 else max(params.top_p, _TINY_TOP_P)
    return int(sample_next_token(scaled[None], temperature, params.top_k or None, top_p, generator)[0])


def sample_tokens(
    logits: torch.Tensor,
    generated: Sequence[Sequence[int]],
    params: Sequence[SamplingParams],
    generators: Sequence[torch.Generator | None],
    *,
    isolate: bool = False,
) -> list[TokenChoice | Exception]:
    """:func:`sample_token` for every row of ``logits`` [B, V]; rows that are plain greedy (no bias, penalties or
    top alternatives) share one vectorised argmax and log-softmax. Equal to calling :func:`sample_token` per row.

    ``isolate=True``: a row whose sampling raises gets its exception in its place and the other rows are sampled
    as if it were not there (an engine then fails that request alone, not its whole batch).
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise ValueError(f"logits must be a 2-D tensor [batch, vocab], got {getattr(logits, 'shape', None)}")
    if not len(generated) == len(params) == len(generators) == logits.shape[0]:
        raise ValueError(
            f"need one generated list, params and generator per row ({logits.shape[0]}), got "
            f"{len(generated)}, {len(params)}, {len(generators)}"
        )
    logp = F.log_softmax(logits.float(), dim=-1)
    best = logp.argmax(dim=-1)  # log_softmax keeps the order, and argmax takes the first of equal values
    picked = logp.gather(1, best[:, None])[:, 0]
    best_l, picked_l = best.tolist(), picked.tolist()
    out: list[TokenChoice | Exception] = []
    for i, (g_ids, p, gen) in enumerate(zip(generated, params, generators)):
        if p.plain_greedy:
            out.append(TokenChoice(best_l[i], picked_l[i], []))
            continue
        try:
            out.append(sample_token(logits[i], g_ids, p, gen))
        except Exception as err:
            if not isolate:
                raise
            out.append(err)
    return out
