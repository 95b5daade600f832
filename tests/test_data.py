"""The corpus' training data: a deterministic split by document, the shipped tokenizer, batches, domain labels."""

import pytest
import torch

from course_utils import data
from course_utils.data import (
    DOMAINS,
    EOT,
    CorpusDoc,
    TokenDataset,
    corpus_dataset,
    corpus_documents,
    corpus_tokenizer,
    split_documents,
)


def test_split_is_deterministic_disjoint_and_stratified():
    train, val = split_documents()
    train2, val2 = split_documents(list(reversed(corpus_documents())))  # input order does not matter
    assert {d.name for d in val} == {d.name for d in val2} and {d.name for d in train} == {d.name for d in train2}
    assert not {(d.domain, d.name) for d in train} & {(d.domain, d.name) for d in val}
    assert len(train) + len(val) == len(corpus_documents())
    for domain in DOMAINS:  # every domain in both splits, with about val_fraction of its characters held out
        total = sum(len(d.text) for d in train + val if d.domain == domain)
        held = sum(len(d.text) for d in val if d.domain == domain)
        assert 0.1 <= held / total < 0.35, (domain, held / total)
    assert {d.name for d in split_documents(seed=1)[1]} != {d.name for d in val}


def test_split_rejects_bad_fraction():
    with pytest.raises(ValueError, match="val_fraction"):
        split_documents(val_fraction=1.0)
    with pytest.raises(TypeError, match="CorpusDoc"):
        split_documents(["not a doc", "x"])


def test_shipped_tokenizer_has_512_ids_and_round_trips():
    tok = corpus_tokenizer(512)
    assert tok.vocab_size == 512 and tok.special_tokens == {EOT: 511}
    text = "def mean(xs):\n    return sum(xs) / len(xs)\n\n12 + 30 = 42\n"
    ids = tok.encode(text)
    assert tok.decode(ids) == text and len(ids) < len(text.encode()) / 1.5  # merges compress
    assert (data.ASSETS / "corpus_bpe512.json").exists()
    with pytest.raises(ValueError, match="vocab_size"):
        corpus_tokenizer(100)


def test_tokenizer_trains_and_caches_when_not_shipped(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    tok = corpus_tokenizer(300)
    assert tok.vocab_size == 300 and (tmp_path / "corpus_bpe300.json").exists()
    assert corpus_tokenizer(300).merges == tok.merges


def test_dataset_batches_and_domain_labels():
    ds = corpus_dataset()
    assert set(ds.ids) == {"train", "val"} and len(ds.ids["train"]) > 5 * len(ds.ids["val"]) > 0
    assert int(ds.ids["train"].max()) < ds.vocab_size
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    x, y, d = ds.get_batch("train", 4, 32, g1, with_domains=True)
    x2, y2 = ds.get_batch("train", 4, 32, g2)
    assert x.shape == y.shape == d.shape == (4, 32) and torch.equal(x, x2) and torch.equal(y, y2)
    assert torch.equal(x[:, 1:], y[:, :-1])  # targets are the inputs shifted by one
    assert set(d.unique().tolist()) <= {0, 1, 2}
    fractions = ds.domain_fractions("train")
    assert abs(sum(fractions.values()) - 1) < 1e-9 and all(f > 0.1 for f in fractions.values())


def test_domain_labels_are_exact_per_document():
    tok = corpus_tokenizer()
    docs = [
        CorpusDoc("prose", "a", "Hello world."),
        CorpusDoc("arithmetic", "b", "1 + 2 = 3\n"),
        CorpusDoc("code", "c", "x = 1\n"),
    ]
    ds = TokenDataset(tok, docs, docs[:1])
    ids, dom = ds.ids["train"].tolist(), ds.domains["train"].tolist()
    cuts = [i for i, t in enumerate(ids) if t == ds.eot_id]
    assert len(cuts) == 3 and ds.decode(ids[: cuts[0]]) == "Hello world."
    assert dom[: cuts[0] + 1] == [0] * (cuts[0] + 1)  # prose, including its <|endoftext|>
    assert set(dom[cuts[0] + 1 : cuts[1] + 1]) == {2} and set(dom[cuts[1] + 1 :]) == {1}


def test_batches_reject_bad_input():
    ds = corpus_dataset()
    with pytest.raises(ValueError, match="split"):
        ds.get_batch("test", 2, 8)
    with pytest.raises(ValueError, match="block_size"):
        ds.get_batch("val", 2, 10**7)
    with pytest.raises(ValueError, match="batch_size"):
        ds.get_batch("train", 0, 8)


def test_corpus_comes_from_the_snapshot_not_the_running_python(monkeypatch):
    """Another Python's pydoc topics (even a patch release's) must not change the corpus every number rests on."""
    import sys
    import types

    monkeypatch.setitem(sys.modules, "pydoc_data.topics", types.SimpleNamespace(topics={"other": "Other text.\n"}))
    prose, code = data.prose_documents(), data.code_documents()
    assert len(prose) == 79 and "other" not in {d.name for d in prose}
    assert [d.name for d in code] == list(data.STDLIB_FILES)
    assert data.cpython_snapshot()["python"] == "3.11.7"


@pytest.mark.skipif(
    __import__("platform").python_version() != "3.11.7", reason="the snapshot was taken on CPython 3.11.7"
)
def test_snapshot_is_cpython_3_11_7_text():
    snapshot = data.cpython_snapshot()
    assert {k: snapshot[k] for k in ("prose", "code")} == data.running_python_documents()
