"""Chapter 7's main comparisons over several worlds and training seeds -> ``course_utils/assets/ch7_study.json``.

The lesson reads its verdicts from this file instead of retraining: fine-tuning results move with the seed and
with the CPU's rounding (issue #25), so one run's verdict is an anecdote. For every world (seeds never used in
pretraining: ``scripts/pretrain_ch7.py`` draws its worlds from ids >= 10,000) and every training seed it trains the
knowledge fine-tunes (full, LoRA, RAFT) and the format LoRA, and stores *per-question 0/1 results* (strings of
"0"/"1", in the world's fact order) so any paired test can be recomputed from the file. The prompting methods do not
train, so they are scored once per world.

Seeded and resumable: each unit (a world x seed x fine-tune) is written to the file as soon as it finishes, and a
rerun skips the units already there (``--fresh`` starts over). One thread per process::

    COURSE_OFFLINE=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONPATH=. \\
        nice -n 10 python scripts/study_ch7.py            # 18 knowledge fine-tunes + 2 format LoRAs
    python scripts/study_ch7.py --summary                  # print the summary of the shipped file

Each fine-tune is a few hundred steps of ~35 ms (one quiet core; the knowledge fine-tunes stopped at 100-625 steps).
Side by side: one ``--out`` per process (``--worlds 0 --seeds 1 --kinds RAFT --no-prompting --no-behaviour`` ...),
then ``--merge part.json ...`` writes the shipped file. The shipped file holds every unit (its ``meta`` lists the
worlds, seeds and kinds); on a partial file a plain rerun adds the missing units.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from course_utils import finetune as ft  # noqa: E402
from course_utils import rag  # noqa: E402
from course_utils.model import sha256_of, write_sha256  # noqa: E402
from course_utils.world import make_world, update_world  # noqa: E402

OUT = ROOT / "course_utils" / "assets" / "ch7_study.json"
WORLDS = (0, 4, 7)  # the lesson's world is 0; 1 (behaviour training) and 3 (reading test) are kept apart
SEEDS = (0, 1)
KINDS = ("full fine-tune", "RAFT", "LoRA")
N_ENTITIES = 12  # 48 facts per world: the study has to fit in an hour on a busy, shared 2-core machine
K = 4  # retrieved statements / few-shot examples per prompt, as in the lesson
READ_WORLD, BEH_WORLD, BEH_N, N_CHANGED = 3, 1, 40, 20
FORMAT_LORA = {"steps": 1500, "lr": 3e-3, "batch_size": 8, "answer_only": True, "eval_every": 25, "patience": 6}
FORMAT_LORA["min_delta"] = 0.002


def bits(hits) -> str:
    return "".join("1" if h else "0" for h in hits)


class Setting:
    """One world, its update and its retrievers, built once."""

    def __init__(self, seed: int, embed):
        self.world = make_world(seed, N_ENTITIES)
        self.world2 = update_world(self.world, N_CHANGED / len(self.world.facts))
        self.changed = [i for i, (a, b) in enumerate(zip(self.world.facts, self.world2.facts)) if a.value != b.value]
        self.retrieve = ft.fact_retriever(self.world.statements(None), index=rag.DenseIndex())
        self.retrieve2 = ft.fact_retriever(self.world2.statements(None), index=rag.DenseIndex())
        self.embed = embed
        self.held = set(ft.knowledge_split(self.world)["val_facts"])

    def ask(self, model, method, split="eval", *, updated=False, which=None, answers=None):
        w = self.world2 if updated else self.world
        pairs = w.qa_pairs(split)
        idx = range(len(pairs)) if which is None else which
        qs = [pairs[i][0] for i in idx]
        gold = [pairs[i][1] for i in idx] if answers is None else answers
        prompts = ft.knowledge_prompts(
            method, w, qs, k=K, embed=self.embed, retrieve=self.retrieve2 if updated else self.retrieve
        )
        return bits(ft.greedy_exact_match(model, prompts, gold)), sum(map(len, prompts)) / len(prompts)

    def scores(self, model, method) -> dict:
        """eval / unseen accuracy and, on the changed facts of the updated world, new and old values."""
        (out, tokens), unseen = self.ask(model, method), self.ask(model, method, "unseen")[0]
        old = [self.world.facts[i].value for i in self.changed]
        return {
            "eval": out,
            "unseen": unseen,
            "new": self.ask(model, method, updated=True, which=self.changed)[0],
            "old": self.ask(model, method, updated=True, which=self.changed, answers=old)[0],
            "tokens": round(tokens, 1),
        }


def reading(model) -> dict:
    w = make_world(READ_WORLD, N_ENTITIES)
    gold = [f.value for f in w.facts]
    return {str(d): bits(ft.greedy_exact_match(model, ft.reading_prompts(w, n_distractors=d), gold)) for d in (0, 3)}


def knowledge_unit(base, s: Setting, kind: str, seed: int) -> dict:
    t0 = time.perf_counter()
    model, hist = ft.knowledge_finetune(
        base, s.world, kind, seed=seed, retrieve=s.retrieve, cache=False, progress=False
    )
    trained = [i for i in range(len(s.world.facts)) if i not in s.held]
    out = {"closed": s.scores(model, "zero-shot"), "rag": s.scores(model, "RAG"), "reading": reading(model)}
    out["closed"]["trained"] = s.ask(model, "zero-shot", "train", which=trained)[0]
    out["rag"]["trained"] = s.ask(model, "RAG", "train", which=trained)[0]
    keep = ("eval_step", "val_loss", "eval_train_loss", "trained_acc", "val_acc")
    # the study's own record (the shipped JSON's keys): "steps" is the history's stopped_step
    out["history"] = {k: [round(v, 4) for v in hist[k]] for k in keep} | {
        "steps": hist.stopped_step,
        "best_step": hist.best_step,
        "trainable": hist.trainable,
    }
    out["history"]["seconds"] = round(time.perf_counter() - t0, 1)
    out["history"]["train_seconds"] = round(hist.seconds, 1)
    return out


def behaviour_retriever(world):
    return ft.fact_retriever(world.statements(None))  # BM25, as the lesson's behaviour task


def behaviour_scores(model, world, method, embed) -> dict:
    qs, gold = [q for q, _ in world.qa_pairs("eval")][:BEH_N], [a for _, a in world.qa_pairs("eval")][:BEH_N]
    prompts = ft.behaviour_prompts(method, world, qs, k=2, embed=embed, retrieve=behaviour_retriever(world))
    outs = ft.greedy_answers(model, prompts, max_new_tokens=28)
    comp = [ft.format_compliance(o) for o in outs]
    right = [c and ft.exact_match(ft.parse_json_answer(o) or "", g) for c, o, g in zip(comp, outs, gold)]
    return {"compliance": bits(comp), "correct": bits(right), "tokens": round(sum(map(len, prompts)) / len(prompts), 1)}


def behaviour_reference(base, world) -> dict:
    """Retrieval recall of the behaviour prompts (is the answer among the 3 statements?) and the base model's plain
    (non-JSON) answer on the same retrieved statements: the ceiling the format LoRA's 'correct' is compared with."""
    qs, gold = [q for q, _ in world.qa_pairs("eval")][:BEH_N], [a for _, a in world.qa_pairs("eval")][:BEH_N]
    retrieve = behaviour_retriever(world)
    own = [{f.statement(0), f.statement(1)} for f in world.facts[:BEH_N]]
    recall = [bool(own_i & set(retrieve(q, 3))) for q, own_i in zip(qs, own)]
    plain = ft.greedy_exact_match(base, [ft.rag_prompt(q, retrieve(q, 3)) for q in qs], gold)
    return {"recall": bits(recall), "plain": bits(plain)}


