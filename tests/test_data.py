"""Chapter 01's data path (nbs/01_data.ipynb): the in-memory ingest and its statistics, the ingest registry that
`load_corpus` uses, bad input stopped with one line, the <UNK> limit, and the random-window sampler. The streaming
ingest and the token cache are tested in tests/test_corpora.py."""
import subprocess
import sys

import numpy as np
import pytest
import torch

import slm.corpora  # noqa: F401  (registers the streaming ingest, so both ingests can be compared)
from slm.data import (INGESTERS, CorpusError, CorpusTokens, RandomWindows, corpus_report, load_corpus, read_corpus,
                      read_tokens, tokenize_text)
from slm.tokenizer import CharTokenizer
from conftest import slm_in_process

TOK = CharTokenizer()


def one_line_error(f) -> str:
    "Call `f`, expect a CorpusError, return its message (which must be one line)."
    with pytest.raises(CorpusError) as e:
        f()
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def test_chapter_01_alone_reads_in_memory():
    "Without the engine room, `load_corpus` has the one ingest chapter 01 registers."
    code = "import slm.data as d; print(list(d.INGESTERS), d.INGESTERS['memory'] is d.read_tokens)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["['memory']", "True"]


def test_tokenize_text_counts_what_the_report_needs():
    ct = tokenize_text("ab “c” é\n", TOK, "x")
    assert isinstance(ct, CorpusTokens) and ct.ids.dtype == np.uint8 and len(ct.ids) == 9
    assert np.array_equal(ct.ids, TOK.encode("ab “c” é\n", unk="ignore"))
    assert (ct.n_chars, ct.n_distinct, ct.n_unk, ct.first_unk, ct.first_unk_offset) == (9, 8, 3, "“", 3)
    assert ct.unk_rate == pytest.approx(3 / 9) and ct.cache_path is None and ct.source == "x"
    clean = tokenize_text("plain\n", TOK)
    assert (clean.n_unk, clean.first_unk, clean.first_unk_offset) == (0, None, None)

    class Wide(CharTokenizer):
        @property
        def vocab_size(self): return 300
    with pytest.raises(ValueError, match="vocab_size <= 256"):
        tokenize_text("abc", Wide())


def test_memory_ingest_is_read_corpus_encoded(tmp_path):
    (tmp_path / "b.txt").write_bytes(b"\xef\xbb\xbfbee\r\nline\r")
    (tmp_path / "a.txt").write_text("caf\u00e9\n", encoding="utf-8")
    for fold in (False, True):
        ct = read_tokens(tmp_path, TOK, fold)
        assert np.array_equal(ct.ids, TOK.encode(read_corpus(tmp_path, fold), unk="ignore"))
    assert TOK.decode(read_tokens(tmp_path, TOK, True).ids) == "cafe\n\nbee\nline\n"


def test_load_corpus_uses_the_last_registered_ingest_or_the_named_one(tmp_path, monkeypatch):
    (tmp_path / "x.txt").write_text("to be or not to be\n" * 20)
    calls = []
    def fake(source, tokenizer, fold_unicode, cache):
        calls.append((str(source), fold_unicode, cache))
        return tokenize_text("x" * 1000, tokenizer, str(source))
    monkeypatch.setitem(INGESTERS, "fake", fake)
    s = load_corpus(tmp_path / "x.txt", 16, fold_unicode=True, cache=tmp_path / "c")
    assert calls == [(str(tmp_path / "x.txt"), True, tmp_path / "c")] and TOK.decode(s.train[:3]) == "xxx"
    m = load_corpus(tmp_path / "x.txt", 16, ingest="memory")
    assert len(calls) == 1 and TOK.decode(m.train[:5]) == "to be"
    with pytest.raises(ValueError, match="unknown ingest 'nope'"):
        load_corpus(tmp_path / "x.txt", 16, ingest="nope")


