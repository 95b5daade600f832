"""Chapter 7's comparison on a real instruct model -> ``course_utils/assets/ch7_smollm2.json`` (+ ``.sha256``).

SmolLM2-135M-Instruct (``course_utils.smollm2``, the course's own GPT holding its weights, float32) answers the
questions of chapter 7's worlds 0, 4 and 7 (the toy study's worlds, 48 facts each) in the eval and the unseen
phrasing:

- by prompting, with chapter 7's prompts (``finetune.knowledge_prompts``: zero-shot = closed book, few-shot,
  dynamic few-shot with MiniLM embeddings, RAG with the chapter's dense retriever, k = 4), each put in one ChatML
  user turn after ``rag_llm.CH7_INSTRUCTION`` and answered greedily (chapter 6's ``scripts/rag_smollm2.greedy``,
  at most 12 new tokens);
- after a LoRA fine-tune (the course's ``finetune.apply_lora``, r = 8, α = 16 on every projection of the top 4 of
  the 30 blocks; :data:`LORA` gives steps, learning rate and batch) on the world's training facts — both phrasings
  of every statement as plain text and the train-phrasing questions of the trained facts
  (``finetune.knowledge_split``) as chat turns, loss on the answer — asked closed book and with RAG's prompts, one
  run per training seed.

Scoring (``rag_llm.names_value``): an answer is right when it names the fact's value and no other value of that
attribute, case and punctuation aside. The file has the schema of the toy study (``finetune.load_study``):
per-question 0/1 strings in the world's fact order, so ``finetune.study_claim`` recomputes every paired verdict.

Resumable: answers go to ``.cache/ch7_smollm2/answers-<part>.jsonl`` and adapters to ``.cache/ch7_smollm2/``; a
rerun skips both. ``--write`` starts from the shipped file, so a run on more worlds (``--worlds 4 7``) extends it.
Side by side (one thread each), then assemble::

    PYTHONPATH=. nice -n 10 python scripts/study_ch7_smollm2.py --part prompting --threads 1 &
    PYTHONPATH=. nice -n 10 python scripts/study_ch7_smollm2.py --part lora --seeds 0 --threads 1 &
    ...; python scripts/study_ch7_smollm2.py --write

Run time, measured for the shipped file (``meta.seconds``, CPU seconds of one thread): about 24 CPU-minutes in
all. World 0 ran first: its 384 prompting answers 382 CPU-s, each LoRA 43-50 CPU-s (frozen states + 80 steps); at
load 10-17 on the shared 2-core machine the prompting took 26 minutes of wall time. Worlds 4 and 7 were added later
with ``--worlds 4 7`` in two processes (prompting; LoRA seeds 0 and 1) at load ~2.5: 768 prompting answers in
327 CPU-s, each LoRA with its 230 answers 136-154 CPU-s, 7 minutes of wall time for both.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from rag_smollm2 import greedy  # noqa: E402  chapter 6's greedy ChatML answer, reused

from course_utils import finetune as ft  # noqa: E402
from course_utils import rag, rag_llm, smollm2  # noqa: E402
from course_utils.checksums import write_sha256  # noqa: E402
from course_utils.train import TrainConfig, TrainHooks, train  # noqa: E402
from course_utils.world import make_world  # noqa: E402

CACHE = ROOT / ".cache" / "ch7_smollm2"
WORLDS, SEEDS, N_ENTITIES, K = (0, 4, 7), (0, 1), 12, 4  # the toy study's sizes; world 0 is the lesson's
MAX_NEW_TOKENS, MAX_SEQ_LEN = 12, 512
# LoRA on every projection of the top 4 of 30 blocks only: the 26 frozen blocks below see the same inputs at every
# step, so their outputs are computed once per training text and each step runs 4 blocks (a CPU budget: on a shared
# 2-core machine the top-8 version did not finish in an hour)
FIRST_ADAPTED = 26
LORA = {"r": 8, "alpha": 16, "blocks": f"{FIRST_ADAPTED}-29", "steps": 80, "lr": 3e-3, "batch_size": 8, "warmup": 10}
LORA["targets"] = [
    f"blocks.{i}.{m}"
    for i in range(FIRST_ADAPTED, 30)
    for m in ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj", "ffn.w1", "ffn.w2", "ffn.w3")
]


def user_turn(prompt: str) -> str:
    return f"{rag_llm.CH7_INSTRUCTION}\n\n{prompt}"


def bits(hits) -> str:
    return "".join("1" if h else "0" for h in hits)


class Answers:
    """Greedy answers of one model (``tag``), logged so a rerun skips them."""

    def __init__(self, model, tok, tag: str, part: str):
        self.model, self.tok, self.tag = model, tok, tag
        self.log = CACHE / f"answers-{part}.jsonl"
        self.done = {}
        for f in CACHE.glob("answers-*.jsonl"):
            for line in f.read_text(encoding="utf-8").splitlines():
                r = json.loads(line)
                self.done[r["key"]] = r["answer"]

    def __call__(self, user: str) -> str:
        key = f"{self.tag}|{hashlib.sha256(user.encode()).hexdigest()[:20]}"
        if key not in self.done:
            self.done[key] = greedy(self.model, self.tok, user, MAX_NEW_TOKENS)
            with self.log.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"key": key, "answer": self.done[key]}) + "\n")
        return self.done[key]


class Setting:
    def __init__(self, world_seed: int, embed, tok):
        self.world = make_world(world_seed, N_ENTITIES)
        self.retrieve = ft.fact_retriever(self.world.statements(None), index=rag.DenseIndex())
        self.embed, self.tok = embed, tok
        held = set(ft.knowledge_split(self.world)["val_facts"])
        self.trained = [i for i in range(len(self.world.facts)) if i not in held]

    def ask(self, answer: Answers, method: str, split: str, which=None) -> tuple[str, list[str], float]:
        """Per-question bits, the answers and SmolLM2 prompt tokens per query of ``method`` on ``split``."""
        w = self.world
        idx = list(range(len(w.facts))) if which is None else which
        qs = [w.qa_pairs(split)[i][0] for i in idx]
        users = [
            user_turn(p) for p in ft.knowledge_prompts(method, w, qs, k=K, embed=self.embed, retrieve=self.retrieve)
        ]
        said = [answer(u) for u in users]
        hits = [rag_llm.names_value(a, w.facts[i].value, w.values[w.facts[i].attribute]) for a, i in zip(said, idx)]
        n_tok = [
            len(self.tok.encode(smollm2.chat_prompt([{"role": "user", "content": u}]), allowed_special="all"))
            for u in users
        ]
        return bits(hits), said, round(sum(n_tok) / len(n_tok), 1)


def lora_items(s: Setting) -> list[tuple[list[int], int]]:
    """``(token ids, first scored position)``: statements whole, chat Q/A turns on the answer only."""
    tok, w = s.tok, s.world
    items = [(tok.encode(st), 1) for st in w.statements(None)]
    for i in s.trained:
        q, a = w.qa_pairs("train")[i]
        chat = smollm2.chat_prompt([{"role": "user", "content": user_turn(ft.few_shot_prompt([], q))}])
        p = tok.encode(chat, allowed_special="all")
        items.append((p + tok.encode(a + "<|im_end|>", allowed_special="all"), len(p)))
    return items


def batch(items) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded inputs and targets (-1: not scored); with a causal model padding after a text changes nothing."""
    T = max(len(ids) for ids, _ in items) - 1
    x = torch.zeros(len(items), T, dtype=torch.long)
    y = torch.full((len(items), T), -1, dtype=torch.long)
    for row, (ids, start) in enumerate(items):
        x[row, : len(ids) - 1] = torch.tensor(ids[:-1])
        y[row, start - 1 : len(ids) - 1] = torch.tensor(ids[start:])  # position start-1 predicts token start
    return x, y


