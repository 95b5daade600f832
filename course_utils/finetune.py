"""Chapter 7: fine-tune vs prompt vs RAG, measured — LoRA from scratch, prompting helpers, the tiny base model.

- :class:`LoRALinear` — ``y = x Wᵀ + b + (α/r) · dropout(x) Aᵀ Bᵀ`` with ``W`` frozen, ``A`` random and ``B = 0``
  so the adapted model starts identical to the base (Hu et al., 2021, "LoRA", §4.1);
  :func:`apply_lora` swaps chosen ``nn.Linear`` layers for it, :func:`merge_lora` folds ``(α/r)·BA`` into ``W``.
- prompting: :func:`few_shot_prompt` / :func:`rag_prompt` (one prompt layout, :func:`build_prompt`),
  :func:`select_examples_by_similarity` (dynamic few-shot: the k pool examples nearest to the question),
  :func:`exact_match` and :func:`format_compliance` for the behaviour task's template :data:`JSON_TEMPLATE`.
- the base model: a character-level chapter-3 :class:`~course_utils.model.GPT` pretrained by
  ``scripts/pretrain_ch7.py`` on the course corpus plus reading-comprehension text about *other* synthetic worlds
  (:func:`reading_comprehension_text`), shipped as ``assets/ft_base.safetensors`` (sha256-checked).
- fine-tuning and evaluation: :func:`finetune` (full or LoRA, loss on whole documents or only on the answers,
  early stopping on a validation loss; it runs :func:`course_utils.train.train`), :func:`cached_finetune` (its
  result kept under the course cache), :func:`knowledge_finetune` (the chapter's knowledge fine-tunes),
  :func:`greedy_answers` (greedy decoding with a KV cache, stopping at the end of the line),
  :func:`greedy_exact_match`, :func:`answer_accuracy` and :func:`reading_prompts` (the forgetting test).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .checkpoints import (
    load_checkpoint,
    sha256_of,  # re-exported: the pretraining scripts and tests read it from here
    verify_sha256,
)
from .data import cache_dir
from .model import GPTConfig
from .rag import BM25Index, Document, assemble_prompt
from .stats import compare_paired, wilson_interval
from .train import History, TrainConfig, TrainHooks, train
from .validate import ArgumentTypeError
from .world import make_world

__all__ = [
    "VOCAB_SIZE",
    "encode",
    "decode",
    "build_prompt",
    "few_shot_prompt",
    "rag_prompt",
    "JSON_TEMPLATE",
    "render_json_answer",
    "normalize_answer",
    "exact_match",
    "format_compliance",
    "parse_json_answer",
    "select_examples_by_similarity",
    "memo_embed",
    "hashing_embed",
    "reading_comprehension_text",
    "TextStream",
    "lora_forward",
    "LoRALinear",
    "DEFAULT_TARGETS",
    "apply_lora",
    "merge_lora",
    "count_parameters",
    "base_config",
    "BASE_CHECKPOINT",
    "load_base_model",
    "sha256_of",
    "FinetuneConfig",
    "finetune",
    "text_loss",
    "cached_finetune",
    "reading_prompts",
    "knowledge_finetune",
    "raft_example",
    "raft_texts",
    "KNOWLEDGE_FINETUNES",
    "KNOWLEDGE_STOPPING",
    "greedy_answers",
    "greedy_exact_match",
    "answer_accuracy",
    "PROMPT_METHODS",
    "fact_retriever",
    "static_examples",
    "knowledge_prompts",
    "knowledge_texts",
    "knowledge_split",
    "behaviour_prompts",
    "behaviour_texts",
    "score_behaviour",
    "knowledge_accuracy",
    "STUDY",
    "load_study",
    "study_bits",
    "study_compare",
    "study_share",
    "study_cell",
    "STUDY_CLAIMS",
    "study_claim",
]

ASSETS = Path(__file__).resolve().parent / "assets"
BASE_CHECKPOINT = ASSETS / "ft_base.safetensors"

# ----------------------------------------------------------------------------------------------- characters
VOCAB_SIZE = 128  # ASCII: one token per character keeps "tokens per query" easy to read (= characters)


def encode(text: str) -> list[int]:
    """Character-level ids (ASCII code points); any other character becomes ``?``."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return [o if (o := ord(c)) < VOCAB_SIZE else 63 for c in text]


def decode(ids: Sequence[int]) -> str:
    return "".join(chr(int(i)) for i in ids)


# ----------------------------------------------------------------------------------------------- prompts
def _check_pairs(name: str, pairs) -> list[tuple[str, str]]:
    if isinstance(pairs, (str, bytes)) or not hasattr(pairs, "__iter__"):
        raise TypeError(f"{name} must be a sequence of (question, answer) pairs, got {type(pairs).__name__}")
    out = []
    for i, p in enumerate(pairs):
        if not (isinstance(p, (tuple, list)) and len(p) == 2 and all(isinstance(s, str) for s in p)):
            raise TypeError(f"{name}[{i}] must be a (question, answer) pair of strings, got {p!r}")
        out.append((p[0], p[1]))
    return out


def build_prompt(question: str, *, facts: Sequence[str] = (), examples: Sequence[tuple[str, str]] = ()) -> str:
    """The one prompt layout of the chapter: an optional ``Facts:`` block, then Q/A examples, then the question
    (laid out by chapter 6's :func:`course_utils.rag.assemble_prompt`, with ``Q:``/``A:`` cues and single newlines).

    ::

        Facts:
        Vela Dorrin lives in Quessa.
        Q: What pet does Ido Brae keep?
        A: otter
        Q: Which town is Vela Dorrin from?
        A:

    The model's answer is what it writes after ``A:`` up to the end of the line.
    """
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"question must be a non-empty string, got {question!r}")
    if isinstance(facts, str) or not all(isinstance(f, str) for f in facts):
        raise TypeError("facts must be a sequence of strings (one fact per line)")
    head = ["Facts:\n" + "\n".join(facts)] if len(facts) else []
    pairs = _check_pairs("examples", examples)
    return assemble_prompt(question, head, examples=pairs, cue=("Q:", "A:"), gap="\n")  # chapter 6's layout


def few_shot_prompt(examples: Sequence[tuple[str, str]], question: str) -> str:
    """``"Q: q1\\nA: a1\\n" … "Q: question\\nA:"`` — k worked examples, then the question (k = 0: zero-shot)."""
    return build_prompt(question, examples=examples)


def rag_prompt(question: str, facts: Sequence[str]) -> str:
    """The retrieved ``facts`` in a ``Facts:`` block, then the question."""
    return build_prompt(question, facts=facts)


