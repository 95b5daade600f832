"""Chapter 7: a synthetic knowledge world that no model can have seen.

A *world* is a set of fictional people (``"Vela Dorrin"``), each with four attributes (home town, job, pet,
favourite colour) drawn uniformly at random, so guessing gets about 1/8 right. The same facts are rendered

- as **statements** (two phrasings per attribute, ``"Vela Dorrin lives in Quessa."``): the "documents" that
  retrieval indexes and that knowledge fine-tuning trains on;
- as **question/answer pairs** in a *train* phrasing (``"Where does Vela Dorrin live?"``), a held-out *eval*
  phrasing (``"Which town is Vela Dorrin from?"``), so a method is never scored on the exact text it trained on,
  and an *unseen* phrasing (``"What place is home to Vela Dorrin?"``). Chapter 7's base model was pretrained on
  questions about *other* worlds in the train and eval phrasings, never in the unseen one.

:func:`update_world` changes exactly ``round(fraction · n_facts)`` facts to a different value (the "the world
moved on" test of freshness). Everything is a pure function of the seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from .validate import check_int

__all__ = ["ATTRIBUTES", "QUESTION_SPLITS", "Fact", "World", "make_world", "update_world"]

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "th", "qu", "sh")
_VOWELS = ("a", "e", "i", "o", "u", "ae", "ou", "ia")
_CODAS = ("", "", "n", "r", "l", "s", "th", "x")

# attribute -> (statement phrasings, (train question, eval question), fixed values or None = per-world towns)
ATTRIBUTES: dict[str, dict] = {
    "town": {
        "statements": ("{e} lives in {v}.", "The home town of {e} is {v}."),
        "questions": ("Where does {e} live?", "Which town is {e} from?", "What place is home to {e}?"),
        "values": None,
    },
    "job": {
        "statements": ("{e} works as a {v}.", "By trade, {e} is a {v}."),
        "questions": ("What does {e} do for a living?", "What is the job of {e}?", "How does {e} earn money?"),
        "values": ("baker", "miner", "weaver", "sailor", "potter", "tailor", "farmer", "scribe"),
    },
    "pet": {
        "statements": ("{e} keeps a {v} as a pet.", "The pet of {e} is a {v}."),
        "questions": ("What pet does {e} keep?", "Which animal does {e} have as a pet?", "What animal lives with {e}?"),
        "values": ("otter", "lizard", "parrot", "ferret", "tortoise", "goat", "owl", "hare"),
    },
    "colour": {
        "statements": ("The favourite colour of {e} is {v}.", "{e} likes the colour {v} best."),
        "questions": (
            "What is the favourite colour of {e}?",
            "Which colour does {e} like best?",
            "What colour does {e} prefer?",
        ),
        "values": ("amber", "teal", "crimson", "violet", "ochre", "indigo", "silver", "olive"),
    },
}
N_TOWNS = 8
# question phrasings: fine-tuning trains on "train"; "eval" is held out from every method in the lesson but the
# base model met it in pretraining (other worlds' questions); "unseen" appears in no training text at all
QUESTION_SPLITS = ("train", "eval", "unseen")


@dataclass(frozen=True)
class Fact:
    entity: str
    attribute: str
    value: str

    def statement(self, phrasing: int = 0) -> str:
        return ATTRIBUTES[self.attribute]["statements"][phrasing].format(e=self.entity, v=self.value)

    def question(self, split: str = "train") -> str:
        if split not in QUESTION_SPLITS:
            raise ValueError(f"split must be one of {QUESTION_SPLITS}, got {split!r}")
        return ATTRIBUTES[self.attribute]["questions"][QUESTION_SPLITS.index(split)].format(e=self.entity)


@dataclass
class World:
    """Fictional entities and their facts. ``facts`` is ordered by entity, then attribute (as in ATTRIBUTES)."""

    seed: int
    entities: list[str]
    values: dict[str, tuple[str, ...]]
    facts: list[Fact]
    changed: list[Fact] = field(default_factory=list)  # the facts update_world rewrote (new values)

    def statements(self, phrasing: int | None = 0) -> list[str]:
        """One statement per fact in ``phrasing`` 0 or 1, or both phrasings (``None``)."""
        if phrasing not in (0, 1, None):
            raise ValueError(f"phrasing must be 0, 1 or None (both), got {phrasing!r}")
        which = (0, 1) if phrasing is None else (phrasing,)
        return [f.statement(p) for f in self.facts for p in which]

    def qa_pairs(self, split: str = "train") -> list[tuple[str, str]]:
        """``(question, answer)`` for every fact, in the ``"train"``, held-out ``"eval"`` or ``"unseen"`` phrasing."""
        return [(f.question(split), f.value) for f in self.facts]

    def lookup(self, entity: str, attribute: str) -> str:
        for f in self.facts:
            if f.entity == entity and f.attribute == attribute:
                return f.value
        raise KeyError(f"no fact ({entity!r}, {attribute!r}) in this world")


def _name(rng: random.Random, syllables: int) -> str:
    word = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables)) + rng.choice(_CODAS)
    return word.capitalize()


def make_world(seed: int = 0, n_entities: int = 30) -> World:
    """A world of ``n_entities`` fictional people with 4 facts each (``4 · n_entities`` facts), from ``seed``."""
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    check_int("n_entities", n_entities, 1, 2000)
    rng = random.Random(f"world:{seed}")
    towns: set[str] = set()
    while len(towns) < N_TOWNS:
        towns.add(_name(rng, 2))
    values = {a: spec["values"] or tuple(sorted(towns)) for a, spec in ATTRIBUTES.items()}
    entities: list[str] = []
    seen: set[str] = set(towns)
    while len(entities) < n_entities:
        name = f"{_name(rng, rng.randint(1, 2))} {_name(rng, 2)}"
        if name not in seen:  # unique names, never equal to a town
            seen.add(name)
            entities.append(name)
    facts = [Fact(e, a, rng.choice(values[a])) for e in entities for a in ATTRIBUTES]
    return World(seed, entities, values, facts)


def update_world(world: World, fraction: float, *, seed: int | None = None) -> World:
    """A copy of ``world`` in which exactly ``round(fraction · n_facts)`` facts take a *different* value.

    Which facts change, and to what, depends only on ``world.seed`` and ``seed`` (default 0). The returned world's
    ``changed`` lists the rewritten facts with their new values.
    """
    if not isinstance(world, World):
        raise TypeError(f"world must be a World (from make_world), got {type(world).__name__}")
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be a number in [0, 1], got {fraction!r}")
    rng = random.Random(f"update:{world.seed}:{0 if seed is None else seed}")
    n_change = round(fraction * len(world.facts))
    picked = set(rng.sample(range(len(world.facts)), n_change))
    facts, changed = [], []
    for i, f in enumerate(world.facts):
        if i in picked:
            f = Fact(f.entity, f.attribute, rng.choice([v for v in world.values[f.attribute] if v != f.value]))
            changed.append(f)
        facts.append(f)
    return World(world.seed, list(world.entities), dict(world.values), facts, changed)
