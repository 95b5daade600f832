"""Chapter 3: a tiny decoder-only transformer in the style of Llama / Mixtral.

    tokens ─► embedding ─► [ x + attn(RMSNorm(x)) ; x + ffn(RMSNorm(x)) ] × n_layers ─► RMSNorm ─► lm_head ─► logits

- :func:`rms_norm` / :class:`RMSNorm` and :func:`swiglu` / :class:`SwiGLU` come from :mod:`course_utils.layers`
  (re-exported here), shared with the MoE layer.
- rotary position embeddings and grouped-query attention come from :mod:`course_utils.attention` (chapter 2).
- the feed-forward block is pluggable: ``GPTConfig(ffn="dense")`` uses SwiGLU, ``ffn="moe"`` uses
  :class:`course_utils.moe.MoELayer` (chapters 4–5) with the options in ``GPTConfig.moe`` (a
  :class:`course_utils.moe.MoEConfig`; a dict is converted).
- the output projection shares its weight with the token embedding (``tie_embeddings``; Press & Wolf, 2017).
- :func:`kv_cache_bytes` — the memory a KV cache holds (``2 · layers · kv_heads · head_dim · bytes · tokens``).
- :func:`sample_next_token` — greedy, temperature, top-k and top-p (nucleus; Holtzman et al., 2020) sampling;
  :meth:`GPT.generate` with or without a KV cache.

Checkpoints (safetensors + JSON, sha256 sidecars) live in :mod:`course_utils.checkpoints`; their names stay
importable from here.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import KVCache, MultiHeadAttention
from .layers import RMSNorm, SwiGLU, rms_norm, swiglu  # re-exported: chapter 3's labs and checks import them here
from .moe import MoEConfig, MoELayer
from .validate import check_int, check_number, nonnegative_float, positive_float, positive_int

__all__ = [
    "rms_norm",
    "RMSNorm",
    "swiglu",
    "SwiGLU",
    "kv_cache_step",
    "kv_cache_bytes",
    "kv_cache_bytes_for",
    "sample_next_token",
    "GPTConfig",
    "MoEConfig",
    "Block",
    "GPT",
]


# ----------------------------------------------------------------------------------------------- KV cache, functional
def kv_cache_step(
    q: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    k_cache: torch.Tensor | None = None,
    v_cache: torch.Tensor | None = None,
):
    """One decoding step with a KV cache, written out as plain tensor operations.

    ``q``, ``k_new``, ``v_new``: [B, H, T_new, D] for the new positions; ``k_cache``, ``v_cache``: [B, H, T_past, D]
    (or ``None`` at the start). The new keys/values are appended to the cache and the new queries attend causally:
    the query at absolute position ``T_past + i`` sees keys ``0 … T_past + i``. Returns ``(out, k_cache, v_cache)``
    with ``out`` [B, H, T_new, D]. :class:`course_utils.attention.KVCache` does the same inside the model.
    """
    for name, t in (("q", q), ("k_new", k_new), ("v_new", v_new)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"{name} must be a 4-D tensor [B, H, T, D], got {getattr(t, 'shape', type(t).__name__)}")
    if q.shape != k_new.shape or k_new.shape != v_new.shape:
        raise ValueError(
            f"q, k_new, v_new must have equal shapes, got {tuple(q.shape)}, {tuple(k_new.shape)}, {tuple(v_new.shape)}"
        )
    if (k_cache is None) != (v_cache is None):
        raise ValueError("k_cache and v_cache must both be None or both be tensors")
    if k_cache is not None:
        B, H, _, D = q.shape
        if k_cache.shape != v_cache.shape or (k_cache.shape[0], k_cache.shape[1], k_cache.shape[3]) != (B, H, D):
            raise ValueError(
                f"k_cache/v_cache must be [B={B}, H={H}, T_past, D={D}], got {tuple(k_cache.shape)} "
                f"and {tuple(v_cache.shape)}"
            )
        k, v = torch.cat([k_cache, k_new], dim=2), torch.cat([v_cache, v_new], dim=2)
    else:
        k, v = k_new, v_new
    t_new, t_all = q.shape[2], k.shape[2]
    # query i sits at absolute position t_all - t_new + i: the causal mask is shifted by the cache length
    allowed = torch.arange(t_all)[None, :] <= torch.arange(t_all - t_new, t_all)[:, None]
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    out = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1) @ v
    return out, k, v


# ----------------------------------------------------------------------------------------------- KV cache, memory
def kv_cache_bytes(
    n_tokens: int,
    n_layers: int,
    n_kv_heads: int | None = None,
    head_dim: int | None = None,
    bytes_per_number: float = 2,
    *,
    latent_dim: int | None = None,
) -> float:
    """Memory the KV cache holds for ``n_tokens`` tokens of context.

    ``2 (K and V) · n_layers · n_kv_heads · head_dim · bytes_per_number · n_tokens``: every layer keeps one key
    and one value vector per KV head and token (grouped-query attention shrinks ``n_kv_heads``). With
    ``latent_dim`` (DeepSeek's multi-head latent attention caches one compressed vector of ``kv_lora_rank`` plus
    a RoPE key of ``qk_rope_head_dim`` per layer and token) it is ``n_layers · latent_dim · bytes · n_tokens``.
    ``bytes_per_number``: 4 for float32, 2 for bf16/fp16, 1 for int8.
    """
    check_int("n_tokens", n_tokens, 0)
    positive_int("n_layers", n_layers)
    positive_float("bytes_per_number", bytes_per_number)
    if latent_dim is not None:
        if n_kv_heads is not None or head_dim is not None:
            raise ValueError("give either latent_dim (MLA) or n_kv_heads and head_dim, not both")
        per_layer = positive_int("latent_dim", latent_dim)
    else:
        per_layer = 2 * positive_int("n_kv_heads", n_kv_heads) * positive_int("head_dim", head_dim)
    total = n_layers * per_layer * bytes_per_number * n_tokens
    return int(total) if float(total).is_integer() else total


def kv_cache_bytes_for(config, n_tokens: int = 1, bytes_per_number: float = 2) -> float:
    """:func:`kv_cache_bytes` of a :class:`GPTConfig` or a transformers-style config dict (``num_hidden_layers``,
    ``num_key_value_heads``, ``head_dim`` or ``hidden_size / num_attention_heads``; ``kv_lora_rank`` for MLA)."""
    if isinstance(config, GPTConfig):
        return kv_cache_bytes(n_tokens, config.n_layers, config.n_kv_heads, config.head_dim, bytes_per_number)
    if not isinstance(config, dict):
        raise TypeError(f"config must be a GPTConfig or a config dict, got {type(config).__name__}")
    layers = config["num_hidden_layers"]
    if config.get("kv_lora_rank"):  # multi-head latent attention: one latent + one shared RoPE key per layer
        return kv_cache_bytes(
            n_tokens,
            layers,
            bytes_per_number=bytes_per_number,
            latent_dim=config["kv_lora_rank"] + config["qk_rope_head_dim"],
        )
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or config["num_attention_heads"]
    return kv_cache_bytes(n_tokens, layers, kv_heads, head_dim, bytes_per_number)


# ----------------------------------------------------------------------------------------------- sampling
def sample_next_token(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick one token id per row of ``logits`` [B, V]; returns a LongTensor [B].

    ``temperature == 0`` is greedy (argmax). Otherwise the logits are divided by ``temperature``, then ``top_k``
    keeps the k largest, then ``top_p`` keeps the smallest set of most likely tokens whose probabilities sum to at
    least ``top_p`` (the token that crosses the threshold is kept), and one token is drawn from what is left.
    """
    _check_logits(logits)
    temperature = nonnegative_float("temperature (0 = greedy)", temperature)
    if top_k is not None:
        positive_int("top_k (or None)", top_k)
    if top_p is not None:
        check_number("top_p (or None)", top_p, 0, 1, low_open=True)
    return _pick(logits, temperature, top_k, top_p, generator)