JSON_TEMPLATE = '{{"answer": "{}"}}'  # the behaviour task's required output format
_JSON_RE = re.compile(r'\{"answer": "([^"\n]*)"\}')


def render_json_answer(value: str) -> str:
    return JSON_TEMPLATE.format(value)


def normalize_answer(text: str) -> str:
    """Lower-case, strip, collapse runs of whitespace to one space, drop one trailing full stop."""
    if not isinstance(text, str):
        raise TypeError(f"answer must be a str, got {type(text).__name__}")
    text = " ".join(text.lower().split())
    return text[:-1].rstrip() if text.endswith(".") else text


def exact_match(prediction: str, reference: str) -> bool:
    """True when the two answers are equal after :func:`normalize_answer` (case, whitespace, a final full stop)."""
    return normalize_answer(prediction) == normalize_answer(reference)


def format_compliance(output: str) -> bool:
    """True when ``output`` (stripped) is exactly ``{"answer": "<value>"}`` with a non-empty value."""
    if not isinstance(output, str):
        raise TypeError(f"output must be a str, got {type(output).__name__}")
    m = _JSON_RE.fullmatch(output.strip())
    return bool(m and m.group(1).strip())


def parse_json_answer(output: str) -> str | None:
    """The value inside a compliant ``{"answer": "..."}`` output, else None."""
    m = _JSON_RE.fullmatch(output.strip())
    return m.group(1) if m else None


# ----------------------------------------------------------------------------------------------- dynamic few-shot
def hashing_embed(texts: Sequence[str], dim: int = 256) -> torch.Tensor:
    """A cheap deterministic embedder (hashed word counts, L2-normalised) for tests and quick experiments."""
    out = torch.zeros(len(texts), dim)
    for i, t in enumerate(texts):
        for w in re.findall(r"[a-z0-9']+", t.lower()):
            out[i, int(hashlib.md5(w.encode()).hexdigest(), 16) % dim] += 1.0
    return F.normalize(out, dim=-1)


def memo_embed(embed: Callable[[Sequence[str]], object]) -> Callable[[Sequence[str]], torch.Tensor]:
    """Wrap ``embed`` so each distinct text is embedded once (missing texts in one batch): dynamic few-shot embeds
    the same pool for every question."""
    memo: dict[str, torch.Tensor] = {}

    def cached(texts: Sequence[str]) -> torch.Tensor:
        missing = [t for t in dict.fromkeys(texts) if t not in memo]
        if missing:
            for t, v in zip(missing, embed(missing)):
                memo[t] = torch.as_tensor(v, dtype=torch.float32)
        return torch.stack([memo[t] for t in texts])

    return cached


def select_examples_by_similarity(
    question: str, pool: Sequence[tuple[str, str]], k: int, embed: Callable[[Sequence[str]], object]
) -> list[tuple[str, str]]:
    """The ``k`` pool examples whose *questions* have the highest cosine similarity to ``question``.

    ``embed(list_of_texts)`` returns one vector per text (tensor or array). Ties keep pool order. The examples are
    returned most similar *last*, right before the question, where a small model attends to them most.
    """
    pool = _check_pairs("pool", pool)
    if not isinstance(question, str):
        raise TypeError(f"question must be a str, got {type(question).__name__}")
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= len(pool):
        raise ValueError(f"k must be an int in [0, len(pool)={len(pool)}], got {k!r}")
    if k == 0:
        return []
    vecs = torch.as_tensor(embed([question] + [q for q, _ in pool]), dtype=torch.float64)
    vecs = F.normalize(vecs, dim=-1)
    sims = vecs[1:] @ vecs[0]
    order = sorted(range(len(pool)), key=lambda i: (-float(sims[i]), i))[:k]
    return [pool[i] for i in reversed(order)]


# ----------------------------------------------------------------------------------------------- pretraining text
def reading_comprehension_text(seed: int, n_examples: int, *, n_entities: int = 12) -> list[str]:
    """``n_examples`` reading-comprehension documents about freshly generated worlds (never the lesson's world).

    Each holds a context of 1–6 lines (statements in either phrasing and/or Q/A pairs) about one world, then 1–3
    questions answerable from it. This teaches the base model to *answer from context*, which RAG and few-shot
    prompting rely on; it never sees the ``{"answer": ...}`` format of the behaviour task.
    """

    rng = random.Random(f"rc:{seed}")
    docs = []
    for i in range(n_examples):
        world = make_world(10_000 + seed * 1_000_003 + i, n_entities)
        # 1-3 people and some of their facts: same-person, other-attribute lines are the usual distractors
        people = set(rng.sample(world.entities, rng.randint(1, 3)))
        mine = [f for f in world.facts if f.entity in people]
        facts = rng.sample(mine, rng.randint(1, min(6, len(mine))))
        lines = []
        for f in facts:  # a fact appears as a statement (either phrasing) or as a Q/A pair (either phrasing)
            if rng.random() < 0.6:
                lines.append(("fact", f.statement(rng.randint(0, 1))))
            else:
                lines.append(("qa", f"Q: {f.question(rng.choice(['train', 'eval']))}\nA: {f.value}"))
        statements = [t for kind, t in lines if kind == "fact"]
        shots = [t for kind, t in lines if kind == "qa"]
        head = "Facts:\n" + "".join(s + "\n" for s in statements) if statements else ""
        asked = rng.sample(facts, min(len(facts), rng.randint(1, 3)))
        tail = "".join(f"Q: {f.question(rng.choice(['train', 'eval']))}\nA: {f.value}\n" for f in asked)
        docs.append(head + "".join(s + "\n" for s in shots) + tail)
    return docs


class TextStream:
    """Character ids of a train/val text pair with ``get_batch`` — the interface :func:`course_utils.train.train`
    uses."""

    def __init__(self, train_text: str, val_text: str):
        self.ids = {"train": torch.tensor(encode(train_text)), "val": torch.tensor(encode(val_text))}

    def get_batch(self, split: str, batch_size: int, block_size: int, generator=None):
        data = self.ids[split]
        if block_size + 1 > len(data):
            raise ValueError(f"block_size {block_size} is too long for the {split} split ({len(data)} tokens)")
        starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
        window = starts[:, None] + torch.arange(block_size + 1)[None, :]
        return data[window[:, :-1]], data[window[:, 1:]]