@pytest.mark.parametrize("ingest", ["memory", "stream"])
def test_bad_input_one_line(tmp_path, ingest):
    d = tmp_path
    (d / "empty.txt").write_text("   \n")
    (d / "short.txt").write_text("To be, or not to be.\n")
    (d / "binary.txt").write_bytes(b"%PDF-1.7\x00\x01\x02binary")
    (d / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (d / "emptydir").mkdir()
    cases = {d / "nope.txt": "no such file or folder", d / "empty.txt": "corpus is empty",
             d / "binary.txt": "binary file (contains NUL bytes)",
             d / "latin1.txt": "not UTF-8 text (invalid byte 0xe9 at offset 3)",
             d / "emptydir": "folder contains no .txt files", str(d / "*.md"): "glob pattern matches no files"}
    for src, expect in cases.items():
        assert expect in one_line_error(lambda: load_corpus(src, 16, cache=d / "c", ingest=ingest))
    short = lambda T: load_corpus(d / "short.txt", T, cache=d / "c", ingest=ingest)
    assert "validation split has 1 tokens" in one_line_error(lambda: short(16))
    assert "corpus has 21 tokens" in one_line_error(lambda: short(64))
    with pytest.raises(ValueError, match="val_fraction"):
        load_corpus(d / "short.txt", 4, val_fraction=1.0, ingest=ingest)


def test_report_on_the_memory_ingest(tmp_path):
    (tmp_path / "x.txt").write_text("To be, or not to be, that is the question.\n" * 30)
    s = load_corpus(tmp_path / "x.txt", 32, ingest="memory")
    r = corpus_report(s, 32, sample_chars=12)
    assert (r["characters"], r["train_tokens"] + r["val_tokens"], r["sample_window"]) == (1290, 1290, "To be, or no")
    assert r["windows_per_epoch"] == (r["train_tokens"] - 33) // 32 + 1


def test_random_windows_draw_shift_and_resume():
    ids = np.frombuffer(bytes(range(200)) * 5, dtype=np.uint8)
    rw = RandomWindows(ids, 16, batch_size=4, seed=0)
    state = rw.state_dict()
    starts = rw.starts()
    assert starts.shape == (4,) and ((0 <= starts) & (starts < len(ids) - 16)).all()
    rw.load_state_dict(state)
    x, y = rw()
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(x, rw.windows(starts)[:, :-1])               # the same starts after the state is restored
    assert torch.equal(x[:, 0], torch.from_numpy(ids[starts].astype(np.int64)))
    with pytest.raises(CorpusError, match="too few"):
        RandomWindows(ids[:16], 16, 4)


@pytest.mark.parametrize("ingest", ["memory", "stream"])
def test_unk_threshold_one_line_with_share_character_and_hint(tmp_path, ingest):
    zh = tmp_path / "zh.txt"
    zh.write_text("道可道，非常道。名可名，非常名。\n" * 40, encoding="utf-8")
    msg = one_line_error(lambda: load_corpus(zh, 16, cache=tmp_path / "c", ingest=ingest, max_unk_rate=0.05))
    assert str(zh) in msg and "94.12%" in msg and "'道' (U+9053)" in msg and "data.max_unk_rate 0.05" in msg
    assert "tokenizer that covers this script" in msg
    curly = tmp_path / "curly.txt"
    curly.write_text("“Is it?” she asked — “yes.”\n" * 40, encoding="utf-8")
    msg = one_line_error(lambda: load_corpus(curly, 16, cache=tmp_path / "c", ingest=ingest, max_unk_rate=0.05))
    assert "17.86%" in msg and "'“' (U+201C)" in msg and "data.fold_unicode: true" in msg
    ok = load_corpus(curly, 16, cache=tmp_path / "c", ingest=ingest, fold_unicode=True, max_unk_rate=0.05)
    assert ok.tokens.n_unk == 0
    # below the limit (or with no limit) the share is exposed for training to print
    below = load_corpus(curly, 16, cache=tmp_path / "c", ingest=ingest, max_unk_rate=0.5)
    assert below.tokens.unk_rate == pytest.approx(200 / 1120)
    r = corpus_report(below, 16)
    assert (r["unk_count"], r["first_unknown"], r["first_unknown_offset"]) == (200, "“", 0)
    assert load_corpus(zh, 16, cache=tmp_path / "c", ingest=ingest).tokens.unk_rate > 0.9       # None: no check
    with pytest.raises(ValueError, match="max_unk_rate"):
        load_corpus(zh, 16, cache=tmp_path / "c", ingest=ingest, max_unk_rate=5)


def test_unk_threshold_stops_the_command_with_one_line(tmp_path):
    zh = tmp_path / "zh.txt"
    zh.write_text("道可道，非常道。名可名，非常名。\n" * 40, encoding="utf-8")
    r = slm_in_process("corpus", "--set", f"data.source={zh}", "--set", "data.max_unk_rate=0.05",
                       "--set", "model.context_length=16", env={"SLM_CACHE_DIR": str(tmp_path / "c")})
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "94.12%" in r.stderr, r.stderr