def _check_logits(logits) -> None:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        got = getattr(logits, "shape", type(logits).__name__)
        raise ValueError(f"logits must be a 2-D tensor [batch, vocab], got {got}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point tensor, got dtype {logits.dtype}")
    if torch.isnan(logits).any() or torch.isposinf(logits).any():  # -inf is a masked token; NaN/+inf sample garbage
        raise ValueError("logits hold NaN or +inf (the model diverged or the input was bad); -inf masks are fine")


def _pick(logits, temperature, top_k, top_p, generator) -> torch.Tensor:
    """:func:`sample_next_token` on arguments it has checked (:meth:`GPT.generate` checks them once per call)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs  # mass of the strictly more likely tokens
        drop_sorted = before >= top_p  # keeps the token that crosses top_p (and always the first one)
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


# ----------------------------------------------------------------------------------------------- the model
@dataclass
class GPTConfig:
    vocab_size: int = 512
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None  # None = n_heads (plain multi-head); fewer = grouped-query attention
    d_ff: int | None = None  # None = the multiple of 32 nearest to 8/3·d_model (Llama's choice for SwiGLU)
    max_seq_len: int = 256
    rope_base: float = 10000.0
    dropout: float = 0.0
    tie_embeddings: bool = True
    ffn: str = "dense"  # "dense" (SwiGLU) or "moe" (course_utils.moe.MoELayer)
    moe: MoEConfig | None = None  # MoELayer options (num_experts, top_k, ...); a dict is converted; needed for "moe"
    norm_eps: float = 1e-6

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "max_seq_len"):
            positive_int(name, getattr(self, name))
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError(f"head_dim = d_model/n_heads = {self.d_model // self.n_heads} must be even for RoPE")
        if (
            isinstance(self.n_kv_heads, bool)
            or not isinstance(self.n_kv_heads, int)
            or self.n_kv_heads < 1
            or self.n_heads % self.n_kv_heads
        ):
            raise ValueError(
                f"n_kv_heads must be a positive divisor of n_heads ({self.n_heads}), got {self.n_kv_heads!r}"
            )
        if self.d_ff is None:
            self.d_ff = max(32, int(round(8 * self.d_model / 3 / 32)) * 32)
        positive_int("d_ff", self.d_ff)
        check_number("dropout", self.dropout, 0, 1, high_open=True)
        check_number("rope_base", self.rope_base, 1, low_open=True)
        positive_float("norm_eps", self.norm_eps)
        if self.ffn not in ("dense", "moe"):
            raise ValueError(f"ffn must be 'dense' or 'moe', got {self.ffn!r}")
        if self.moe is not None and not isinstance(self.moe, (MoEConfig, dict)):
            raise TypeError(f"moe must be a MoEConfig (or a dict of its fields), got {type(self.moe).__name__}")
        if self.moe == {}:  # saved configs of dense models wrote the old default, an empty dict
            self.moe = None
        if self.ffn == "moe" and self.moe is None:
            raise ValueError("ffn='moe' needs moe=MoEConfig(num_experts=..., top_k=..., ...) (or the same dict)")
        if self.moe is not None:
            self.moe = MoEConfig.from_value(self.moe, "moe")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


class Block(nn.Module):
    """One pre-norm transformer block: ``x + attn(norm(x))`` then ``x + ffn(norm(x))``.

    ``forward`` returns ``(x, aux)``: ``aux`` is the MoE layer's dict (router logits, balancing loss, ...) or None.
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        c = config
        self.attn_norm = RMSNorm(c.d_model, c.norm_eps)
        self.attn = MultiHeadAttention(
            c.d_model,
            c.n_heads,
            c.n_kv_heads,
            rope=True,
            rope_base=c.rope_base,
            max_seq_len=c.max_seq_len,
            dropout=c.dropout,
            bias=False,
        )
        self.ffn_norm = RMSNorm(c.d_model, c.norm_eps)
        if c.ffn == "moe":
            # the typed config, passed whole; from_value: a .moe replaced by a dict after the config was built works
            self.ffn = MoELayer(c.d_model, c.d_ff, MoEConfig.from_value(c.moe, "config.moe"))
        else:
            self.ffn = SwiGLU(c.d_model, c.d_ff, c.dropout)
        self.is_moe = c.ffn == "moe"
        self.resid_dropout = nn.Dropout(c.dropout)

    def forward(
        self,
        x: torch.Tensor,
        cache: KVCache | None = None,
        *,
        attn_mask: torch.Tensor | None = None,
    ):
        a = self.attn(self.attn_norm(x), cache=cache, attn_mask=attn_mask)
        x = x + self.resid_dropout(a)
        aux = None
        if self.is_moe:
            f, aux = self.ffn(self.ffn_norm(x))
        else:
            f = self.ffn(self.ffn_norm(x))
        return x + f, aux