def behaviour_unit(base, seed: int, embed) -> dict:
    t0 = time.perf_counter()
    texts = ft.behaviour_texts(make_world(BEH_WORLD, 25))  # 100 examples of the format, 20 held out
    torch.manual_seed(seed)
    model = ft.apply_lora(__import__("copy").deepcopy(base), r=8, alpha=16)
    config = ft.FinetuneConfig(seed=seed, progress=False, **FORMAT_LORA)
    hist = ft.finetune(model, texts[20:], config, val_texts=texts[:20])
    out = {str(w): behaviour_scores(model, make_world(w, N_ENTITIES), "zero-shot", embed) for w in WORLDS}
    out["history"] = {
        "steps": hist.stopped_step,
        "best_step": hist.best_step,
        "seconds": round(time.perf_counter() - t0),
    }
    return out


def save(data: dict, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)
    write_sha256(path)  # "<sha256>  <name>", the sha256sum format every loader checks


def run(path: Path, fresh: bool, worlds, seeds, kinds, behaviour: bool = True, prompting: bool = True) -> dict:
    import course_utils

    course_utils.setup(seed=0, threads=1, quiet=True)
    data = {} if fresh or not path.exists() else json.loads(path.read_text())
    data.setdefault("prompting", {}), data.setdefault("runs", {}), data.setdefault("behaviour", {})
    data["meta"] = {
        "script": "scripts/study_ch7.py",
        "worlds": list(worlds),
        "seeds": list(seeds),
        "kinds": list(kinds),
        "n_entities": N_ENTITIES,
        "k": K,
        "stopping": ft.KNOWLEDGE_STOPPING,
        "finetunes": ft.KNOWLEDGE_FINETUNES,
        "raft": {"k": ft.RAFT_K, "oracle_share": ft.RAFT_ORACLE_SHARE},
        "format_lora": FORMAT_LORA,
        "read_world": READ_WORLD,
        "behaviour_world": BEH_WORLD,
        "base_sha256": sha256_of(ft.BASE_CHECKPOINT),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "bits": "per-question hits in the world's fact order ('1' right); 'trained': the trained facts only; "
        "'new'/'old': the changed facts of the updated world",
    }
    base = ft.load_base_model()
    embed = ft.memo_embed(lambda texts: rag.embed(list(texts)))
    settings = {}
    for w in worlds:  # the prompting methods: no training, one score per world
        settings[w] = s = Setting(w, embed)
        if prompting and str(w) not in data["prompting"]:
            data["prompting"][str(w)] = {m: s.scores(base, m) for m in ft.PROMPT_METHODS}
            data["prompting"][str(w)]["behaviour"] = {
                m: behaviour_scores(base, s.world, m, embed) for m in ("zero-shot", "few-shot", "dynamic few-shot")
            } | {"reference": behaviour_reference(base, s.world)}
            data["prompting"]["reading"] = reading(base)
            save(data, path)
            print(f"prompting, world {w}: done", flush=True)
    for seed in seeds:
        for w in worlds:
            for kind in kinds:
                key = f"{w}/{seed}/{kind}"
                if key in data["runs"]:
                    continue
                data["runs"][key] = knowledge_unit(base, settings[w], kind, seed)
                save(data, path)
                h = data["runs"][key]["history"]
                print(f"{key}: {h['steps']} steps, {h['seconds']:.0f} s", flush=True)
        if behaviour and str(seed) not in data["behaviour"]:
            data["behaviour"][str(seed)] = behaviour_unit(base, seed, embed)
            save(data, path)
            print(f"behaviour/{seed}: done", flush=True)
    return data


