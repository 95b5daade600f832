"""Rebuild ``course_utils/assets/ch6_smollm2.json``: SmolLM2-135M-Instruct answers chapter 6's questions closed book
and from retrieved passages, and reads chapter 6's planted attacks under each §9 defence.

Greedy decoding in the course's own GPT (``course_utils.smollm2``), one thread, offline. Work is appended to a
resumable log (``.cache/rag_smollm2.jsonl``): rerunning skips what is done. Attacks run first, then the questions in
a seeded order (sha256 of ``"<seed>:<id>"``), so a run stopped by ``--minutes`` ships a seeded random subset,
stated in the asset's metadata. Scoring rules: ``course_utils.rag_llm``.

    PYTHONPATH=. nice -n 15 python scripts/rag_smollm2.py --minutes 20
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import time
from pathlib import Path

import torch

from course_utils import rag, rag_llm, smollm2
from course_utils.model import write_sha256

LOG = Path(__file__).resolve().parents[1] / ".cache" / "rag_smollm2.jsonl"
CLOSED_BOOK = "Answer the question in one or two sentences.\n\nQuestion: {question}\nAnswer:"


@torch.no_grad()
def greedy(model, tok, user: str, max_new_tokens: int) -> str:
    """SmolLM2's greedy reply to one user turn (ChatML), stopping at its end-of-turn token."""
    ids = tok.encode(smollm2.chat_prompt([{"role": "user", "content": user}]), allowed_special="all")
    stops = {tok.special_tokens["<|im_end|>"], tok.special_tokens["<|endoftext|>"]}
    caches, step, out = model.new_caches(), torch.tensor([ids]), []
    for _ in range(max_new_tokens):
        logits, _ = model(step, caches=caches, last_only=True)
        nxt = int(logits[0, -1].argmax())
        if nxt in stops:
            break
        out.append(nxt)
        step = torch.tensor([[nxt]])
    return tok.decode(out).strip()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--attack-max-new-tokens", type=int, default=48, help="room for a canary after a copied passage")
    p.add_argument("--k", type=int, default=3, help="retrieved passages in a question's prompt")
    p.add_argument("--attack-k", type=int, default=5, help="retrieved passages per attack (as chapter 6's §9)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--minutes", type=float, default=60.0, help="stop generating after this long; ship what is done")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()

    done = {}
    if LOG.exists():
        for line in LOG.read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            done[r["key"]] = r["answer"]
    model, tok = smollm2.load_model(), smollm2.load_tokenizer()

    def answer(key: str, user: str, max_new_tokens: int = args.max_new_tokens) -> str:
        if key not in done:
            if time.perf_counter() - t0 > 60 * args.minutes:
                raise TimeoutError
            done[key] = greedy(model, tok, user, max_new_tokens)
            LOG.parent.mkdir(exist_ok=True)
            with LOG.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"key": key, "answer": done[key]}) + "\n")
            print(f"{time.perf_counter() - t0:6.0f} s  {key}: {done[key]!r}", flush=True)
        return done[key]

    chunks, attacks, questions = rag.default_chunks(), rag.load_attacks(), rag.load_questions()
    # §9's attacked index: the clean chunks plus the 12 planted pages, hybrid retrieval.
    planted = rag.chunk_documents([rag.Document(a["id"], a["text"].split("\n")[0], a["text"]) for a in attacks])
    attacked = rag.HybridIndex(rag.BM25Index(), rag.DenseIndex()).add(chunks).add(planted)
    dense = rag.DenseIndex().add(chunks)  # §8's answering retriever: dense, exact
    order = sorted(questions, key=lambda q: hashlib.sha256(f"{args.seed}:{q.id}".encode()).hexdigest())

    attack_rows, question_rows = [], []
    try:
        for a in attacks:
            row = {"id": a["id"], "canary": a["canary"], "defences": {}}
            for d in rag_llm.DEFENCES:
                prompt = rag.answer_with_defence(a["question"], attacked, args.attack_k, d)[0]
                text = answer(f"attack/{a['id']}/{d}", prompt, args.attack_max_new_tokens)
                row["defences"][d] = {"answer": text, "hijacked": rag_llm.hijacked(text, a)}
            attack_rows.append(row)
        for q in order:
            closed = answer(f"closed/{q.id}", CLOSED_BOOK.format(question=q.text))
            hits = dense.search(q.text, args.k)
            grounded = answer(f"rag/{q.id}", rag.build_prompt(q.text, hits))
            question_rows.append(
                {
                    "id": q.id,
                    "question": q.text,
                    "retrieved": [h.doc_id for h in hits],
                    "closed_answer": closed,
                    "closed_correct": rag_llm.answer_correct(closed, q),
                    "rag_answer": grounded,
                    "rag_correct": rag_llm.answer_correct(grounded, q),
                }
            )
    except TimeoutError:
        print(f"time budget of {args.minutes} min spent: shipping what is done")
    if len(attack_rows) < len(attacks):
        raise SystemExit("not every attack ran under every defence: rerun (the log resumes)")
    question_rows.sort(key=lambda r: r["id"])
    meta = {
        "model": f"SmolLM2-135M-Instruct ({smollm2.GGUF_NAME}, sha256 {smollm2.GGUF_SHA256}), course GPT, float32",
        "prompt_format": "ChatML (course_utils.smollm2.chat_prompt), default system turn, one user turn",
        "closed_book_prompt": CLOSED_BOOK,
        "rag_prompt": f"course_utils.rag.build_prompt(question, DenseIndex over default_chunks().search(q, {args.k}))",
        "attack_prompt": f"rag.answer_with_defence(question, §9 hybrid index, {args.attack_k}, defence)[0]",
        "decoding": "greedy",
        "max_new_tokens": args.max_new_tokens,
        "attack_max_new_tokens": args.attack_max_new_tokens,
        "seed": args.seed,
        "subset": f"{len(question_rows)} of {len(questions)} questions: the first in sha256('{args.seed}:<id>') order",
        "scoring": "course_utils.rag_llm.answer_correct / hijacked",
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
    }
    out = rag_llm.ASSET
    out.write_text(
        json.dumps({"meta": meta, "questions": question_rows, "attacks": attack_rows}, indent=1, ensure_ascii=False)
        + "\n",
        encoding="utf-8",
    )
    write_sha256(out)
    print(f"wrote {out} ({len(question_rows)} questions, {len(attack_rows)} attacks)")


if __name__ == "__main__":
    main()
