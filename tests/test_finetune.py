"""Chapter 7: LoRA from scratch (pinned to peft), prompts, metrics, fine-tuning and decoding."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn as nn

from course_utils import finetune as ft
from course_utils.model import GPT, GPTConfig
from course_utils.train import History, TrainConfig, TrainHooks, train


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.q = nn.Linear(8, 6)
        self.v = nn.Linear(8, 6, bias=False)
        self.out = nn.Linear(12, 3)

    def forward(self, x):
        return self.out(torch.cat([torch.tanh(self.q(x)), self.v(x)], dim=-1))


TEXTS = ["Q: Where does Ann live?\nA: Rome\n", "Q: What pet does Bo keep?\nA: owl\n"]


@pytest.fixture(autouse=True)
def one_thread():
    # tiny models: one thread is faster, and avoids OpenMP oversubscription on a shared 2-core machine
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_gpt(seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=ft.VOCAB_SIZE, d_model=32, n_layers=2, n_heads=2, max_seq_len=64))


def randomize_adapters(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, ft.LoRALinear):
            with torch.no_grad():
                m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.1)


# ------------------------------------------------------------------------------------------------ LoRA
def test_lora_linear_starts_identical_and_has_zero_B():
    torch.manual_seed(0)
    base = nn.Linear(16, 12)
    layer = ft.LoRALinear(base, r=4, alpha=8)
    x = torch.randn(3, 5, 16)
    assert torch.equal(layer(x), base(x))
    assert torch.count_nonzero(layer.lora_B) == 0 and torch.count_nonzero(layer.lora_A) > 0
    assert layer.scaling == 2.0 and tuple(layer.lora_A.shape) == (4, 16) and tuple(layer.lora_B.shape) == (12, 4)


def test_lora_forward_matches_formula_and_layer():
    torch.manual_seed(0)
    x, W, b = torch.randn(4, 10), torch.randn(7, 10), torch.randn(7)
    A, B = torch.randn(3, 10), torch.randn(7, 3)
    expected = x @ W.T + b + 0.5 * (x @ (B @ A).T)
    assert torch.allclose(ft.lora_forward(x, W, b, A, B, 0.5), expected, atol=1e-5)
    layer = ft.LoRALinear(nn.Linear(10, 7), r=3, alpha=1.5)
    with torch.no_grad():
        layer.base.weight.copy_(W), layer.base.bias.copy_(b), layer.lora_A.copy_(A), layer.lora_B.copy_(B)
    assert torch.allclose(layer(x), expected, atol=1e-5)
    with pytest.raises(ValueError, match="A must be"):
        ft.lora_forward(x, W, b, torch.randn(3, 10), torch.randn(7, 2), 1.0)


def test_apply_lora_gpt_starts_identical_and_only_adapters_get_gradients():
    model = tiny_gpt()
    idx = torch.randint(0, ft.VOCAB_SIZE, (2, 20))
    before = model(idx)[0]
    ft.apply_lora(model, r=4, alpha=8)
    assert torch.equal(model(idx)[0], before)
    _, loss = model(idx, idx)
    loss.backward()
    for name, p in model.named_parameters():
        if "lora_" in name:
            assert p.requires_grad and p.grad is not None, name
        else:
            assert not p.requires_grad and p.grad is None, name
    n_lora = sum(1 for m in model.modules() if isinstance(m, ft.LoRALinear))
    assert n_lora == 2 * 7  # q, k, v, o + w1, w2, w3 in each of 2 blocks
    counts = ft.count_parameters(model)
    expected = sum(
        m.r * (m.base.in_features + m.base.out_features) for m in model.modules() if isinstance(m, ft.LoRALinear)
    )
    assert counts["trainable"] == expected and 0 < counts["fraction"] < 0.2


def test_merge_equals_unmerged_and_removes_adapters():
    model = ft.apply_lora(tiny_gpt(), r=4, alpha=16, target_modules=["q_proj", "v_proj", "w2"])
    randomize_adapters(model)
    idx = torch.randint(0, ft.VOCAB_SIZE, (2, 16))
    with torch.no_grad():
        unmerged = model(idx)[0]
        ft.merge_lora(model)
        merged = model(idx)[0]
    assert not any(isinstance(m, ft.LoRALinear) for m in model.modules())
    assert torch.allclose(merged, unmerged, atol=1e-5)
    assert not torch.allclose(unmerged, tiny_gpt()(idx)[0], atol=1e-3)  # the adapters did change the model
    with pytest.raises(ValueError, match="no LoRALinear"):
        ft.merge_lora(model)


def test_apply_lora_bad_input():
    with pytest.raises(ValueError, match="no nn.Linear matched"):
        ft.apply_lora(Tiny(), 2, 4, ["nope"])
    with pytest.raises(TypeError, match="target_modules"):
        ft.apply_lora(Tiny(), 2, 4, "q")
    with pytest.raises(ValueError, match="r must be"):
        ft.LoRALinear(nn.Linear(3, 3), 0, 1)
    with pytest.raises(TypeError, match="base must be"):
        ft.LoRALinear(nn.Conv1d(3, 3, 1), 2, 1)


@pytest.mark.parametrize("r,alpha", [(2, 4), (4, 1), (8, 32)])
def test_equals_peft_lora(r, alpha):
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    base = Tiny()
    ours = ft.apply_lora(copy.deepcopy(base), r=r, alpha=alpha, target_modules=["q", "v"])
    theirs = peft.get_peft_model(
        copy.deepcopy(base), peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=["q", "v"])
    )
    x = torch.randn(5, 8)
    assert torch.allclose(theirs(x), ours(x), atol=1e-6)  # both start as the base model
    randomize_adapters(ours)
    for name in ("q", "v"):  # give peft our adapter weights
        mine = getattr(ours, name)
        layer = theirs.base_model.model.get_submodule(name)
        with torch.no_grad():
            layer.lora_A["default"].weight.copy_(mine.lora_A)
            layer.lora_B["default"].weight.copy_(mine.lora_B)
        assert layer.scaling["default"] == mine.scaling
    assert torch.allclose(theirs(x), ours(x), atol=1e-6)
    trainable, total = theirs.get_nb_trainable_parameters()
    counts = ft.count_parameters(ours)
    assert (counts["trainable"], counts["total"]) == (trainable, total)
    merged_theirs = theirs.merge_and_unload()
    ft.merge_lora(ours)
    assert torch.allclose(merged_theirs.q.weight, ours.q.weight, atol=1e-6)
    assert torch.allclose(merged_theirs(x), ours(x), atol=1e-6)


# ------------------------------------------------------------------------------------------------ prompts and metrics
def test_prompts_layout():
    ex = [("Where does Ann live?", "Rome"), ("What pet does Bo keep?", "owl")]
    assert (
        ft.few_shot_prompt(ex, "Who?")
        == "Q: Where does Ann live?\nA: Rome\nQ: What pet does Bo keep?\nA: owl\nQ: Who?\nA:"
    )
    assert ft.few_shot_prompt([], "Who?") == "Q: Who?\nA:"
    assert (
        ft.rag_prompt("Who?", ["Ann lives in Rome.", "Bo is here."])
        == "Facts:\nAnn lives in Rome.\nBo is here.\nQ: Who?\nA:"
    )
    with pytest.raises(TypeError, match=r"examples\[0\]"):
        ft.few_shot_prompt(["not a pair"], "Who?")
    with pytest.raises(ValueError, match="question"):
        ft.few_shot_prompt(ex, "  ")


def test_build_prompt_is_chapter_6s_layout_with_facts_and_examples(monkeypatch):
    # the stored outputs of notebook 07 show these strings: the layout must not move by a character
    ex = [("Where does Ann live?", "Rome")]
    want = "Facts:\nAnn lives in Rome.\n\nQ: Where does Ann live?\nA: Rome\nQ: Who?\nA:"
    assert ft.build_prompt("Who?", facts=["Ann lives in Rome.", ""], examples=ex) == want
    assert ft.build_prompt("Who?", facts=[], examples=[]) == "Q: Who?\nA:"
    calls = []  # one home: the prompt is assembled by rag.assemble_prompt, not by a second template here
    monkeypatch.setattr(ft, "assemble_prompt", lambda *a, **kw: calls.append((a, kw)) or "spied")
    assert ft.build_prompt("Who?", examples=ex) == "spied" and calls[0][1]["cue"] == ("Q:", "A:")


@pytest.mark.parametrize(
    "pred,ref,ok",
    [
        ("Rome", "Rome", True),
        ("  rome ", "Rome", True),
        ("Rome.", "rome", True),
        ("New   York", "new york", True),
        ("Rom", "Rome", False),
        ("Rome Rome", "Rome", False),
        ("", "Rome", False),
        ("", "", True),
    ],
)
def test_exact_match(pred, ref, ok):
    assert ft.exact_match(pred, ref) is ok


@pytest.mark.parametrize(
    "out,ok",
    [
        ('{"answer": "Rome"}', True),
        (' {"answer": "Rome"} ', True),
        ('{"answer": ""}', False),
        ('{"answer":"Rome"}', False),
        ("Rome", False),
        ('{"answer": "Rome"', False),
        ('{"answer": "Rome"} ok', False),
    ],
)
def test_format_compliance(out, ok):
    assert ft.format_compliance(out) is ok
    assert (ft.parse_json_answer(out) is not None) == (ok or out.strip() == '{"answer": ""}')


def test_render_json_round_trip():
    assert ft.parse_json_answer(ft.render_json_answer("Tekon")) == "Tekon"
    assert ft.format_compliance(ft.render_json_answer("Tekon"))


def test_select_examples_by_similarity():
    pool = [
        ("Where does Ann live?", "Rome"),
        ("What pet does Ann keep?", "owl"),
        ("Where does Bo live?", "Oslo"),
        ("What colour is the sky?", "blue"),
    ]
    got = ft.select_examples_by_similarity("Where does Bo live now?", pool, k=2, embed=ft.hashing_embed)
    assert got[-1] == ("Where does Bo live?", "Oslo")  # most similar last, next to the question
    assert len(got) == 2 and got[0] == ("Where does Ann live?", "Rome")
    assert ft.select_examples_by_similarity("x", pool, 0, ft.hashing_embed) == []
    with pytest.raises(ValueError, match="k must be"):
        ft.select_examples_by_similarity("x", pool, 5, ft.hashing_embed)
    # ties keep pool order: identical questions, the earlier one ranks first (so it sits nearest the question)
    twins = [("same q", "a"), ("same q", "b"), ("other", "c")]
    assert ft.select_examples_by_similarity("same q", twins, 1, ft.hashing_embed) == [("same q", "a")]


def test_answer_accuracy():
    assert ft.answer_accuracy(["Rome", "x"], ["rome", "y"]) == 0.5
    with pytest.raises(ValueError, match="as many"):
        ft.answer_accuracy(["a"], [])


# ------------------------------------------------------------------------------------------------ training and decoding
def test_encode_decode_ascii():
    assert ft.decode(ft.encode("Q: hi\nA:")) == "Q: hi\nA:"
    assert ft.encode("é") == [63]


def test_finetune_lora_learns_and_only_adapters_change():
    model = tiny_gpt()
    with torch.no_grad():  # a random model's 0.02-std tied embedding caps its logits; a trained one has larger
        model.tok_emb.weight.normal_(0, 1)
    ft.apply_lora(model, r=4, alpha=16)
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    hist = ft.finetune(model, TEXTS, ft.FinetuneConfig(steps=60, lr=2e-2, batch_size=2, progress=False))
    assert isinstance(hist, History) and hist.tokens == []  # the shared type; finetune's batches are whole texts
    assert sum(hist["train_loss"][-5:]) / 5 < 0.5 * hist["train_loss"][0]
    assert hist["trainable"] == ft.count_parameters(model)["trainable"]
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n


def test_full_finetune_memorises_and_greedy_answers():
    model = tiny_gpt()
    hist = ft.finetune(model, TEXTS, ft.FinetuneConfig(steps=60, lr=1e-2, batch_size=2, progress=False))
    assert hist["trainable"] == ft.count_parameters(model)["total"]
    assert ft.greedy_answers(model, ["Q: Where does Ann live?\nA:"], max_new_tokens=8) == [" Rome"]
    with pytest.raises(ValueError, match="no trainable"):
        ft.finetune(ft.apply_lora(tiny_gpt(), 2, 4).requires_grad_(False), TEXTS, ft.FinetuneConfig(steps=1, lr=1e-3))


def test_answer_only_masks_prompt():
    x, y = ft._batch(["Q: ab\nA: cd\n", "Q: a\nA: x\n"], answer_only=True)
    kept = ft.decode([int(t) for t in y[0] if t >= 0])
    assert kept == " cd\n"
    assert ft.decode([int(t) for t in y[1] if t >= 0]) == " x\n"
    assert (y[1, len("Q: a\nA: x\n") - 1 :] == -1).all()  # padding ignored


def test_greedy_answers_matches_generate():
    model = tiny_gpt(3)
    prompt = "Q: hello\nA:"
    full = model.generate(torch.tensor([ft.encode(prompt)]), 6, temperature=0)[0, len(prompt) :]
    text = ft.decode(full.tolist()).split("\n")[0]
    assert ft.greedy_answers(model, [prompt], max_new_tokens=6) == [text]
    with pytest.raises(ValueError, match="max_seq_len"):
        ft.greedy_answers(model, ["x" * 60], max_new_tokens=10)


def test_base_checkpoint_sha256(tmp_path):
    from course_utils.model import save_checkpoint

    path = save_checkpoint(tiny_gpt(), tmp_path / "m.safetensors", sha256=True)  # sidecars: weights and config
    path.with_suffix(".sha256").write_text(ft.sha256_of(path) + "  m.safetensors\n")
    assert isinstance(ft.load_base_model(path), GPT)
    config = path.with_suffix(".json")
    config.write_text(config.read_text().replace('"rope_base": 10000.0', '"rope_base": 500.0'))
    with pytest.raises(ValueError, match="sha256"):  # a changed config is refused too
        ft.load_base_model(path)
    path.with_suffix(".sha256").write_text("0" * 64 + "\n")
    with pytest.raises(ValueError, match="sha256"):
        ft.load_base_model(path)


def test_shipped_base_checkpoint_is_small_and_verified():
    if not ft.BASE_CHECKPOINT.exists():
        pytest.skip("base checkpoint not built yet")
    assert ft.BASE_CHECKPOINT.stat().st_size < 5 * 2**20
    model = ft.load_base_model()
    assert model.config.vocab_size == ft.VOCAB_SIZE


def test_shipped_base_model_reads_from_its_prompt():
    # chapters 6 and 7 rest on it: with the right statement in the prompt the base model copies the answer,
    # and without it (closed book, a fictional world) it mostly cannot
    from course_utils.world import make_world

    if not ft.BASE_CHECKPOINT.exists():
        pytest.skip("base checkpoint not built yet")
    model, world = ft.load_base_model(), make_world(seed=0, n_entities=20)
    questions, gold = zip(*world.qa_pairs("eval"))
    given = [ft.rag_prompt(q, [f.statement(1)]) for q, f in zip(questions, world.facts)]
    reads = sum(ft.greedy_exact_match(model, given, gold)) / len(gold)
    closed = sum(ft.greedy_exact_match(model, [ft.rag_prompt(q, []) for q in questions], gold)) / len(gold)
    assert reads > 0.8 and closed < 0.3, (reads, closed)


def test_greedy_exact_match_agrees_with_decoding():
    model = tiny_gpt()
    ft.finetune(model, TEXTS, ft.FinetuneConfig(steps=60, lr=1e-2, batch_size=2, progress=False))
    prompts = ["Q: Where does Ann live?\nA:", "Q: What pet does Bo keep?\nA:", "Q: Where does Bo live?\nA:"]
    decoded = ft.greedy_answers(model, prompts, max_new_tokens=8)
    for answers in (["Rome", "owl", "Rome"], ["Rome", "cat", "Oslo"], [d.strip() for d in decoded]):
        strict = [d == " " + a for d, a in zip(decoded, answers)]
        assert ft.greedy_exact_match(model, prompts, answers, batch_size=2) == strict
    with pytest.raises(ValueError, match="one answer per prompt"):
        ft.greedy_exact_match(model, prompts, ["x"])


def test_experiment_prompts_and_scores():
    from course_utils.world import make_world

    w = make_world(0, 6)
    qs = [q for q, _ in w.qa_pairs("eval")][:5]
    rag = ft.knowledge_prompts("RAG", w, qs, k=3)
    assert all(p.startswith("Facts:\n") and p.count("\n") == 3 + 2 for p in rag)
    assert w.facts[0].statement(0) in rag[0]  # BM25 finds the entity's statements
    shots = ft.knowledge_prompts("few-shot", w, qs, k=2)
    assert len({p.split("Q: ")[1] for p in shots}) == 1  # the same examples for every question
    dyn = ft.knowledge_prompts("dynamic few-shot", w, qs, k=2, embed=ft.hashing_embed)
    assert all(p.count("Q: ") == 3 for p in dyn)
    with pytest.raises(ValueError, match="method"):
        ft.knowledge_prompts("magic", w, qs)
    beh = ft.behaviour_texts(w)
    assert all(t.rstrip("\n").endswith('"}') and "Facts:" in t for t in beh)
    s = ft.score_behaviour(['{"answer": "Rome"}', "Rome", '{"answer": "Oslo"}'], ["rome", "Rome", "Rome"])
    assert s == {"compliance": 2 / 3, "correct": 1 / 3, "value_found": 2 / 3}
    assert len(ft.knowledge_texts(w)) == 3 * len(w.facts)


def test_finetune_early_stopping_restores_the_best_weights():
    # min_delta far above any possible gain: no evaluation after step 0 counts as better, so training stops after
    # `patience` evaluations and the restored weights are the starting ones
    model = tiny_gpt()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    config = ft.FinetuneConfig(steps=100, lr=1e-2, batch_size=2, eval_every=5, patience=2, min_delta=100.0)
    assert config.restore_best is True  # on by default with patience
    hist = ft.finetune(model, TEXTS, dataclasses.replace(config, progress=False), val_texts=TEXTS[:1])
    assert hist["stopped_step"] == 10 and hist["eval_step"] == [0, 5, 10] and hist["best_step"] == 0
    assert len(hist["train_loss"]) == 10 and hist["val_loss"][-1] < hist["val_loss"][0]  # it learned, then rolled back
    assert all(torch.equal(v, start[k]) for k, v in model.state_dict().items())


def test_finetune_validation_curve_and_bad_arguments():
    model = tiny_gpt()
    config = ft.FinetuneConfig(steps=20, lr=1e-2, batch_size=2, eval_every=10, progress=False)
    hist = ft.finetune(model, TEXTS, config, val_texts=TEXTS)
    assert hist["eval_step"] == [0, 10, 20] and hist["stopped_step"] == 20 and hist["best_step"] == 20
    assert hist["val_loss"][-1] == pytest.approx(ft.text_loss(model, TEXTS))  # no restore without patience
    assert hist["eval_train_loss"] == pytest.approx(hist["val_loss"])  # the probe is the same two texts
    config = ft.FinetuneConfig(steps=5, lr=1e-2, progress=False)
    with pytest.raises(ValueError, match="val_texts"):
        ft.finetune(tiny_gpt(), TEXTS, dataclasses.replace(config, patience=2))
    with pytest.raises(ValueError, match="val_texts"):
        ft.finetune(tiny_gpt(), TEXTS, config, val_texts="Q: x\nA: y\n")
    with pytest.raises(TypeError, match="config must be a FinetuneConfig"):
        ft.finetune(tiny_gpt(), TEXTS, TrainConfig(steps=5))  # a TrainConfig has train's defaults, not fine-tuning's
    with pytest.raises(ValueError, match="loss_fn"):
        ft.finetune(tiny_gpt(), TEXTS, config, hooks=TrainHooks(loss_fn=lambda m, step: 0.0))
    with pytest.raises(TypeError, match="'lr'"):
        ft.FinetuneConfig(steps=5)  # no default learning rate: fine-tuning's depends on the model and method
    with pytest.raises(TypeError, match="FinetuneConfig.answer_only"):
        ft.FinetuneConfig(steps=5, lr=1e-2, answer_only="yes")
    with pytest.raises(ValueError, match="FinetuneConfig.steps"):
        ft.FinetuneConfig(steps=0, lr=1e-2)


def test_text_loss_counts_only_scored_characters():
    model = tiny_gpt()
    text = "Q: ab\nA: cd\n"
    x, y = ft._batch([text], answer_only=True)
    logits, _ = model(x)
    keep = y >= 0
    want = torch.nn.functional.cross_entropy(logits[keep], y[keep]).item()
    assert ft.text_loss(model, [text], answer_only=True) == pytest.approx(want, rel=1e-5)
    assert ft.text_loss(model, [text]) != pytest.approx(want, rel=1e-3)


def test_knowledge_split_holds_out_training_phrasing_qa_only():
    from course_utils.world import make_world

    w = make_world(0, 10)
    sp = ft.knowledge_split(w, val_fraction=0.25)
    assert len(sp["val"]) == 10 and len(sp["train"]) == 2 * 40 + 30
    assert set(sp["train"]) | set(sp["val"]) == set(ft.knowledge_texts(w)) and not set(sp["train"]) & set(sp["val"])
    assert all(t.startswith(f"Q: {w.facts[i].question('train')}") for t, i in zip(sp["val"], sp["val_facts"]))
    for split in ("eval", "unseen"):  # the held-out phrasings are in neither
        assert not any(w.facts[0].question(split) in t for t in sp["train"] + sp["val"])
    with pytest.raises(ValueError, match="val_fraction"):
        ft.knowledge_split(w, val_fraction=1.0)


def test_base_model_never_saw_the_unseen_phrasing():
    # what scripts/pretrain_ch7.py trains on: reading-comprehension documents (train and eval phrasings) + corpus
    from course_utils.data import course_corpus
    from course_utils.world import ATTRIBUTES

    stems = {a: [q.split("{e}")[0] for q in spec["questions"]] for a, spec in ATTRIBUTES.items()}
    docs = "\n".join(ft.reading_comprehension_text(0, 400) + ft.reading_comprehension_text(8, 400))
    corpus = course_corpus(seed=0)
    for attribute, (train_q, eval_q, unseen_q) in stems.items():
        assert train_q in docs and eval_q in docs, attribute  # the two it did see
        assert unseen_q not in docs and unseen_q not in corpus, attribute


def test_cached_finetune_reuses_the_trained_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    config = ft.FinetuneConfig(steps=8, lr=1e-2, batch_size=2, eval_every=4, progress=False)
    first_model, again_model = tiny_gpt(), tiny_gpt()
    first = ft.cached_finetune(first_model, TEXTS, config, val_texts=TEXTS)
    again = ft.cached_finetune(again_model, TEXTS, config, val_texts=TEXTS)
    assert first["cached"] is False and again["cached"] is True and isinstance(again, History)
    assert again.train_loss == first.train_loss and again.val_loss == first.val_loss
    assert again.stopped_step == first.stopped_step == 8 and again.trainable == first.trainable
    assert all(torch.equal(v, first_model.state_dict()[k]) for k, v in again_model.state_dict().items())
    # another setting, other starting weights, other validation texts: trained, not looked up
    other = ft.cached_finetune(tiny_gpt(), TEXTS, dataclasses.replace(config, lr=2e-2), val_texts=TEXTS)
    fresh = ft.cached_finetune(tiny_gpt(seed=1), TEXTS, config, val_texts=TEXTS)
    val = ft.cached_finetune(tiny_gpt(), TEXTS, config, val_texts=TEXTS[:1])
    assert other["cached"] is False and fresh["cached"] is False and val["cached"] is False
    assert ft.cached_finetune(tiny_gpt(), TEXTS, config, val_texts=TEXTS, recompute=True)["cached"] is False


def test_reading_prompts_hold_the_fact_and_distractors():
    from course_utils.world import make_world

    w = make_world(5, 4)
    plain, noisy = ft.reading_prompts(w), ft.reading_prompts(w, n_distractors=3)
    for p, q, f in zip(noisy, plain, w.facts):
        assert f.statement(1) in p and p.endswith(f"Q: {f.question('eval')}\nA:")
        assert p.count("\n") == 1 + 4 + 1 and q.count("\n") == 1 + 1 + 1 and p.count(f.entity) == 5
    assert ft.reading_prompts(w, n_distractors=3) == noisy  # seeded
    with pytest.raises(ValueError, match="n_distractors"):
        ft.reading_prompts(w, n_distractors=4)
    with pytest.raises(ValueError, match="kind"):
        ft.knowledge_finetune(tiny_gpt(), w, "QLoRA")


# --- RAFT, accuracy during fine-tuning, the shipped study ------------------------------------------------------
def test_raft_texts_hold_the_oracle_in_most_prompts_and_only_distractors_in_the_rest():
    from course_utils.world import make_world

    w = make_world(5, 10)
    retrieve = ft.fact_retriever(w.statements(None))
    ids = list(range(len(w.facts)))
    texts = ft.raft_texts(w, retrieve, ids, seed=0)
    statements, pairs = texts[: 2 * len(w.facts)], texts[2 * len(w.facts) :]
    assert statements == w.statements(None) and len(pairs) == len(ids)
    with_oracle = 0
    for (prompt, answer), f in zip(pairs, w.facts):
        assert answer == f" {f.value}\n" and prompt.endswith(f"Q: {f.question('train')}\nA:")
        assert prompt.count("\n") == 1 + ft.RAFT_K + 1  # "Facts:", k statements, the question
        with_oracle += f.statement(0) in prompt or f.statement(1) in prompt
    assert 0.6 * len(ids) <= with_oracle < len(ids)  # ~80% oracle, and some prompts without it
    assert ft.raft_texts(w, retrieve, ids, seed=0) == texts  # seeded
    with pytest.raises(ValueError, match="retrieve"):
        ft.knowledge_finetune(tiny_gpt(), w, "RAFT")


def test_finetune_records_extra_metrics_at_every_evaluation():
    model = tiny_gpt()
    calls = []

    def metric(m):
        calls.append(m.training)
        return {"probe": float(len(calls))}

    config = ft.FinetuneConfig(steps=6, lr=1e-3, eval_every=2, progress=False)
    hist = ft.finetune(model, TEXTS, config, val_texts=TEXTS, hooks=TrainHooks(eval_fn=metric))
    assert hist["probe"] == [1.0, 2.0, 3.0, 4.0] and hist["eval_step"] == [0, 2, 4, 6] and not any(calls)
    assert hist.metrics == {"probe": [1.0, 2.0, 3.0, 4.0]} and len(hist["val_loss"]) == 4
    assert "probe" not in ft.finetune(tiny_gpt(), TEXTS, dataclasses.replace(config, steps=2), val_texts=TEXTS)


def test_finetune_config_is_a_train_config_with_fine_tuning_defaults():
    config = ft.FinetuneConfig(steps=5, lr=1e-2)
    assert isinstance(config, TrainConfig) and (config.weight_decay, config.betas) == (0.0, (0.9, 0.999))
    assert (config.warmup, config.eval_every, config.restore_best, config.val_answer_only) == (10, 25, False, False)
    assert ft.FinetuneConfig(steps=5, lr=1e-2, answer_only=True).val_answer_only is True


def test_finetune_runs_the_course_loop_with_the_same_losses():
    # finetune is train() with a loss_fn over whole texts: the same seeded batch order by hand gives the same losses
    import random

    config = ft.FinetuneConfig(steps=4, lr=1e-2, batch_size=1, progress=False)
    hist = ft.finetune(tiny_gpt(), TEXTS, config)
    rng, order = random.Random(config.seed), []

    def loss_fn(model, step):
        nonlocal order
        if not order:
            order = list(range(len(TEXTS)))
            rng.shuffle(order)
        return model(*ft._batch([TEXTS[order.pop(0)]], False))[1]

    by_hand = train(tiny_gpt(), None, dataclasses.replace(config, eval_every=None), hooks=TrainHooks(loss_fn=loss_fn))
    assert hist.train_loss == by_hand.train_loss and hist.grad_norm == by_hand.grad_norm


def _fake_study():
    from course_utils.world import make_world

    n = len(make_world(0, 2).facts)  # 8 facts
    held = set(ft.knowledge_split(make_world(0, 2))["val_facts"])
    rag = "1" * n
    runs = {
        f"0/{s}/full fine-tune": {
            "closed": {"eval": "0" * n, "unseen": "01" * (n // 2), "trained": "1" * (n - len(held))},
            "rag": {"eval": "0" * n},
            "reading": {"3": "0" * 5},
        }
        for s in (0, 1)
    }
    return {
        "meta": {"worlds": [0], "seeds": [0, 1], "n_entities": 2},
        "prompting": {"0": {"RAG": {"eval": rag}}, "reading": {"3": "1" * 5}},
        "runs": runs,
        "behaviour": {},
    }


def test_study_bits_and_shares_read_the_per_question_results():
    study = _fake_study()
    assert ft.study_bits(study, "RAG", "eval", 1, 0) == [1] * 8  # prompting: the same for every seed
    assert ft.study_bits(study, "full fine-tune + RAG", "eval", 0, 0) == [0] * 8
    assert ft.study_bits(study, "base", "reading 3", 0, 0) == [1] * 5
    assert ft.study_bits(study, "LoRA", "eval", 0, 0) is None
    held = set(ft.knowledge_split(__import__("course_utils.world").world.make_world(0, 2))["val_facts"])
    unseen = [0, 1] * 4
    assert ft.study_bits(study, "full fine-tune", "unseen@trained", 0, 0) == [
        h for i, h in enumerate(unseen) if i not in held
    ]
    assert ft.study_share(study, "RAG", "eval") == {0: (8, 8), 1: (8, 8), "pooled": (16, 16)}


def test_study_compare_gives_a_paired_verdict_per_seed_and_pooled():
    study = _fake_study()
    res = ft.study_compare(study, ("RAG", "eval"), ("full fine-tune", "eval"))
    assert set(res) == {0, 1, "pooled"}
    assert res[0].a_only == 8 and res[0].b_only == 0 and res[0].verdict == "RAG better"  # p = 2/256
    # pooled: one item per question (8), each scored by its mean over the seeds, never a question counted twice
    assert res["pooled"].n == 8 and res["pooled"].a_only == 8 and res["pooled"].test == "exact McNemar"
    with pytest.raises(ValueError, match="no results"):
        ft.study_compare(study, ("LoRA", "eval"), ("RAG", "eval"))


def test_load_study_checks_its_sidecar(tmp_path):
    import json

    path = tmp_path / "study.json"
    path.write_text(json.dumps(_fake_study()))
    (tmp_path / "study.json.sha256").write_text(f"{ft.sha256_of(path)}  study.json\n")
    assert ft.load_study(path)["meta"]["seeds"] == [0, 1]
    path.write_text(json.dumps(_fake_study() | {"extra": 1}))
    with pytest.raises(Exception, match="(?i)sha|checksum|hash"):
        ft.load_study(path)


def test_study_claims_compare_lora_with_the_full_fine_tune():
    claims = {c: (a[0], b[0]) for c, (a, b) in ft.STUDY_CLAIMS.items()}
    assert ("full fine-tune", "LoRA") in claims.values()
    study = _fake_study()
    n = len(study["runs"]["0/0/full fine-tune"]["closed"]["eval"])
    for s in (0, 1):  # a LoRA that answers every eval question the full fine-tune misses
        study["runs"][f"0/{s}/LoRA"] = {"closed": {"eval": "1" * n}}
    c = ft.study_claim(study, *ft.STUDY_CLAIMS["full fine-tune beats LoRA (eval)"])
    assert c["verdict"] == "does not hold" and c["agree"] == "does not hold 2/2"


def test_every_study_claim_has_results_in_the_shipped_study():
    study = ft.load_study()
    for claim, (a, b) in ft.STUDY_CLAIMS.items():
        assert ft.study_claim(study, a, b)["pooled"].n > 0, claim


def test_pooled_counts_a_prompting_methods_answers_once():
    # prompting methods do not depend on the training seed: pooling the seeds' 0/1 results would count each of
    # their answers twice and halve the p-value; averaged per question, pooled equals one seed's comparison
    study = ft.load_study()
    res = ft.study_compare(study, ("dynamic few-shot", "eval"), ("few-shot", "eval"))
    assert res["pooled"].n == res[0].n == 144
    assert (res["pooled"].a_only, res["pooled"].b_only, res["pooled"].p_value) == (
        res[0].a_only,
        res[0].b_only,
        res[0].p_value,
    )
    mixed = ft.study_compare(study, ("RAG", "eval"), ("LoRA", "eval"))  # LoRA differs by seed: means of 0, ½, 1
    assert mixed["pooled"].n == 144 and mixed["pooled"].test == "paired bootstrap"