def merge(parts, path: Path) -> dict:
    """Combine the files of processes run side by side (``--out`` each) into one."""
    data: dict = {"prompting": {}, "runs": {}, "behaviour": {}}
    for part in parts:
        d = json.loads(Path(part).read_text())
        for key in ("prompting", "runs", "behaviour"):
            data[key].update(d.get(key, {}))
        meta = d["meta"]
    runs = data["runs"]
    meta["worlds"] = sorted({int(w) for w in data["prompting"] if w != "reading"})
    meta["seeds"] = sorted({int(k.split("/")[1]) for k in runs} | {int(s) for s in data["behaviour"]})
    meta["kinds"] = [k for k in KINDS if any(key.endswith(f"/{k}") for key in runs)]
    data["meta"] = meta
    save(data, path)
    return data


def summary(data: dict) -> None:
    """Each method's accuracy per seed (worlds pooled) and the claims ledger's verdicts, as the lesson shows them."""
    seeds = data["meta"]["seeds"]
    methods = list(ft.PROMPT_METHODS) + [m for k in data["meta"]["kinds"] for m in (k, f"{k} + RAG")]
    for split in ("trained", "eval", "unseen", "old"):
        for m in methods:
            got = ft.study_share(data, m, split)
            if got:
                each = "  ".join(f"seed {s}: {got[s][0]}/{got[s][1]}" for s in seeds if s in got)
                print(f"{split:8s} {m:22s} pooled {got['pooled'][0] / got['pooled'][1]:.3f}  {each}")
    for claim, (a, b) in ft.STUDY_CLAIMS.items():
        try:
            c = ft.study_claim(data, a, b)
        except ValueError:
            continue  # a partial study: this comparison has no results yet
        print(f"{claim}: {c['verdict']} (seeds: {c['agree']})\n    pooled: {c['pooled']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--fresh", action="store_true", help="ignore the units already in --out")
    ap.add_argument("--summary", action="store_true", help="only print the summary of --out")
    ap.add_argument("--worlds", type=int, nargs="+", default=list(WORLDS))
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    ap.add_argument("--kinds", nargs="*", default=list(KINDS))
    ap.add_argument("--no-behaviour", action="store_true", help="skip the format LoRA (another process runs it)")
    ap.add_argument("--no-prompting", action="store_true", help="skip the prompting methods")
    ap.add_argument("--merge", type=Path, nargs="+", help="combine these part files into --out")
    args = ap.parse_args()
    if args.merge:
        data = merge(args.merge, args.out)
    elif args.summary:
        data = json.loads(args.out.read_text())
    else:
        data = run(
            args.out, args.fresh, args.worlds, args.seeds, args.kinds, not args.no_behaviour, not args.no_prompting
        )
    summary(data)


if __name__ == "__main__":
    main()
