"""Corpora of any size (nbs/01a_corpora.ipynb): the streaming ingest gives the same ids and statistics as chapter 01's
whole-text path on awkward input; the token cache (reuse, invalidation, atomic writes); unusable cache folders; memory
bounded by a chunk; windows sharded across data-parallel processes."""
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import torch

import slm.corpora as corpora
from slm.corpora import ShardedWindows, ingest_corpus, tokenize_corpus
from slm.data import (INGESTERS, CorpusError, CorpusTokens, RandomWindows, corpus_report, load_corpus, read_corpus,
                      shakespeare_text, tokenize_text)
from slm.tokenizer import CharTokenizer
from conftest import slm_in_process
from test_data import one_line_error   # chapter 01's check: a CorpusError of one line

BOM = b"\xef\xbb\xbf"
TOK = CharTokenizer()


def stats(ct: CorpusTokens) -> tuple:
    return ct.n_chars, ct.n_distinct, ct.n_unk, ct.first_unk, ct.first_unk_offset


def assert_same(a: CorpusTokens, b: CorpusTokens):
    "Identical ids and statistics."
    assert np.array_equal(np.asarray(a.ids), np.asarray(b.ids))
    assert stats(a) == stats(b)


def whole(source, fold=False) -> CorpusTokens:
    "The reference: read the whole text, tokenise it in one piece, no cache."
    return tokenize_text(read_corpus(source, fold_unicode=fold), TOK, str(source))


def write(folder: Path, files: dict) -> Path:
    for name, raw in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(raw)
    return folder


TRICKY = {
    "a.txt": BOM + "“Naïve” café\r\nsecond line\r\n".encode(),
    "b.txt": b"",                                                   # empty file in the middle of a folder
    "c.txt": "中文 and 😀 emoji\rold Mac ending\r".encode(),         # 3- and 4-byte characters, lone CRs, CR at the end
    "d/e.txt": "déjà vu — x\u0301 ½ ﬁ\r\n\r\n\ufeffmid-file BOM\n".encode(),
    "d/f.txt": b"\r\n",                                             # a file that is only a CRLF
    "g.txt": BOM,                                                   # a file that is only a BOM
}


def boundary_chunks(raw: bytes) -> set:
    "Chunk sizes whose first boundary falls right after a UTF-8 lead byte, or between \\r and \\n."
    off = len(BOM) if raw.startswith(BOM) else 0
    return {i + 1 - off for i, b in enumerate(raw[:-1]) if i >= off and (b >= 0xC0 or (b == 0x0D and raw[i + 1] == 0x0A))}


@pytest.mark.parametrize("fold", [False, True])
def test_streaming_equals_whole_text_on_tricky_folder(tmp_path, fold):
    src = write(tmp_path / "src", TRICKY)
    ref = whole(src, fold)
    sizes = set(range(1, 17)) | set().union(*map(boundary_chunks, TRICKY.values())) | {corpora.DEFAULT_CHUNK}
    assert len(sizes) > 20
    for n in sorted(sizes):
        assert_same(ingest_corpus(src, fold_unicode=fold, cache=tmp_path / f"cache{n}", chunk_size=n), ref)
    assert ref.n_unk > 0 and ref.first_unk is not None


def test_streaming_equals_whole_text_on_random_text(tmp_path):
    "Random mixtures of CR, LF, CRLF, BOMs, 2-4 byte characters, combining marks and foldable characters, small chunks."
    import random
    rng = random.Random(0)
    alphabet = list("ab \n\r\t\x0b\x7f") + ["\r\n"] * 3 + list("éü“”—…中😀\u0301\ufeff\u00a0½ßﬁ")
    for trial in range(40):
        src = tmp_path / f"t{trial}"
        src.mkdir()
        for k in range(rng.randint(1, 3)):
            text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80))) + "x"
            (src / f"f{k}.txt").write_bytes((BOM if rng.random() < 0.3 else b"") + text.encode())
        for fold in (False, True):
            ref = whole(src, fold)
            for n in (1, 2, 3, 5, 8):
                assert_same(ingest_corpus(src, fold_unicode=fold, cache=tmp_path / "c" / f"{trial}{fold}{n}", chunk_size=n), ref)


