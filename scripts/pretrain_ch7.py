"""Pretrain chapter 7's base model: a character-level tiny GPT that can answer a question from context.

Seeded and CPU-only, one thread. The training text mixes the course corpus (chapter 3) with reading-comprehension
documents about freshly generated synthetic worlds (``course_utils.finetune.reading_comprehension_text``) — never
the lesson's world (seed 0), and never the behaviour task's ``{"answer": ...}`` format.

- stage 1: next-character prediction on that mix (the cosine schedule spans ``--steps``; ``--stop-after`` ends
  early, after saving);
- stage 2 (``--sft-steps``): the same kind of documents, loss on each document's last answer only.

Writes ``course_utils/assets/ft_base.safetensors`` (+ ``.json`` config and metadata, + ``.sha256``). The shipped
checkpoint was made in two runs (``--resume`` starts stage 2 from a saved checkpoint; the JSON's
``stage2_history`` records both)::

    python scripts/pretrain_ch7.py --stop-after 700 --sft-steps 400      # ~30 + 12 min on one busy core
    python scripts/pretrain_ch7.py --resume course_utils/assets/ft_base.safetensors \
        --sft-steps 4000 --sft-data-seed 8                                # ~19 min on one core

After the first run the model answered in the right *format* but read a fact from its prompt 8% of the time;
after the second, 100% (one given statement) and 75% (the statement among three distractors).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from course_utils import seed_everything
from course_utils.data import course_corpus
from course_utils.finetune import (
    BASE_CHECKPOINT,
    GPT_META,
    FinetuneConfig,
    TextStream,
    base_config,
    finetune,
    reading_comprehension_text,
)
from course_utils.model import GPT, load_checkpoint, save_checkpoint, write_sha256
from course_utils.train import TrainConfig, TrainHooks, train


def build_text(seed: int, n_docs: int, corpus_chars: int) -> tuple[str, str]:
    docs = reading_comprehension_text(seed, n_docs)
    corpus = course_corpus(seed=seed)
    # one corpus paragraph after every 3 reading-comprehension documents: ~1/4 of the characters are corpus text
    paras = [p for p in corpus.split("\n\n") if p.strip()]
    out, used, j = [], 0, 0
    for i, d in enumerate(docs):
        out.append(d)
        if i % 3 == 2 and used < corpus_chars and j < len(paras):
            out.append(paras[j] + "\n")
            used += len(paras[j])
            j += 1
    train = "\n".join(out)
    val = "\n".join(reading_comprehension_text(seed + 1, 300))
    return train, val


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch-size", type=int, default=20)
    ap.add_argument("--block-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--save-every", type=int, default=100)
    ap.add_argument(
        "--stop-after",
        type=int,
        default=None,
        help="stop (after saving) at this step; the schedule still follows --steps",
    )
    ap.add_argument(
        "--sft-steps",
        type=int,
        default=0,
        help="stage 2: steps of reading-comprehension training with the loss on the answers only",
    )
    ap.add_argument("--sft-lr", type=float, default=2e-3)
    ap.add_argument("--sft-batch-size", type=int, default=16)
    ap.add_argument(
        "--sft-data-seed",
        type=int,
        default=None,
        help="seed of stage 2's documents (default: --seed + 7); a new one gives a resumed run fresh text",
    )
    ap.add_argument("--resume", default=None, help="skip stage 1: start stage 2 from this stage-1 checkpoint")
    ap.add_argument("--out", default=str(BASE_CHECKPOINT))
    args = ap.parse_args()

    seed_everything(args.seed)
    torch.set_num_threads(args.threads)
    if args.resume:
        model, meta = (
            load_checkpoint(args.resume),
            json.loads(Path(args.resume).with_suffix(".json").read_text())["meta"],
        )
    else:
        model, meta = stage1(args)
    if args.sft_steps:
        stage2(model, meta, args)


def stage2(model, meta: dict, args) -> None:
    """Answer-only training on one-question reading-comprehension samples: every gradient goes to reading.

    Stage 1's language-model loss spreads over every character (most are template text or unpredictable names);
    here only the answer after the last ``A:`` counts, a much denser signal for "find the fact, copy the value".
    """
    limit = model.config.max_seq_len
    # the loss falls on each document's last answer; documents longer than the model's window are skipped
    data_seed = args.seed + 7 if args.sft_data_seed is None else args.sft_data_seed
    samples = [d for d in reading_comprehension_text(data_seed, 20_000) if len(d) < limit]
    model.train()
    config = FinetuneConfig(
        steps=args.sft_steps,
        lr=args.sft_lr,
        batch_size=args.sft_batch_size,
        answer_only=True,
        seed=args.seed,
        desc="stage 2",
    )
    hist = finetune(model, samples, config)
    # a resumed run keeps the earlier stage-2 runs in `stage2_history`, so the checkpoint says how it was made
    history = list(meta.get("stage2_history", []))
    if "sft_steps" in meta and not history:
        history.append({k: meta[k] for k in ("sft_steps", "sft_lr", "sft_batch_size", "sft_final_loss") if k in meta})
    history.append(
        dict(
            sft_steps=args.sft_steps,
            sft_lr=args.sft_lr,
            sft_batch_size=args.sft_batch_size,
            sft_data_seed=data_seed,
            sft_final_loss=round(hist["train_loss"][-1], 4),
        )
    )
    meta = dict(
        meta,
        sft_steps=sum(h["sft_steps"] for h in history),
        stage2_history=history,
        sft_final_loss=round(hist["train_loss"][-1], 4),
    )
    path = save_checkpoint(model, args.out, meta=meta, sha256=True)  # + the sidecars of weights and config
    write_sha256(path, path.with_suffix(".sha256"))  # the record finetune.load_base_model reads today
    print(
        f"saved {path} after stage 2 ({args.sft_steps} steps, {hist.seconds:.0f} s): loss "
        f"{hist['train_loss'][0]:.3f} -> {hist['train_loss'][-1]:.3f}",
        flush=True,
    )


def stage1(args):
    """Next-character prediction on the mix, with the course's one training loop (:func:`course_utils.train.train`)."""
    train_text, val_text = build_text(args.seed, n_docs=30_000, corpus_chars=4_000_000)
    data = TextStream(train_text, val_text)
    print(f"train {len(train_text):,} chars, val {len(val_text):,} chars")
    model = GPT(base_config())
    saved: dict = {}

    def every_step(history) -> bool:
        """Log, save every ``--save-every`` steps (with a validation loss), stop at ``--stop-after``."""
        done, loss = history["step"][-1], history["train_loss"][-1]
        if done % 25 == 0:
            print(f"step {done} loss {loss:.3f} {history['time'][-1]:.0f}s", flush=True)
        if done % args.save_every == 0 or done == args.steps:
            model.eval()
            with torch.no_grad():
                vx, vy = data.get_batch("val", 32, args.block_size, torch.Generator().manual_seed(1))
                val = model(vx, vy)[1].item()
            model.train()
            saved["meta"] = dict(
                GPT_META,
                steps=done,
                schedule_steps=args.steps,
                seed=args.seed,
                batch_size=args.batch_size,
                block_size=args.block_size,
                lr=args.lr,
                val_loss=round(val, 4),
            )
            path = save_checkpoint(model, args.out, meta=saved["meta"], sha256=True)
            write_sha256(path, path.with_suffix(".sha256"))
            print(f"saved {path} at step {done}: val loss {val:.3f}", flush=True)
            return args.stop_after is not None and done >= args.stop_after
        return False

    config = TrainConfig(
        steps=args.steps,
        lr=args.lr,
        warmup=100,
        batch_size=args.batch_size,
        block_size=args.block_size,
        grad_clip=1.0,
        weight_decay=0.1,
        seed=args.seed,
        eval_every=None,
        progress=False,
        desc="stage 1",
    )
    train(model, data, config, hooks=TrainHooks(on_step=every_step))
    model.train()
    return model, saved["meta"]


if __name__ == "__main__":
    main()