@torch.no_grad()
def frozen_states(model, items) -> list[torch.Tensor]:
    """Each text's hidden states [T, d] after the frozen blocks below FIRST_ADAPTED (one text at a time)."""
    out = []
    for ids, _ in items:
        x = model.tok_emb(torch.tensor([ids[:-1]]))
        for block in model.blocks[:FIRST_ADAPTED]:
            x, _ = block(x)
        out.append(x[0])
    return out


def top_loss(model, states: list[torch.Tensor], items) -> torch.Tensor:
    """The model's loss on ``items`` from their cached frozen states: the adapted blocks, the final norm and the
    output layer on the scored positions only (the 49,152-wide output layer is the costliest matrix)."""
    x0, y = batch(items)
    h = torch.zeros(*x0.shape, states[0].shape[-1])
    for row, s in enumerate(states):
        h[row, : len(s)] = s
    for block in model.blocks[FIRST_ADAPTED:]:
        h, _ = block(h)
    keep = y >= 0
    return torch.nn.functional.cross_entropy(model.lm_head(model.norm(h[keep])), y[keep])


def lora_model(s: Setting, seed: int) -> tuple[torch.nn.Module, dict]:
    """SmolLM2 with a LoRA trained on the world (or its cached adapter), merged for answering."""
    from safetensors.torch import load_file, save_file

    torch.manual_seed(seed)  # LoRA's random A
    model = ft.apply_lora(
        smollm2.load_model(MAX_SEQ_LEN), r=LORA["r"], alpha=LORA["alpha"], target_modules=LORA["targets"]
    )
    path = CACHE / f"lora-w{s.world.seed}-s{seed}.safetensors"
    if path.exists():
        model.load_state_dict(load_file(str(path)), strict=False)
        hist = json.loads(path.with_suffix(".json").read_text())
    else:
        items, rng, order = lora_items(s), random.Random(seed), []
        c0 = time.process_time()
        states = frozen_states(model, items)

        def loss_fn(model, step):
            nonlocal order
            if not order:  # an epoch: statements and chat turns batched apart (similar lengths, little padding)
                kinds = [[i for i, (_, start) in enumerate(items) if (start == 1) == plain] for plain in (True, False)]
                for ids in kinds:
                    rng.shuffle(ids)
                order = [
                    ids[j : j + LORA["batch_size"]] for ids in kinds for j in range(0, len(ids), LORA["batch_size"])
                ]
                rng.shuffle(order)
            idx = order.pop()
            return top_loss(model, [states[i] for i in idx], [items[i] for i in idx])

        model.train()
        config = TrainConfig(
            steps=LORA["steps"],
            lr=LORA["lr"],
            warmup=LORA["warmup"],
            weight_decay=0.0,
            betas=(0.9, 0.999),
            grad_clip=1.0,
            seed=seed,
            progress=False,
            eval_every=None,
        )
        h = train(model, None, config, hooks=TrainHooks(loss_fn=loss_fn))
        loss = h["train_loss"]
        hist = {
            "cpu_seconds": round(time.process_time() - c0),  # the frozen states and the steps, all threads
            "steps": len(loss),
            "seconds": round(h["time"][-1], 1),
            "texts": len(items),
            "first_loss": round(sum(loss[:10]) / 10, 2),
            "last_loss": round(sum(loss[-10:]) / 10, 2),
            "trainable": ft.count_parameters(model)["trainable"],
        }
        hist["steps_per_s"] = round(hist["steps"] / hist["seconds"], 3)
        CACHE.mkdir(parents=True, exist_ok=True)
        save_file({n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}, str(path))
        path.with_suffix(".json").write_text(json.dumps(hist))
    ft.merge_lora(model)
    return model.eval(), hist