def test_fold_many_distinct_characters(tmp_path):
    "More than 64 distinct foldable characters in a chunk, and folds that are not ASCII (½ -> 1⁄2): the slow fold path."
    chars = "".join(chr(c) for c in range(0xC0, 0x250)) + "½¼ﬁ™"
    (tmp_path / "a.txt").write_text((chars + " plain\n") * 30, encoding="utf-8")
    for n in (7, 1000, 1 << 20):
        assert_same(ingest_corpus(tmp_path / "a.txt", fold_unicode=True, cache=tmp_path / f"c{n}", chunk_size=n),
                    whole(tmp_path / "a.txt", True))


def test_glob_source_sorted_and_joined(tmp_path):
    write(tmp_path, {"b.txt": b"bee\r\n", "a.txt": b"ay", "c.md": b"not me", "sub/d.txt": b"deep"})
    ct = ingest_corpus(str(tmp_path / "*.txt"), cache=tmp_path / "cache", chunk_size=2)
    assert TOK.decode(ct.ids) == "ay\nbee\n"
    assert_same(ct, whole(str(tmp_path / "*.txt")))
    folder = ingest_corpus(tmp_path, cache=tmp_path / "cache")
    assert TOK.decode(folder.ids) == "ay\nbee\n\ndeep"


def test_other_tokenizer_goes_through_its_own_encode(tmp_path):
    class Counting(CharTokenizer):
        calls = 0
        def encode(self, text, unk="warn"):
            Counting.calls += 1
            return super().encode(text, unk)
    src = write(tmp_path / "src", TRICKY)
    a = ingest_corpus(src, tokenizer=Counting(), cache=tmp_path / "c1", chunk_size=5)
    assert Counting.calls > 10
    assert_same(a, ingest_corpus(src, cache=tmp_path / "c2", chunk_size=5))


def test_stream_is_registered_and_is_the_default():
    assert list(INGESTERS)[-1] == "stream" and INGESTERS["stream"] is ingest_corpus


def test_builtin_corpus_unchanged(tmp_path):
    s = load_corpus("shakespeare", 256, cache=tmp_path)
    assert (len(s.train), len(s.val)) == (4_737_735, 249_354)
    assert isinstance(s.tokens.ids, np.memmap) and isinstance(s.train, np.memmap)
    text = shakespeare_text(tmp_path)
    assert np.array_equal(np.asarray(s.tokens.ids), TOK.encode(text))
    assert stats(s.tokens) == (4_987_089, 80, 0, None, None)
    r = corpus_report(s, 256)
    assert (r["characters"], r["distinct_characters"], r["unk_count"], r["unk_rate"], r["first_unknown"]) == (4_987_089, 80, 0, 0.0, None)
    m = load_corpus("shakespeare", 256, cache=tmp_path, ingest="memory")          # chapter 01's path: the same corpus
    assert not isinstance(m.train, np.memmap) and np.array_equal(m.train, s.train) and np.array_equal(m.val, s.val)
    assert stats(m.tokens) == stats(s.tokens) and m.tokens.cache_path is None


@pytest.mark.parametrize("raw", [b"abc\xe9def", BOM + b"abc\xe9", b"ab\xe4\xb8", "中文".encode()[:-1], b"x" * 10 + b"\xff",
                                 b"a\xed\xa0\x80b", b"ok \xc3\xa9 then \xc3(", b"\xf0\x9f\x98"])
def test_invalid_utf8_same_message_and_file_offset(tmp_path, raw):
    f = tmp_path / "x.txt"
    f.write_bytes(raw)
    expected = one_line_error(lambda: read_corpus(f))
    assert "not UTF-8 text" in expected
    for n in (1, 2, 3, 4, 5, 100):
        assert one_line_error(lambda: ingest_corpus(f, cache=tmp_path / "c", chunk_size=n)) == expected
    with pytest.raises(CorpusError) as e:                  # the UTF-8 check decodes a step at a time: same answer
        corpora._check_utf8(raw.removeprefix(BOM), len(BOM) if raw.startswith(BOM) else 0, f, step=2)
    assert str(e.value) == expected


def test_bom_offset_counts_from_the_start_of_the_file(tmp_path):
    f = tmp_path / "x.txt"
    f.write_bytes(BOM + b"abc\xe9")
    assert "at offset 6" in one_line_error(lambda: load_corpus(f, 1, cache=tmp_path / "c"))


