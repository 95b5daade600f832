"""course_utils.served_models: the trained models the server serves, the chat data, held-out chat accuracy."""

from __future__ import annotations

import shutil

import pytest

from course_utils.batching import Engine
from course_utils.chat import END_OF_TURN, END_OF_TURN_ID, GENERATION_PROMPT, render_chat
from course_utils.finetune import _batch, encode
from course_utils.sampling import SamplingParams
from course_utils.served_models import (
    CAPITAL,
    SERVED_MODELS,
    chat_examples,
    load_chat_model,
    load_served_model,
    mixed_workload,
    training_pairs,
    wilson_interval,
)
from course_utils.world import ATTRIBUTES

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # fixture in conftest.py


def answers(model, convs):
    """Greedy answers through the engine, stopping at the end-of-turn token."""
    params = SamplingParams(max_tokens=20, temperature=0, stop_token_ids=[END_OF_TURN_ID])
    with Engine(model, max_batch=16) as eng:
        handles = [eng.submit(encode(render_chat(m)), params) for m, _ in convs]
        return [h.result(300) for h in handles]


def test_models_load_by_name_with_checksum():
    for name in set(SERVED_MODELS) - {"smollm2", "smollm2-float16"}:  # character-level models (SmolLM2: own tests)
        model, tok = load_served_model(name)
        assert model.config.vocab_size == tok.vocab_size == 128
        assert tok.decode(tok.encode("Hi\x04")) == "Hi\x04"
    with pytest.raises(ValueError, match="name"):
        load_served_model("gpt-5")


def test_a_corrupted_checkpoint_is_refused(tmp_path, monkeypatch):
    path, record, rebuild = SERVED_MODELS["course-chat"]
    bad = tmp_path / path.name
    shutil.copy(path, bad)
    shutil.copy(path.with_suffix(".json"), bad.with_suffix(".json"))
    data = bytearray(bad.read_bytes())
    data[-1] ^= 1
    bad.write_bytes(bytes(data))
    monkeypatch.setitem(SERVED_MODELS, "course-chat", (bad, record, rebuild))
    with pytest.raises(ValueError, match="train_course_chat"):
        load_chat_model()


def test_chat_data_is_seeded_and_eval_is_held_out():
    assert chat_examples(20, seed=3) == chat_examples(20, seed=3)
    train = chat_examples(300)
    ev = chat_examples(300, split="eval")
    words = lambda convs: {w for m, _ in convs for msg in m for w in msg["content"].split() if w.istitle()}
    names_train, names_eval = words(train), words(ev)
    assert len(names_train & names_eval) < 0.1 * len(names_eval)  # other worlds: few names repeat by chance
    # the eval questions use the held-out phrasing only; training uses both
    train_phrasing = [spec["questions"][0].split("{e}")[0] for spec in [*ATTRIBUTES.values(), CAPITAL]]
    asks = lambda convs: [msg["content"] for m, _ in convs for msg in m if msg["role"] == "user"]
    assert not any(q in text for text in asks(ev) for q in train_phrasing)
    assert sum(any(q in text for q in train_phrasing) for text in asks(train)) > 50
    with pytest.raises(ValueError, match="split"):
        chat_examples(3, split="test")


def test_training_pairs_train_only_the_answer():
    prompt, completion = training_pairs(1)[0]
    assert prompt.endswith(GENERATION_PROMPT) and completion.endswith(END_OF_TURN)
    x, y = _batch([(prompt, completion)], answer_only=False)
    learned = [int(t) for t in y[0] if t >= 0]
    assert learned == encode(completion)


def test_course_chat_answers_held_out_questions_and_the_base_model_does_not():
    convs = chat_examples(48, split="eval")
    chat, _ = load_chat_model()
    got = answers(chat, convs)
    acc = sum(r.token_ids == encode(v) for r, (_, v) in zip(got, convs)) / len(convs)
    assert acc >= 0.8, acc  # 93% [89.5%, 95.4%] on 300 held-out conversations when it was trained
    assert all(r.finish_reason == "stop" for r in got)  # it closes its turn
    base, _ = load_served_model("tiny-gpt")
    base_acc = sum(r.token_ids == encode(v) for r, (_, v) in zip(answers(base, convs[:16]), convs))
    assert base_acc <= 2  # untuned, it does not answer in the template's format


def test_capital_question_through_the_template():
    chat, _ = load_chat_model()
    conv = [
        {"role": "system", "content": "Facts: The capital of Veltria is Dravik."},
        {"role": "user", "content": "What is the capital of Veltria?"},
    ]
    assert answers(chat, [(conv, "Dravik")])[0].token_ids == encode("Dravik")


def test_wilson_interval_and_workload():
    low, high = wilson_interval(0, 300)
    assert low == 0 and 0.01 < high < 0.015
    low, high = wilson_interval(279, 300)
    assert low < 0.93 < high and high - low < 0.07
    with pytest.raises(ValueError):
        wilson_interval(5, 3)
    jobs = mixed_workload(30)
    assert {p.max_tokens for _, p in jobs} <= {16, 32, 64, 128, 256} and len({p.max_tokens for _, p in jobs}) >= 4
    assert all(len(ids) + p.max_tokens <= 384 for ids, p in jobs)