# ----------------------------------------------------------------------------------------------- LoRA
def lora_forward(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, A: torch.Tensor, B: torch.Tensor, scaling: float
) -> torch.Tensor:
    """``x Wᵀ + b + scaling · (x Aᵀ) Bᵀ`` with ``W`` [out, in], ``A`` [r, in], ``B`` [out, r], ``scaling = α/r``.

    The low-rank path goes ``x → A → B``: two thin matrix products, never the full ``BA`` [out, in].
    """
    if A.dim() != 2 or B.dim() != 2 or A.shape[0] != B.shape[1]:
        raise ValueError(
            f"A must be [r, in] and B [out, r] with the same r, got A {tuple(A.shape)}, B {tuple(B.shape)}"
        )
    if A.shape[1] != weight.shape[1] or B.shape[0] != weight.shape[0]:
        raise ValueError(
            f"A {tuple(A.shape)} / B {tuple(B.shape)} do not fit weight {tuple(weight.shape)} "
            "(expected A [r, in], B [out, r])"
        )
    return F.linear(x, weight, bias) + scaling * F.linear(F.linear(x, A), B)


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update ``ΔW = (α/r) · B A`` (Hu et al., 2021).

    ``A`` [r, in] starts random (Kaiming-uniform, as in ``peft``), ``B`` [out, r] starts at zero, so at step 0 the
    layer computes exactly what the base layer computes; only ``A`` and ``B`` receive gradients.
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"base must be an nn.Linear, got {type(base).__name__}")
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise ValueError(f"r must be a positive int, got {r!r}")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
            raise ValueError(f"alpha must be a positive number, got {alpha!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, dtype=w.dtype, device=w.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, dtype=w.dtype, device=w.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # dropout acts on the adapter's input only; the frozen path sees x unchanged
        return self.base(x) + self.scaling * F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B)

    @property
    def weight(self) -> torch.Tensor:
        """The effective weight ``W + (α/r)·BA`` (differentiable in A and B), for code that reads ``.weight``
        directly — e.g. a learner's ``swiglu(x, w1.weight, ...)`` from lab 3. (No adapter dropout on this path.)"""
        return self.base.weight + self.scaling * (self.lora_B @ self.lora_A)

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def merged_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` with ``W + (α/r)·BA``: the same outputs, no extra cost at inference."""
        out = nn.Linear(
            self.base.in_features,
            self.base.out_features,
            bias=self.base.bias is not None,
            dtype=self.base.weight.dtype,
            device=self.base.weight.device,
        )
        with torch.no_grad():
            out.weight.copy_(self.weight)
            if self.base.bias is not None:
                out.bias.copy_(self.base.bias)
        return out

    def extra_repr(self) -> str:
        return f"in={self.base.in_features}, out={self.base.out_features}, r={self.r}, alpha={self.alpha}"


DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "w1", "w2", "w3")


def _matches(name: str, targets: Sequence[str]) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def apply_lora(
    model: nn.Module, r: int, alpha: float, target_modules: Sequence[str] = DEFAULT_TARGETS, dropout: float = 0.0
) -> nn.Module:
    """Freeze every parameter of ``model`` and wrap each ``nn.Linear`` whose name ends in one of
    ``target_modules`` (``"q_proj"`` matches ``blocks.0.attn.q_proj``) in a :class:`LoRALinear`. In place;
    returns ``model``. Raises ``ValueError`` if nothing matched.
    """
    if isinstance(target_modules, str) or not target_modules:
        raise TypeError("target_modules must be a non-empty list of module names, e.g. ['q_proj', 'v_proj']")
    for p in model.parameters():
        p.requires_grad_(False)
    chosen = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and _matches(n, target_modules)]
    if not chosen:
        linears = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ValueError(f"no nn.Linear matched target_modules={list(target_modules)}; this model has {linears}")
    for name, module in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(module, r, alpha, dropout))
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every :class:`LoRALinear` in ``model`` by its merged ``nn.Linear`` (in place; returns ``model``)."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    if not found:
        raise ValueError("model has no LoRALinear layers to merge (call apply_lora first)")
    for name, module in found:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module.merged_linear())
    return model


def count_parameters(model: nn.Module) -> dict:
    """``trainable`` and ``total`` parameter counts (a tied weight counted once) and the trainable ``fraction``."""
    params = list(model.parameters())  # parameters() yields shared tensors once
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return {"trainable": trainable, "total": total, "fraction": trainable / total if total else 0.0}


# ----------------------------------------------------------------------------------------------- the base model
def base_config():
    """The chapter's base model: a character-level chapter-3 GPT, small enough to fine-tune on a laptop CPU."""

    return GPTConfig(vocab_size=VOCAB_SIZE, d_model=64, n_layers=4, n_heads=4, max_seq_len=384)


def load_base_model(path: str | Path = BASE_CHECKPOINT, *, verify: bool = True):
    """The pretrained base model from ``scripts/pretrain_ch7.py``; its SHA-256 must match ``<path>.sha256``."""

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `python scripts/pretrain_ch7.py` to rebuild it")
    if verify:  # the weights against ft_base.sha256 (the record the pretraining script has always written) ...
        verify_sha256(path, path.with_suffix(".sha256"), rebuild="python scripts/pretrain_ch7.py")
    # ... and weights and config against their sidecars
    return load_checkpoint(path, rebuild="python scripts/pretrain_ch7.py" if verify else None)


GPT_META = {"tokenizer": "ascii-characters", "script": "scripts/pretrain_ch7.py"}


# ----------------------------------------------------------------------------------------------- train and evaluate
def _batch(texts: Sequence, answer_only: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded inputs and targets; padding (and, with ``answer_only``, the prompt) is ignored (-1).

    A ``(prompt, completion)`` pair is trained on the completion only (e.g. a chat prompt and its answer).
    """
    pairs = [t if isinstance(t, tuple) else (t, None) for t in texts]
    ids = [encode(p + (c or "")) for p, c in pairs]
    T = max(len(i) for i in ids) - 1
    x = torch.zeros(len(ids), T, dtype=torch.long)
    y = torch.full((len(ids), T), -1, dtype=torch.long)
    for row, ((t, completion), seq) in enumerate(zip(pairs, ids)):
        n = len(seq) - 1
        x[row, :n] = torch.tensor(seq[:-1])
        y[row, :n] = torch.tensor(seq[1:])
        if completion is not None:  # position len(prompt) - 1 predicts the completion's first token
            y[row, : len(t) - 1] = -1
        elif answer_only:  # learn only what follows the last "A:" (the answer), not the prompt
            start = t.rfind("\nA:") + 3 if "\nA:" in t else t.find("A:") + 2
            y[row, : max(0, start - 1)] = -1
    return x, y


@torch.no_grad()
def text_loss(model: nn.Module, texts: Sequence[str], *, answer_only: bool = False, batch_size: int = 64) -> float:
    """Mean cross-entropy (nats per scored character) of ``model`` on ``texts``, with :func:`finetune`'s masking."""
    if isinstance(texts, str) or not texts:
        raise ValueError("texts must be a non-empty list of strings")
    total, count = 0.0, 0
    for s in range(0, len(texts), batch_size):
        x, y = _batch(list(texts[s : s + batch_size]), answer_only)
        logits, _ = model(x)
        keep = y >= 0
        total += float(F.cross_entropy(logits[keep], y[keep], reduction="sum"))
        count += int(keep.sum())
    return total / count


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig(TrainConfig):
    """:func:`finetune`'s settings: a :class:`~course_utils.train.TrainConfig` (validated the same way) with
    fine-tuning's defaults — no weight decay, β₂ = 0.999, a 10-step warm-up, an evaluation every 25 steps — and
    ``lr`` required, plus where the loss counts:

    - ``answer_only``: on ``(prompt, completion)`` pairs and on strings, the loss counts only the answer;
    - ``val_answer_only``: the same for the validation and probe losses (default: ``answer_only``);
    - ``restore_best`` defaults to on when ``patience`` is set.

    Both defaults are settled when the config is built (a ``dataclasses.replace`` copy keeps them).

    ``block_size`` and ``eval_iters`` are unused: each sample is one text, and the validation texts are scored whole.
    """

    lr: float = dataclasses.field()  # required: a bare annotation would inherit TrainConfig's default
    warmup: int = 10
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eval_every: int | None = 25
    restore_best: bool | None = None
    desc: str = "fine-tuning"
    answer_only: bool = False
    val_answer_only: bool | None = None

    def __post_init__(self):
        if self.restore_best is None:  # frozen: set through object, once, before the checks
            object.__setattr__(self, "restore_best", self.patience is not None)
        if self.val_answer_only is None:
            object.__setattr__(self, "val_answer_only", self.answer_only)
        for f in ("answer_only", "val_answer_only"):
            if not isinstance(getattr(self, f), bool):
                raise ArgumentTypeError(f"FinetuneConfig.{f} must be True or False, got {getattr(self, f)!r}")
        super().__post_init__()


def _check_finetune_args(texts, val_texts, config, hooks) -> None:
    """:func:`finetune`'s checks on what to train on: a ValueError/TypeError naming the argument."""

    def _ok(t) -> bool:
        if isinstance(t, tuple):
            return len(t) == 2 and all(isinstance(s, str) for s in t) and len(t[0]) > 0 and len(t[1]) > 0
        return isinstance(t, str) and len(t) > 1

    if isinstance(texts, str) or not texts or not all(_ok(t) for t in texts):
        raise ValueError(
            "texts must be a non-empty list of strings (each at least 2 characters) or of "
            "(prompt, completion) pairs of non-empty strings"
        )
    if not isinstance(config, FinetuneConfig):
        raise ArgumentTypeError(f"config must be a FinetuneConfig, got {type(config).__name__}")
    if val_texts is not None and (
        isinstance(val_texts, str) or not val_texts or not all(isinstance(t, str) and len(t) > 1 for t in val_texts)
    ):
        raise ValueError("val_texts must be None or a non-empty list of strings (each at least 2 characters)")
    if (config.patience is not None or config.restore_best) and val_texts is None:
        raise ValueError("patience (early stopping) and restore_best need val_texts to measure a validation loss on")
    if hooks is not None and (not isinstance(hooks, TrainHooks) or hooks.loss_fn is not None):
        raise ValueError("hooks must be a TrainHooks without loss_fn (finetune draws its batches from texts)")


def finetune(
    model: nn.Module,
    texts: Sequence,
    config: FinetuneConfig,
    *,
    val_texts: Sequence[str] | None = None,
    probe_texts: Sequence[str] | None = None,
    hooks: TrainHooks | None = None,
) -> History:
    """Train the parameters of ``model`` that require grad on ``texts`` (one sample each) with the course's one
    loop, :func:`course_utils.train.train`, as ``config`` (:class:`FinetuneConfig`) says; returns its
    :class:`~course_utils.train.History` (``history.trainable``: the parameters trained).

    An item of ``texts`` is a string, or a ``(prompt, completion)`` pair whose loss counts the completion only.
    Samples are drawn epoch by epoch in an order seeded by ``config.seed``.

    With ``val_texts``, the loss on them (``val_loss``) and on ``probe_texts`` (``eval_train_loss``; default: as many
    training texts, for the gap) is measured every ``config.eval_every`` steps, and ``config.patience`` can stop
    training early; without them nothing is evaluated. ``hooks.eval_fn(model)``, if given, returns more numbers
    recorded at every evaluation under their own keys (e.g. accuracy on the trained questions); ``hooks.on_step``
    and ``hooks.on_eval`` are :func:`~course_utils.train.train`'s.
    """
    _check_finetune_args(texts, val_texts, config, hooks)
    hooks = hooks or TrainHooks()
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("model has no trainable parameters (all requires_grad=False)")
    rng = random.Random(config.seed)
    order: list[int] = []
    batch_size, answer_only = config.batch_size, config.answer_only

    def loss_fn(model, step):
        nonlocal order
        if len(order) < batch_size:
            epoch = list(range(len(texts)))
            rng.shuffle(epoch)
            order += epoch
        idx, order = order[:batch_size], order[batch_size:]
        return model(*_batch([texts[i] for i in idx], answer_only))[1]

    # the gap needs the training loss on as many texts as the validation split, always the same ones
    train_probe = (
        list(probe_texts)
        if probe_texts is not None
        else random.Random(f"probe:{config.seed}").sample(list(texts), min(len(texts), len(val_texts or ())))
    )

    def eval_fn(model):
        out = {
            "val_loss": text_loss(model, val_texts, answer_only=config.val_answer_only),
            "eval_train_loss": text_loss(model, train_probe, answer_only=config.val_answer_only),
        }
        return out | (hooks.eval_fn(model) if hooks.eval_fn is not None else {})

    if val_texts is None:
        config = dataclasses.replace(config, eval_every=None)
    return train(model, None, config, hooks=dataclasses.replace(hooks, loss_fn=loss_fn, eval_fn=eval_fn))


def cached_finetune(
    model: nn.Module,
    texts: Sequence,
    config: FinetuneConfig,
    *,
    val_texts: Sequence[str] | None = None,
    probe_texts: Sequence[str] | None = None,
    hooks: TrainHooks | None = None,
    recompute: bool = False,
) -> History:
    """:func:`finetune`, with its result (the trained weights and the history) kept under the course cache.

    The key is a hash of the starting weights, ``texts``, ``val_texts``, ``probe_texts``, every setting of
    ``config`` but the display ones and the name of ``hooks.eval_fn``, so any change retrains. A cache hit loads
    the weights into ``model`` and returns the stored history with ``cached=True`` (its ``time`` is that of the
    run that made it); ``recompute=True`` always trains (and refreshes the cache).
    """

    settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("progress", "desc")}
    settings["eval_fn"] = getattr(hooks and hooks.eval_fn, "__qualname__", None)  # a function enters by its name
    texts_key = [list(t) if isinstance(t, tuple) else t for t in texts]
    key = hashlib.sha256(
        json.dumps(
            {"texts": texts_key, "val": val_texts, "probe": probe_texts, "settings": settings, "version": 2},
            sort_keys=True,
        ).encode()
    )
    for name, t in model.state_dict().items():
        key.update(name.encode())
        key.update(t.detach().float().contiguous().numpy().tobytes())
    folder = cache_dir() / "ch07_finetunes"
    path = folder / f"{key.hexdigest()[:32]}.safetensors"
    side = path.with_suffix(".json")
    if path.exists() and side.exists() and not recompute:
        model.load_state_dict(load_file(str(path)))
        model.eval()
        return dataclasses.replace(History.from_dict(json.loads(side.read_text())), cached=True)
    hist = finetune(model, texts, config, val_texts=val_texts, probe_texts=probe_texts, hooks=hooks)
    folder.mkdir(parents=True, exist_ok=True)
    # clone: safetensors refuses tensors that share memory (the tied embedding and output weights)
    save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, str(path))
    side.write_text(json.dumps(hist.to_dict()))
    return hist


# chapter 7's knowledge fine-tunes: learning rates (LoRA's higher, as usual for adapters) and the stopping rule.
# "RAFT" is a full fine-tune whose Q/A examples carry retrieved statements in their prompts (Zhang et al., 2024).
KNOWLEDGE_FINETUNES = {
    "full fine-tune": {"lr": 3e-3},
    "LoRA": {"lr": 1e-2, "r": 8, "alpha": 16},
    "RAFT": {"lr": 5e-4},  # lower: at 3e-3 the first steps cost the base model its reading (val loss 0.09 -> 0.56)
}
KNOWLEDGE_STOPPING = {"steps": 2000, "batch_size": 16, "eval_every": 25, "patience": 4}
RAFT_K, RAFT_ORACLE_SHARE = 4, 0.8  # statements per training prompt; share of prompts that contain the answer


def raft_example(fact, question: str, retrieve: Callable[[str, int], list[str]], *, oracle: bool, k: int = RAFT_K):
    """One RAFT training prompt: ``k`` retrieved statements, then ``question``. With ``oracle=False`` the fact's own
    statements are removed (only distractors: the answer must come from memory), as in Zhang et al. (2024)."""
    own = {fact.statement(0), fact.statement(1)}
    found = retrieve(question, k + 2)
    facts = found[:k] if oracle else [s for s in found if s not in own][:k]
    return rag_prompt(question, facts)


def raft_texts(world, retrieve, fact_ids: Sequence[int], *, seed: int = 0) -> list:
    """RAFT fine-tuning data: every statement (both phrasings) plus, for each fact in ``fact_ids``, a
    ``(prompt with retrieved statements, answer)`` pair trained on the answer only; a seeded
    :data:`RAFT_ORACLE_SHARE` of the prompts hold the fact's statement, the rest only distractors."""
    rng = random.Random(f"raft:{seed}")
    pairs = []
    for i in fact_ids:
        f = world.facts[i]
        prompt = raft_example(f, f.question("train"), retrieve, oracle=rng.random() < RAFT_ORACLE_SHARE)
        pairs.append((prompt, f" {f.value}\n"))
    return world.statements(None) + pairs


def knowledge_finetune(
    base: nn.Module,
    world,
    kind: str,
    *,
    seed: int = 0,
    retrieve: Callable[[str, int], list[str]] | None = None,
    val_fraction: float = 0.2,
    recompute: bool = False,
    cache: bool = True,
    progress: bool = True,
) -> tuple[nn.Module, History]:
    """Chapter 7's knowledge fine-tune of a copy of ``base`` on ``world``: ``kind`` ``"full fine-tune"``, ``"LoRA"``
    (r = 8, α = 16 on every projection) or ``"RAFT"`` (full, with ``retrieve``-d statements in its Q/A prompts).

    Data: :func:`knowledge_split` (RAFT: :func:`raft_texts` on the same facts). Early stopping on the loss of the
    held-out train-phrasing answers (:data:`KNOWLEDGE_STOPPING`: an evaluation every 25 steps, patience 4, best
    weights restored) — *not* training until the trained questions are all answered: the history's
    ``trained_acc`` / ``val_acc`` record, at every evaluation, the accuracy on the trained and on the held-out
    questions (in the training format), so the two can be compared. ``seed`` sets the batch order and LoRA's random
    ``A``. Cached by :func:`cached_finetune` unless ``cache=False`` (``recompute`` retrains). Returns the model and
    the history.
    """
    if kind not in KNOWLEDGE_FINETUNES:
        raise ValueError(f"kind must be one of {sorted(KNOWLEDGE_FINETUNES)}, got {kind!r}")
    if kind == "RAFT" and retrieve is None:
        raise ValueError("kind='RAFT' needs retrieve=<function (question, k) -> statements>")
    split = knowledge_split(world, val_fraction=val_fraction)
    held = set(split["val_facts"])
    trained_ids = [i for i in range(len(world.facts)) if i not in held]
    pairs = world.qa_pairs("train")
    if kind == "RAFT":
        rng = random.Random(f"raft-val:{seed}")
        texts = raft_texts(world, retrieve, trained_ids, seed=seed)
        val = [
            f"{raft_example(world.facts[i], pairs[i][0], retrieve, oracle=rng.random() < RAFT_ORACLE_SHARE)} "
            f"{pairs[i][1]}\n"
            for i in split["val_facts"]
        ]
        ask = [(i, rag_prompt(pairs[i][0], retrieve(pairs[i][0], RAFT_K))) for i in range(len(pairs))]
    else:
        texts, val = split["train"], split["val"]
        ask = [(i, few_shot_prompt([], pairs[i][0])) for i in range(len(pairs))]
    probe = [f"{p} {pairs[i][1]}\n" for i, p in ask if i not in held][: len(val)]

    def accuracy_on_questions(model):
        hits = greedy_exact_match(model, [p for _, p in ask], [pairs[i][1] for i, _ in ask])
        seen = [h for (i, _), h in zip(ask, hits) if i not in held]
        return {"trained_acc": sum(seen) / len(seen), "val_acc": (sum(hits) - sum(seen)) / len(held)}

    settings = dict(KNOWLEDGE_FINETUNES[kind])
    model = copy.deepcopy(base)
    if kind == "LoRA":
        torch.manual_seed(seed)  # the adapters' random A: the same model (and cache entry) whatever ran before
        apply_lora(model, r=settings.pop("r"), alpha=settings.pop("alpha"))
    config = FinetuneConfig(
        **settings, **KNOWLEDGE_STOPPING, val_answer_only=True, seed=seed, progress=progress, desc=kind
    )
    data = dict(val_texts=val, probe_texts=probe, hooks=TrainHooks(eval_fn=accuracy_on_questions))
    if cache:
        hist = cached_finetune(model, texts, config, recompute=recompute, **data)
    else:
        hist = finetune(model, texts, config, **data)
    return model, hist


@torch.no_grad()
def greedy_answers(
    model: nn.Module, prompts: Sequence[str], *, max_new_tokens: int = 16, stop: str = "\n", progress: bool = False
) -> list[str]:
    """Greedy continuation of each prompt up to ``stop`` (not included) or ``max_new_tokens`` characters.

    One prompt at a time with a KV cache: prompts of different lengths need no padding, and decoding stops as
    soon as the answer's line ends (a short answer costs a few steps, not ``max_new_tokens``).
    """

    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, not one string")
    stop_id = encode(stop)[0]
    limit = model.config.max_seq_len
    model.eval()
    outs = []
    for p in tqdm(prompts, desc="answering", disable=not progress, unit="q"):
        ids = encode(p)
        if len(ids) + max_new_tokens > limit:
            raise ValueError(f"prompt of {len(ids)} characters + {max_new_tokens} new exceeds max_seq_len {limit}")
        caches = model.new_caches()
        logits, _ = model(torch.tensor([ids]), caches=caches)
        new: list[int] = []
        for _ in range(max_new_tokens):
            nxt = int(logits[0, -1].argmax())
            if nxt == stop_id:
                break
            new.append(nxt)
            logits, _ = model(torch.tensor([[nxt]]), caches=caches)
        outs.append(decode(new))
    return outs


@torch.no_grad()
def greedy_exact_match(
    model: nn.Module, prompts: Sequence[str], answers: Sequence[str], *, batch_size: int = 32
) -> list[bool]:
    """Would greedy decoding write exactly ``" " + answer + "\\n"`` after each prompt? One forward pass per batch.

    Feeding the reference answer and checking that it is the argmax at every one of its positions gives the
    same verdict as decoding greedily (the first wrong character is where greedy decoding would leave the
    answer), without a decoding loop. Right padding is harmless in a causal model. Strict: case and spacing
    count, unlike :func:`exact_match`.
    """
    if len(prompts) != len(answers):
        raise ValueError(f"need one answer per prompt, got {len(prompts)} prompts and {len(answers)} answers")
    model.eval()
    verdicts = []
    for s in range(0, len(prompts), batch_size):
        texts = [f"{p} {a}\n" for p, a in zip(prompts[s : s + batch_size], answers[s : s + batch_size])]
        x, y = _batch(texts, answer_only=True)
        logits, _ = model(x)
        hit = (logits.argmax(-1) == y) | (y < 0)
        verdicts += hit.all(dim=1).tolist()
    return verdicts


def answer_accuracy(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of :func:`exact_match` hits."""
    if len(predictions) != len(references) or not references:
        raise ValueError(f"need as many predictions as references (> 0), got {len(predictions)} and {len(references)}")
    return sum(exact_match(p, r) for p, r in zip(predictions, references)) / len(references)


# ----------------------------------------------------------------------------------------------- the experiment
PROMPT_METHODS = ("zero-shot", "few-shot", "dynamic few-shot", "RAG")


def fact_retriever(statements: Sequence[str], index=None) -> Callable[[str, int], list[str]]:
    """``retrieve(question, k)`` over one-statement documents with a chapter-6 index from
    :mod:`course_utils.rag` (default ``BM25Index()``; ``DenseIndex()`` for MiniLM embeddings)."""

    index = BM25Index() if index is None else index
    index.add([Document(str(i), "", s) for i, s in enumerate(statements)])
    return lambda question, k: [h.text for h in index.search(question, k)]


def static_examples(pool: Sequence[tuple[str, str]], k: int, seed: int = 0) -> list[tuple[str, str]]:
    """The same ``k`` examples for every question (a seeded sample of the pool)."""
    return random.Random(f"shots:{seed}").sample(list(pool), k)


def knowledge_prompts(
    method: str, world, questions: Sequence[str], *, k: int = 4, embed=None, retrieve=None
) -> list[str]:
    """The prompt of each ``questions`` for a prompting ``method`` (see :data:`PROMPT_METHODS`).

    Few-shot examples come from the world's Q/A pairs in the *train* phrasing; RAG retrieves ``k`` statements.
    Fine-tuned models are asked zero-shot (``method="zero-shot"``).
    """
    pool = world.qa_pairs("train")
    if method == "zero-shot":
        return [few_shot_prompt([], q) for q in questions]
    if method == "few-shot":
        shots = static_examples(pool, k)
        return [few_shot_prompt(shots, q) for q in questions]
    if method == "dynamic few-shot":
        if embed is None:
            raise ValueError("dynamic few-shot needs embed=<function from texts to vectors>")
        return [few_shot_prompt(select_examples_by_similarity(q, pool, k, embed), q) for q in questions]
    if method == "RAG":
        retrieve = retrieve or fact_retriever(world.statements(0))
        return [rag_prompt(q, retrieve(q, k)) for q in questions]
    raise ValueError(f"method must be one of {PROMPT_METHODS}, got {method!r}")


def knowledge_texts(world) -> list[str]:
    """Fine-tuning data for the knowledge task: every fact as two statements and as a train-phrasing Q/A."""
    return world.statements(None) + [f"Q: {q}\nA: {a}\n" for q, a in world.qa_pairs("train")]


def knowledge_split(world, *, val_fraction: float = 0.2, seed: int = 0) -> dict:
    """:func:`knowledge_texts` split for early stopping, within the *training* phrasings only.

    Every statement trains; the train-phrasing Q/A pairs of a seeded ``val_fraction`` of the facts are held out as
    the validation set (the model must answer them from what the statements taught it). Returns ``train`` and
    ``val`` (texts) and ``val_facts`` (their indices in ``world.facts``). The eval and unseen phrasings stay out.
    """
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be a number in (0, 1), got {val_fraction!r}")
    qa = [f"Q: {q}\nA: {a}\n" for q, a in world.qa_pairs("train")]
    n_val = max(1, round(val_fraction * len(qa)))
    val_facts = sorted(random.Random(f"val:{seed}").sample(range(len(qa)), n_val))
    held = set(val_facts)
    return {
        "train": world.statements(None) + [t for i, t in enumerate(qa) if i not in held],
        "val": [qa[i] for i in val_facts],
        "val_facts": val_facts,
    }


def behaviour_prompts(
    method: str, world, questions: Sequence[str], *, k: int = 2, n_facts: int = 3, embed=None, retrieve=None
) -> list[str]:
    """Behaviour task: the facts are given (RAG), the *format* is the job — JSON-answer examples or none."""
    retrieve = retrieve or fact_retriever(world.statements(0))
    pool = [(q, render_json_answer(a)) for q, a in world.qa_pairs("train")]
    out = []
    for q in questions:
        if method == "zero-shot":
            shots = []
        elif method == "few-shot":
            shots = static_examples(pool, k)
        elif method == "dynamic few-shot":
            if embed is None:
                raise ValueError("dynamic few-shot needs embed=<function from texts to vectors>")
            shots = select_examples_by_similarity(q, pool, k, embed)
        else:
            raise ValueError(f"method must be 'zero-shot', 'few-shot' or 'dynamic few-shot', got {method!r}")
        out.append(build_prompt(q, facts=retrieve(q, n_facts), examples=shots))
    return out


def behaviour_texts(world, *, n_facts: int = 3) -> list[str]:
    """Behaviour fine-tuning data: a zero-shot RAG prompt (train phrasing) followed by the JSON answer."""
    questions = [q for q, _ in world.qa_pairs("train")]
    prompts = behaviour_prompts("zero-shot", world, questions, n_facts=n_facts)
    return [f"{p} {render_json_answer(a)}\n" for p, (_, a) in zip(prompts, world.qa_pairs("train"))]


def score_behaviour(outputs: Sequence[str], references: Sequence[str]) -> dict:
    """``compliance`` (exact template), ``correct`` (compliant and the right value), ``value_found`` (the right
    value anywhere in the output, format aside)."""
    n = len(references)
    comp = [format_compliance(o) for o in outputs]
    right = [c and exact_match(parse_json_answer(o) or "", r) for c, o, r in zip(comp, outputs, references)]
    found = [normalize_answer(r) in normalize_answer(o) for o, r in zip(outputs, references)]
    return {"compliance": sum(comp) / n, "correct": sum(right) / n, "value_found": sum(found) / n}


def reading_prompts(world, *, n_distractors: int = 0, split: str = "eval", seed: int = 0) -> list[str]:
    """The reading test: each fact's statement (phrasing 1) in a ``Facts:`` block, with ``n_distractors`` other facts
    about the same person shuffled in, then the question (``split`` phrasing). Answers: the world's values.

    Asked about a world the model was never trained on, it measures *reading* (copying from context), not memory:
    chapter 7 runs it before and after each fine-tune to measure forgetting.
    """
    if isinstance(n_distractors, bool) or not isinstance(n_distractors, int) or not 0 <= n_distractors <= 3:
        raise ValueError(f"n_distractors must be an int in [0, 3] (a person has 4 facts), got {n_distractors!r}")
    rng = random.Random(f"reading:{seed}")
    prompts = []
    for fact in world.facts:
        others = [f for f in world.facts if f.entity == fact.entity and f is not fact]
        lines = [fact.statement(1)] + [f.statement(rng.randint(0, 1)) for f in rng.sample(others, n_distractors)]
        rng.shuffle(lines)
        prompts.append(rag_prompt(fact.question(split), lines))
    return prompts


def knowledge_accuracy(
    model: nn.Module, world, method: str = "zero-shot", *, k: int = 4, embed=None, retrieve=None, split: str = "eval"
) -> dict:
    """Score ``model`` on every fact of ``world`` (``split`` phrasing) with a prompting ``method``.

    Returns ``accuracy`` (strict greedy exact match), ``tokens_per_query`` (prompt characters) and the per-question
    ``hits``. Fine-tuned models are scored with ``method="zero-shot"`` (closed book).
    """
    questions = [q for q, _ in world.qa_pairs(split)]
    answers = [a for _, a in world.qa_pairs(split)]
    prompts = knowledge_prompts(method, world, questions, k=k, embed=embed, retrieve=retrieve)
    hits = greedy_exact_match(model, prompts, answers)
    return {"accuracy": sum(hits) / len(hits), "tokens_per_query": sum(map(len, prompts)) / len(prompts), "hits": hits}


# ----------------------------------------------------------------------------------------------- the shipped study
STUDY = ASSETS / "ch7_study.json"  # scripts/study_ch7.py: per-question results over worlds x training seeds


def load_study(path: str | Path = STUDY, *, verify: bool = True) -> dict:
    """The multi-world, multi-seed results of ``scripts/study_ch7.py`` (SHA-256 checked against the sidecar)."""

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `python scripts/study_ch7.py` to rebuild it")
    if verify:
        verify_sha256(path, path.with_name(path.name + ".sha256"), rebuild="python scripts/study_ch7.py")
    return json.loads(path.read_text())


def study_bits(study: dict, method: str, split: str, seed: int, world: int) -> list[int] | None:
    """Per-question 0/1 results of ``method`` on ``split`` for one training ``seed`` and ``world`` (None if absent).

    ``method``: a prompting method (:data:`PROMPT_METHODS`, the same for every seed), a knowledge fine-tune
    (``"full fine-tune"``, ``"LoRA"``, ``"RAFT"``: closed book) or one ``+ " + RAG"``, ``"base"`` (reading test
    only), ``"format LoRA"`` or ``"behaviour: <prompting method>"`` / ``"behaviour: reference"``. ``split``:
    ``eval``, ``unseen``, ``trained``, ``new``, ``old``; ``reading 0`` / ``reading 3`` (distractors);
    ``compliance`` / ``correct``; ``recall`` / ``plain`` for the behaviour reference. ``"unseen@trained"`` is the
    unseen phrasing on the trained facts only (paired with ``trained``).
    """
    prompting, w = study["prompting"].get(str(world), {}), str(world)
    if split == "unseen@trained":
        held = set(knowledge_split(_study_world(study, world))["val_facts"])
        full = study_bits(study, method, "unseen", seed, world)
        return None if full is None else [h for i, h in enumerate(full) if i not in held]
    if split.startswith("reading"):
        src = study["prompting"].get("reading") if method == "base" else study["runs"].get(f"{w}/{seed}/{method}")
        bits = (src if method == "base" else (src or {}).get("reading", {})) if src else None
        bits = None if bits is None else bits.get(split.split()[1])
    elif method.startswith("behaviour: "):
        bits = prompting.get("behaviour", {}).get(method[len("behaviour: ") :], {}).get(split)
    elif method == "format LoRA":
        bits = study["behaviour"].get(str(seed), {}).get(w, {}).get(split)
    elif method in PROMPT_METHODS:
        bits = prompting.get(method, {}).get(split)
    else:
        kind, rag = (method[: -len(" + RAG")], "rag") if method.endswith(" + RAG") else (method, "closed")
        bits = study["runs"].get(f"{w}/{seed}/{kind}", {}).get(rag, {}).get(split)
    return None if bits is None else [int(c) for c in bits]


def _study_world(study: dict, world: int):

    return make_world(world, study["meta"]["n_entities"])


def study_compare(study: dict, a: tuple[str, str], b: tuple[str, str], *, alpha: float = 0.05) -> dict:
    """``compare_paired`` of two ``(method, split)`` sources on the same questions: one comparison per training seed
    (the worlds pooled: their questions are different) and one ``"pooled"`` over the seeds, with **one item per
    question**: each source's score on a question is its mean over the seeds (0, ½ or 1 with two seeds), so a
    question counts once however many seeds answered it. (Pooling the seeds' 0/1 results instead would count a
    prompting method's answers, which no training seed changes, once per seed: the same evidence twice, and a
    p-value too small.) Only (seed, world) cells where both sources exist are used. Returns
    ``{seed: PairedComparison, ..., "pooled": PairedComparison}``."""

    per_seed: dict = {}
    per_world: dict = {}  # world -> [(x, y) per seed]: the same questions in the same order in every seed
    for seed in study["meta"]["seeds"]:
        xs, ys = [], []
        for world in study["meta"]["worlds"]:
            x, y = study_bits(study, *a, seed, world), study_bits(study, *b, seed, world)
            if x is not None and y is not None:
                xs, ys = xs + x, ys + y
                per_world.setdefault(world, []).append((x, y))
        if xs:
            per_seed[seed] = (xs, ys)
    if not per_seed:
        raise ValueError(f"the study holds no results for both {a} and {b}")
    names = (a[0], b[0]) if a[0] != b[0] else (f"{a[0]} ({a[1]})", f"{b[0]} ({b[1]})")
    out = {s: compare_paired(x, y, names=names, alpha=alpha) for s, (x, y) in per_seed.items()}
    xs = [sum(col) / len(col) for runs in per_world.values() for col in zip(*(x for x, _ in runs))]
    ys = [sum(col) / len(col) for runs in per_world.values() for col in zip(*(y for _, y in runs))]
    out["pooled"] = compare_paired(xs, ys, names=names, alpha=alpha)
    return out


def study_share(study: dict, method: str, split: str) -> dict:
    """Accuracy of one source: ``{seed: (hits, n), ..., "pooled": (hits, n)}`` over the study's worlds."""
    out = {}
    for seed in study["meta"]["seeds"]:
        bits = [b for w in study["meta"]["worlds"] for b in (study_bits(study, method, split, seed, w) or [])]
        if bits:
            out[seed] = (sum(bits), len(bits))
    if out:
        out["pooled"] = (sum(k for k, _ in out.values()), sum(n for _, n in out.values()))
    return out


# The claims ledger: each claim is "A beats B" on the same questions, as (method, split) sources of study_bits.
STUDY_CLAIMS = {
    "RAG for missing knowledge (eval phrasing)": (("RAG", "eval"), ("full fine-tune", "eval")),
    "RAG for missing knowledge (unseen phrasing)": (("RAG", "unseen"), ("full fine-tune", "unseen")),
    "fine-tuning beats dynamic few-shot (eval)": (("full fine-tune", "eval"), ("dynamic few-shot", "eval")),
    "fine-tuning beats dynamic few-shot (unseen)": (("full fine-tune", "unseen"), ("dynamic few-shot", "unseen")),
    "fine-tuned weights go stale (old value: full FT vs RAG)": (("full fine-tune", "old"), ("RAG", "old")),
    "fine-tuned facts transfer only partly (trained vs unseen)": (
        ("full fine-tune", "trained"),
        ("full fine-tune", "unseen@trained"),
    ),
    "fine-tuning wears down reading (base vs full FT, among 4)": (
        ("base", "reading 3"),
        ("full fine-tune", "reading 3"),
    ),
    "closed-book fine-tune + RAG beats RAG (eval)": (("full fine-tune + RAG", "eval"), ("RAG", "eval")),
    "RAFT + RAG beats RAG (eval)": (("RAFT + RAG", "eval"), ("RAG", "eval")),
    "RAFT + RAG beats RAG (unseen)": (("RAFT + RAG", "unseen"), ("RAG", "unseen")),
    "full fine-tune beats LoRA (eval)": (("full fine-tune", "eval"), ("LoRA", "eval")),
    "full fine-tune beats LoRA (trained)": (("full fine-tune", "trained"), ("LoRA", "trained")),
    "fine-tune to change format (compliance: LoRA vs few-shot)": (
        ("format LoRA", "compliance"),
        ("behaviour: few-shot", "compliance"),
    ),
}
_CLAIM_VERDICT = {"A": "holds", "B": "does not hold", "not shown": "not shown"}


def study_claim(study: dict, a: tuple[str, str], b: tuple[str, str], *, alpha: float = 0.05) -> dict:
    """The claim "A beats B" judged by :func:`study_compare`: ``verdict`` (pooled: ``holds`` / ``does not hold`` /
    ``not shown``), ``per_seed`` (each seed's verdict), ``agree`` (e.g. ``"holds 2/2"``, or both verdicts with
    their counts when the seeds disagree) and ``pooled`` (the :class:`~course_utils.stats.PairedComparison`)."""
    res = study_compare(study, a, b, alpha=alpha)

    def word(c) -> str:
        return _CLAIM_VERDICT["not shown" if not c.shown else ("A" if c.diff > 0 else "B")]

    per_seed = {s: word(c) for s, c in res.items() if s != "pooled"}
    said = list(per_seed.values())
    agree = ", ".join(f"{v} {said.count(v)}/{len(said)}" for v in dict.fromkeys(said))
    return {"verdict": word(res["pooled"]), "per_seed": per_seed, "agree": agree, "pooled": res["pooled"]}


def study_cell(study: dict, method: str, split: str) -> str:
    """``'62% [54%, 69%] (60% / 64%)'``: the pooled share with its 95% Wilson interval, then each seed's share
    (``'—'`` when the study has no such result)."""

    got = study_share(study, method, split)
    if not got:
        return "—"
    k, n = got["pooled"]
    lo, hi = wilson_interval(k, n)
    each = " / ".join(f"{got[s][0] / got[s][1]:.0%}" for s in study["meta"]["seeds"] if s in got)
    return f"{k / n:.0%} [{lo:.0%}, {hi:.0%}] ({each})"