LORA_ORDER = ("closed/eval", "rag/eval", "closed/trained", "closed/unseen", "rag/unseen")  # eval phrasing first


def run_part(part: str, worlds, seeds, methods=ft.PROMPT_METHODS, lora_order=LORA_ORDER) -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    out_path = CACHE / f"part-{part}.json"
    data = json.loads(out_path.read_text()) if out_path.exists() else {"prompting": {}, "runs": {}, "answers": {}}
    tok = smollm2.load_tokenizer()
    embed = ft.memo_embed(lambda texts: rag.embed(list(texts)))
    for w in worlds:
        s = Setting(w, embed, tok)
        if part.startswith("prompting"):
            t0, c0 = time.perf_counter(), time.process_time()
            ans = Answers(smollm2.load_model(MAX_SEQ_LEN), tok, "base", part)
            cells = data["prompting"].setdefault(str(w), {})
            for split in ("eval", "unseen"):  # every method's eval phrasing first: a cut-short run ships those
                for m in methods:
                    b, said, n_tok = s.ask(ans, m, split)
                    cells.setdefault(m, {})[split] = b
                    cells[m]["tokens"] = n_tok
                    data["answers"][f"{w}/{m}/{split}"] = said
                    print(f"world {w} {m:17s} {split:7s} {b.count('1')}/{len(b)}", flush=True)
                    data["seconds_prompting"] = round(time.perf_counter() - t0)
                    data["cpu_seconds_prompting"] = round(time.process_time() - c0)
                    save(data, out_path)
        else:
            for seed in seeds:
                key = f"{w}/{seed}/LoRA"
                t0, c0 = time.perf_counter(), time.process_time()
                model, hist = lora_model(s, seed)
                print(f"{key}: {hist}", flush=True)
                ans = Answers(model, tok, f"lora-w{w}-s{seed}", part)
                run = data["runs"].setdefault(key, {"closed": {}, "rag": {}})
                for where, split in (x.split("/") for x in lora_order):  # a cut-short run ships the first
                    method = "zero-shot" if where == "closed" else "RAG"
                    which = s.trained if split == "trained" else None
                    b, said, _ = s.ask(ans, method, "train" if split == "trained" else split, which)
                    run[where][split] = b
                    data["answers"][f"{key}/{where}/{split}"] = said
                    print(f"{key} {where:6s} {split:7s} {b.count('1')}/{len(b)}", flush=True)
                    run["history"] = hist | {
                        "seconds_total": round(time.perf_counter() - t0),
                        "cpu_seconds_total": round(time.process_time() - c0),
                    }
                    save(data, out_path)