@pytest.mark.parametrize("raw, expect", [(b"", "corpus is empty"), (b" \r\n\t\x1c\n", "corpus is empty"),
                                         ("\u3000\u00a0\n".encode(), "corpus is empty"),
                                         (b"%PDF\x00binary", "binary file (contains NUL bytes)")])
def test_empty_and_binary_same_messages(tmp_path, raw, expect):
    f = tmp_path / "x.txt"
    f.write_bytes(raw)
    msg = one_line_error(lambda: ingest_corpus(f, cache=tmp_path / "c", chunk_size=2))
    assert expect in msg and msg == one_line_error(lambda: read_corpus(f))
    assert not list((tmp_path / "c").glob("tokens-*")) and not list((tmp_path / "c").glob(".tokens-*"))


def test_fold_to_nothing_is_empty(tmp_path):
    (tmp_path / "x.txt").write_text("\u200b\ufeff\u00ad\n", encoding="utf-8")
    assert "corpus is empty" in one_line_error(lambda: ingest_corpus(tmp_path / "x.txt", fold_unicode=True, cache=tmp_path / "c"))


def test_cache_hit_keeps_statistics_and_shares_the_whole_text_cache(tmp_path):
    (tmp_path / "x.txt").write_text("“Naïve” café\n" * 20, encoding="utf-8")
    a = ingest_corpus(tmp_path / "x.txt", cache=tmp_path / "c")
    b = ingest_corpus(tmp_path / "x.txt", cache=tmp_path / "c")
    assert a.cache_path == b.cache_path and stats(a) == stats(b) == stats(whole(tmp_path / "x.txt"))
    assert (a.first_unk, a.first_unk_offset) == ("“", 0)
    meta = json.loads(a.cache_path.with_suffix(".json").read_text())
    assert meta["n_unk"] == a.n_unk and meta["first_unk"] == "“"
    # the whole-text path keys its cache by the same text, tokenizer and folding switch
    assert tokenize_corpus(read_corpus(tmp_path / "x.txt"), TOK, cache=tmp_path / "c").cache_path == a.cache_path


def test_cache_key_includes_tokenizer_and_folding(tmp_path):
    (tmp_path / "x.txt").write_text("café abc\n" * 20, encoding="utf-8")
    paths = {ingest_corpus(tmp_path / "x.txt", cache=tmp_path / "c").cache_path,
             ingest_corpus(tmp_path / "x.txt", fold_unicode=True, cache=tmp_path / "c").cache_path,
             ingest_corpus(tmp_path / "x.txt", tokenizer=CharTokenizer("abc \n"), cache=tmp_path / "c").cache_path}
    assert len(paths) == 3


def test_fast_path_and_invalidation(tmp_path, monkeypatch):
    "An unchanged file is found through the index without reading it; any change to a file or to a folder is noticed."
    src = tmp_path / "src"
    write(src, {"a.txt": b"first version\n" * 100, "b.txt": b"other\n"})
    fresh = ingest_corpus(src, cache=tmp_path / "c")
    assert not list((tmp_path / "c").glob("source-*.json"))   # just written: too recent to index
    with monkeypatch.context() as m:                             # the index's clock moves past the racy window
        m.setattr(corpora, "_now_ns", lambda: time.time_ns() + corpora._RACY_NS + 10**9)
        built = ingest_corpus(src, cache=tmp_path / "c")        # read again, and now indexed
    assert built.cache_path == fresh.cache_path and len(list((tmp_path / "c").glob("source-*.json"))) == 1

    def no_reading(*a, **k): raise AssertionError("the corpus was read on a cache hit")
    with monkeypatch.context() as m:
        m.setattr(corpora, "_file_pieces", no_reading)
        hit = ingest_corpus(src, cache=tmp_path / "c")
    assert_same(hit, built)

    (src / "a.txt").write_bytes(b"FIRST VERSION\n" * 100)       # same size as the indexed version
    same_size = ingest_corpus(src, cache=tmp_path / "c")
    assert TOK.decode(same_size.ids[:13]) == "FIRST VERSION" and same_size.cache_path != built.cache_path
    (src / "a.txt").write_bytes(b"First Version\n" * 100)       # same size again, moments after the last change
    again = ingest_corpus(src, cache=tmp_path / "c")
    assert TOK.decode(again.ids[:13]) == "First Version"
    (src / "c.txt").write_bytes(b"a new file\n")                # a file added to the folder
    added = ingest_corpus(src, cache=tmp_path / "c")
    assert TOK.decode(added.ids).endswith("a new file\n") and len(added.ids) == len(again.ids) + 12