class GPT(nn.Module):
    """A Llama/Mixtral-style decoder: RMSNorm, RoPE, grouped-query attention, SwiGLU (or MoE), tied embeddings."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"config must be a GPTConfig, got {type(config).__name__}")
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layers)])
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight  # one matrix reads tokens in and writes logits out
        self.last_moe_aux: list[dict] = []
        self.apply(self._init_weights)
        # GPT-2's trick: shrink the projections that write into the residual stream, so its variance does not
        # grow with depth (each block adds two of them).
        for name, p in self.named_parameters():
            if name.endswith(("o_proj.weight", "w2.weight")) and p.dim() == 2:
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    # -------------------------------------------------------------------------------------------- forward
    def new_caches(self) -> list[KVCache]:
        """One empty KV cache per layer, for :meth:`forward` (``caches=``) and :meth:`generate`."""
        return [KVCache() for _ in self.blocks]

    def _check_idx(self, idx, caches) -> int:
        if not isinstance(idx, torch.Tensor) or idx.dim() != 2:
            got = getattr(idx, "shape", type(idx).__name__)
            raise ValueError(f"idx must be a 2-D tensor [batch, time] of token ids, got {got}")
        if idx.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise TypeError(f"idx must hold integer token ids, got dtype {idx.dtype}")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.config.vocab_size):
            raise ValueError(
                f"idx holds token ids outside [0, vocab_size={self.config.vocab_size}): "
                f"min {int(idx.min())}, max {int(idx.max())}"
            )
        past = 0
        if caches is not None and len(caches) != len(self.blocks):
            raise ValueError(f"caches must hold one KVCache per layer ({len(self.blocks)}), got {len(caches)}")
        if caches is not None:
            if not isinstance(caches[0], KVCache):
                return 0  # a cache with its own attention (the serving engine's) checks its rows' positions
            past = caches[0].length
        if past + idx.shape[1] > self.config.max_seq_len:
            raise ValueError(
                f"idx has {idx.shape[1]} tokens (+ {past} cached) but max_seq_len is {self.config.max_seq_len}"
            )
        return past

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        caches: list | None = None,
        attn_mask: torch.Tensor | None = None,
        last_only: bool = False,
    ):
        """Logits [B, T, vocab] for token ids ``idx`` [B, T]; with ``targets`` [B, T] also the mean cross-entropy.

        ``targets`` equal to -1 are ignored. With ``caches`` (from :meth:`new_caches`) the keys/values of earlier
        calls are reused and ``idx`` holds only the new tokens. ``attn_mask`` (bool, True = may attend, or float,
        broadcasting to ``[B, H, T, L]``) is combined with the causal mask in every layer, e.g. a padding mask
        ``[B, 1, 1, L]``. (The serving engine passes caches that carry their own attention path, rows at their own
        positions included: :mod:`course_utils.serving.paged`.)
        ``last_only=True`` returns the logits of the last position only, [B, 1, vocab]: all that generation needs, and
        the output layer is the model's largest matrix when the vocabulary is large (SmolLM2: 28 M of 135 M).
        """
        self._check_idx(idx, caches)
        if last_only and targets is not None:
            raise ValueError("last_only=True gives one position's logits: it cannot compute a loss over targets")
        if targets is not None and (not isinstance(targets, torch.Tensor) or targets.shape != idx.shape):
            raise ValueError(f"targets must have idx's shape {tuple(idx.shape)}, got {getattr(targets, 'shape', None)}")
        x = self.drop(self.tok_emb(idx.long()))
        self.last_moe_aux = []
        for i, block in enumerate(self.blocks):
            x, aux = block(x, cache=None if caches is None else caches[i], attn_mask=attn_mask)
            if aux is not None:
                self.last_moe_aux.append(aux)
        logits = self.lm_head(self.norm(x[:, -1:] if last_only else x))
        loss = None
        if targets is not None:
            # at least float32 (half-precision logits lose the loss), float64 kept (the lab's checks compare in it)
            wide = logits.flatten(0, 1).to(torch.promote_types(logits.dtype, torch.float32))
            loss = F.cross_entropy(wide, targets.flatten().long(), ignore_index=-1)
        return logits, loss

    # -------------------------------------------------------------------------------------------- generation
    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        use_cache: bool = True,
        seed: int | None = None,
    ) -> torch.Tensor:
        """Append ``max_new_tokens`` sampled tokens to ``idx`` [B, T]; returns [B, T + max_new_tokens].

        ``use_cache=True`` feeds only the newest token each step and reuses the cached keys/values;
        ``use_cache=False`` recomputes the whole prefix every step (same tokens, much slower).
        """
        check_int("max_new_tokens", max_new_tokens, 0)
        self._check_idx(idx, None)
        if idx.shape[1] == 0:
            raise ValueError("idx must hold at least one token (the prompt)")
        if idx.shape[1] + max_new_tokens > self.config.max_seq_len:
            raise ValueError(
                f"prompt ({idx.shape[1]} tokens) + max_new_tokens ({max_new_tokens}) exceeds "
                f"max_seq_len ({self.config.max_seq_len})"
            )
        sample_next_token(torch.zeros(1, 2), temperature, top_k, top_p)  # validate the sampling arguments early
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        was_training = self.training
        self.eval()
        try:
            caches = self.new_caches() if use_cache else None
            B, T = idx.shape
            out = idx.new_empty(B, T + max_new_tokens, dtype=torch.long)  # filled step by step, never re-copied
            out[:, :T] = idx
            with torch.inference_mode():  # no autograd bookkeeping on any operation (lighter than no_grad)
                for step in range(max_new_tokens):
                    end = T + step  # tokens so far
                    step_input = out[:, end - 1 : end] if use_cache and step else out[:, :end]
                    logits, _ = self(step_input, caches=caches, last_only=True)
                    if step == 0:  # the prompt's logits are checked (NaN, +inf); later steps use the same weights
                        _check_logits(logits[:, -1, :])
                    out[:, end] = _pick(logits[:, -1, :], temperature, top_k, top_p, generator)
        finally:
            self.train(was_training)
        return out

    # -------------------------------------------------------------------------------------------- bookkeeping
    def param_counts(self) -> dict:
        """``total`` (shared weights counted once), ``active`` per token (MoE: only top-k experts), ``embedding``."""
        total = sum(p.numel() for p in self.parameters())  # parameters() yields a tied weight once
        inactive = 0
        for block in self.blocks:
            if block.is_moe:
                counts = block.ffn.param_counts()
                inactive += counts["total"] - counts["active"]
        return {"total": total, "active": total - inactive, "embedding": self.tok_emb.weight.numel()}


_CHECKPOINT_NAMES = frozenset(
    {"save_checkpoint", "load_checkpoint", "sha256_of", "write_sha256", "verify_sha256", "read_sha256"}
)


def __getattr__(name: str):
    """The checkpoint helpers moved to :mod:`course_utils.checkpoints` (which imports this module); old imports
    ``from course_utils.model import save_checkpoint`` keep working."""
    if name in _CHECKPOINT_NAMES:
        return getattr(importlib.import_module("course_utils.checkpoints"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