def save(data: dict, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def write(path: Path = rag_llm.CH7_ASSET) -> dict:
    """Assemble the part files into the shipped asset, with its ``.sha256`` sidecar."""
    data: dict = {"prompting": {}, "runs": {}, "behaviour": {}, "answers": {}}
    seconds = {}
    if path.exists():  # the shipped file is the base: a run on more worlds or seeds extends it
        shipped = json.loads(path.read_text(encoding="utf-8"))
        for key in data:
            data[key] = shipped.get(key, {})
        seconds = shipped["meta"]["seconds"]
    for part in sorted(CACHE.glob("part-*.json")):
        d = json.loads(part.read_text(encoding="utf-8"))
        for w, cells in d["prompting"].items():  # parts may hold different methods of one world
            data["prompting"].setdefault(w, {}).update(cells)
        for key, run in d["runs"].items():  # parts may hold different splits of one run
            have = data["runs"].setdefault(key, {"closed": {}, "rag": {}})
            have["closed"].update(run["closed"])
            have["rag"].update(run["rag"])
            if run["history"]["cpu_seconds_total"] > have.get("history", {}).get("cpu_seconds_total", -1):
                have["history"] = run["history"]
        data["answers"].update(d["answers"])
        if "seconds_prompting" in d:
            seconds[part.stem[5:]] = {"wall": d["seconds_prompting"], "cpu": d["cpu_seconds_prompting"]}
    for key, run in data["runs"].items():
        seconds[key] = {"wall": run["history"]["seconds_total"], "cpu": run["history"]["cpu_seconds_total"]}
    data["meta"] = {
        "script": "scripts/study_ch7_smollm2.py",
        "model": f"SmolLM2-135M-Instruct ({smollm2.GGUF_NAME}, sha256 {smollm2.GGUF_SHA256[:12]}…), course GPT, "
        "float32",
        "worlds": sorted(int(w) for w in data["prompting"]),
        "seeds": sorted({int(k.split("/")[1]) for k in data["runs"]}),
        "kinds": ["LoRA"],
        "n_entities": N_ENTITIES,
        "k": K,
        "prompt": "ChatML, default system turn, one user turn: rag_llm.CH7_INSTRUCTION + blank line + "
        "finetune.knowledge_prompts(method, ...) (k = 4; RAG: dense retriever over both statement phrasings)",
        "instruction": rag_llm.CH7_INSTRUCTION,
        "decoding": f"greedy, at most {MAX_NEW_TOKENS} new tokens (scripts/rag_smollm2.greedy)",
        "scoring": "rag_llm.names_value: the answer names the fact's value and no other value of the attribute",
        "lora": LORA
        | {
            "data": "both phrasings of every statement (plain text, every token scored) + the train-"
            "phrasing chat Q/A of the trained facts (answer + <|im_end|> scored)",
            "optimizer": "course_utils.train.train: AdamW, no weight decay, warm-up then cosine, clipping at 1",
        },
        "seconds": seconds,
        "threads": "1 per process; 2-4 processes side by side on a shared 2-core machine (world 0 at load 10-17, "
        "worlds 4 and 7 at load ~2.5)",
        "torch": torch.__version__,
        "machine": platform.machine(),
        "bits": "per-question hits in the world's fact order ('1' right); 'trained': the trained facts only, "
        "train phrasing; not measured here: the updated world (new/old), reading, behaviour",
    }
    path.write_text(json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    write_sha256(path)
    return data


def summary(data: dict) -> None:
    for m in (*ft.PROMPT_METHODS, "LoRA", "LoRA + RAG"):
        print(f"{m:17s}", "  ".join(f"{s}: {ft.study_cell(data, m, s)}" for s in ("trained", "eval", "unseen")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("prompting", "lora", "all"), default="all")
    ap.add_argument("--worlds", type=int, nargs="+", default=list(WORLDS))
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lora-order", nargs="+", default=list(LORA_ORDER), help="LoRA answers of this part, in order")
    ap.add_argument("--methods", nargs="+", default=list(ft.PROMPT_METHODS), help="prompting methods of this part")
    ap.add_argument("--write", action="store_true", help="only assemble the part files into the asset")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not args.write:
        for part in ("prompting", "lora") if args.part == "all" else (args.part,):
            if part == "prompting":
                name = (
                    "prompting"
                    if args.methods == list(ft.PROMPT_METHODS)
                    else "prompting-" + "-".join(m.replace(" ", "_") for m in args.methods)
                )
            else:
                name = f"lora-{'-'.join(map(str, args.seeds))}"
                if args.lora_order != list(LORA_ORDER):
                    name += "-" + "-".join(x.replace("/", "_") for x in args.lora_order)
            if args.worlds != list(WORLDS):  # its own part file, so the shipped worlds' timings stay apart
                name += "-w" + "-".join(map(str, args.worlds))
            run_part(name, args.worlds, args.seeds, args.methods, args.lora_order)
    if args.write or args.part == "all":
        summary(write())


if __name__ == "__main__":
    main()