def test_inconsistent_cache_file_is_not_used(tmp_path):
    (tmp_path / "x.txt").write_text("some text\n" * 50)
    a = ingest_corpus(tmp_path / "x.txt", cache=tmp_path / "c")
    n = len(a.ids)
    del a
    with open(tmp_path / "c" / next(p.name for p in (tmp_path / "c").glob("tokens-*.bin")), "r+b") as f:
        f.truncate(n // 2)                                        # a cache file cut short (by anything)
    b = ingest_corpus(tmp_path / "x.txt", cache=tmp_path / "c")
    assert len(b.ids) == n and TOK.decode(b.ids) == "some text\n" * 50


CRASH = textwrap.dedent("""
    import os, sys
    from slm.corpora import ingest_corpus
    from slm.tokenizer import CharTokenizer
    class Crashing(CharTokenizer):          # same JSON, so the same cache key as the plain tokenizer
        calls = 0
        def encode(self, text, unk="warn"):
            Crashing.calls += 1
            if Crashing.calls == 3: os._exit(3)     # as if killed: no cleanup, no finally
            return super().encode(text, unk)
    ingest_corpus(sys.argv[1], tokenizer=Crashing(), cache=sys.argv[2], chunk_size=1000)
""")


def test_crash_mid_build_leaves_no_cache_that_is_used(tmp_path):
    f = tmp_path / "x.txt"
    f.write_text("a line of text\n" * 1000)
    cache = tmp_path / "cache"
    r = subprocess.run([sys.executable, "-c", CRASH, str(f), str(cache)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 3, r.stderr
    assert not list(cache.glob("tokens-*")) and not list(cache.glob("source-*"))   # nothing published
    assert len(list(cache.glob(".staged-*.partial"))) == 1                          # only the temporary file
    ct = ingest_corpus(f, cache=cache)
    assert TOK.decode(ct.ids) == "a line of text\n" * 1000 and ct.cache_path.name.startswith("tokens-")
    corpora._clean_partials(cache, older_than_s=0)
    assert not list(cache.glob(".staged-*.partial"))


def test_exception_mid_build_removes_the_temporary_file(tmp_path):
    class Failing(CharTokenizer):
        def encode(self, text, unk="warn"): raise RuntimeError("boom")
    (tmp_path / "x.txt").write_text("text\n" * 100)
    with pytest.raises(RuntimeError, match="boom"):
        ingest_corpus(tmp_path / "x.txt", tokenizer=Failing(), cache=tmp_path / "c")
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == []


def test_unwritable_cache_folder_one_line_before_any_work(tmp_path, monkeypatch):
    (tmp_path / "x.txt").write_text("text\n" * 100)
    (tmp_path / "a_file").write_text("I am a file")

    def no_work(*a, **k): raise AssertionError("work started before the cache folder was checked")
    monkeypatch.setattr(corpora, "corpus_files", no_work)
    monkeypatch.setattr(corpora, "_file_pieces", no_work)
    under = tmp_path / "a_file" / "cache"
    msg = one_line_error(lambda: load_corpus(tmp_path / "x.txt", 16, cache=under, ingest="stream"))
    assert msg.startswith(f"{under}: cannot write to the cache folder") and f"{tmp_path / 'a_file'} is a file" in msg
    assert "data.cache_dir" in msg
    msg = one_line_error(lambda: load_corpus(tmp_path / "x.txt", 16, cache=tmp_path / "a_file", ingest="stream"))
    assert msg.startswith(f"{tmp_path / 'a_file'}: cannot write to the cache folder") and "is a file, not a folder" in msg


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write to a read-only folder")
def test_read_only_cache_folder(tmp_path):
    (tmp_path / "x.txt").write_text("text\n" * 100)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        msg = one_line_error(lambda: load_corpus(tmp_path / "x.txt", 16, cache=ro, ingest="stream"))
        assert msg.startswith(f"{ro}: cannot write to the cache folder (Permission denied)")
    finally:
        ro.chmod(0o700)


def test_cache_folder_on_a_read_only_file_system(tmp_path, monkeypatch):
    "As root a chmod-ed folder stays writable, so the failing write is simulated: the message names the folder and the reason."
    import errno
    import tempfile
    ro, real = tmp_path / "mounted-ro", tempfile.mkstemp
    ro.mkdir()
    def mkstemp(*a, dir=None, **k):
        if Path(dir) == ro: raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real(*a, dir=dir, **k)
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    (tmp_path / "x.txt").write_text("text\n" * 100)
    msg = one_line_error(lambda: load_corpus(tmp_path / "x.txt", 16, cache=ro, ingest="stream"))
    assert msg == f"{ro}: cannot write to the cache folder (Read-only file system); set data.cache_dir (or $SLM_CACHE_DIR) to a writable folder"


def test_unwritable_cache_folder_stops_the_command_with_one_line(tmp_path):
    (tmp_path / "a_file").write_text("I am a file")
    r = slm_in_process("corpus", "--set", f"data.cache_dir={tmp_path / 'a_file' / 'cache'}")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "cannot write to the cache folder" in r.stderr and "Traceback" not in r.stderr


MEMORY = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from slm.corpora import ingest_corpus
    src, cache, fold = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
    line = "“It is the east,” said he — and Juliet is the sun; arise, fair sun, and kill the envious moon.\\r\\n"
    with open(src, "w", encoding="utf-8", newline="") as f:      # ~40 MB, written a line block at a time
        block = line * 10_000
        while f.tell() < 40_000_000: f.write(block)
    def status(key): return int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1]) * 1024
    try: open("/proc/self/clear_refs", "w").write("5")           # reset the peak (VmHWM) to the current RSS
    except OSError: pass
    before = status("VmRSS:")
    ct = ingest_corpus(src, fold_unicode=fold, cache=cache, chunk_size=1 << 20)
    print(json.dumps({"bytes": src.stat().st_size, "tokens": len(ct.ids), "unk": ct.n_unk,
                      "growth": status("VmHWM:") - before, "hwm_reset": status("VmHWM:") < 2 * before}))
""")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc/self/status (Linux)")
@pytest.mark.parametrize("fold", [False, True])
def test_memory_bounded_by_chunk_not_corpus(tmp_path, fold):
    """40 MB of mostly-ASCII text with curly quotes and CRLF, 1 MB chunks: the process grows by a few MB (about 9, the
    same for 10 MB or 100 MB), not by the file: one copy of the text or of its ids would be over 38 MB."""
    r = subprocess.run([sys.executable, "-c", MEMORY, str(tmp_path / "big.txt"), str(tmp_path / "c"), str(int(fold))],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout.strip().splitlines()[-1])
    assert m["bytes"] >= 40_000_000 and m["tokens"] > 36_000_000
    assert (m["unk"] == 0) if fold else (m["unk"] > 1_000_000)
    assert m["growth"] < 25_000_000, m                    # under two-thirds of one copy; the whole-text path needs two


def test_sharded_windows_split_the_global_batch():
    "A world of 2 with batch 2 sees, together, exactly the batch of 4 one process sees; a world of 1 is RandomWindows."
    ids = np.frombuffer(bytes(range(256)) * 40, dtype=np.uint8)
    halves = [ShardedWindows(ids, 32, batch_size=2, seed=5, rank=r, world=2) for r in (0, 1)]
    one = RandomWindows(ids, 32, batch_size=4, seed=5)
    for _ in range(3):
        parts = [h() for h in halves]
        x, y = one()
        assert torch.equal(torch.cat([p[0] for p in parts]), x) and torch.equal(torch.cat([p[1] for p in parts]), y)
        assert not torch.equal(parts[0][0], parts[1][0])
    single, plain = ShardedWindows(ids, 32, 4, seed=1), RandomWindows(ids, 32, 4, seed=1)
    state = single.state_dict()
    a = single()
    assert torch.equal(a[0], plain()[0])
    single.load_state_dict(state)
    assert torch.equal(single()[0], a[0])                       # resumable from the generator state
    with pytest.raises(ValueError, match="rank must be in"):
        ShardedWindows(ids, 32, 4, rank=2, world=2)
    with pytest.raises(CorpusError, match="too few"):
        ShardedWindows(ids[:10], 32, 4)
