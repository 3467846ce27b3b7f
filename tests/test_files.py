"""Files that are never half-written (nbs/00a_files.ipynb): atomic replacement, staged files named at the end, fsync,
folder checks, and chapter 00's tokenizer file written through the atomic writer."""
import os
import subprocess
import sys

import pytest

from slm.files import atomic_write, folder_problem, staged_file
from slm.tokenizer import CharTokenizer, Tokenizer, write_text


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    p = atomic_write(tmp_path / "x.txt", "first\n")
    assert p == tmp_path / "x.txt" and p.read_text() == "first\n"
    def crash(f): f.write(b"half"); raise OSError("disk full")
    with pytest.raises(OSError, match="disk full"):
        atomic_write(p, crash)
    assert p.read_text() == "first\n" and [q.name for q in tmp_path.iterdir()] == ["x.txt"]
    atomic_write(p, b"\x00bytes")
    assert p.read_bytes() == b"\x00bytes"
    atomic_write(p, lambda f: f.write("é".encode()))
    assert p.read_text(encoding="utf-8") == "é"


def test_staged_file_is_named_only_when_published(tmp_path):
    with staged_file(tmp_path) as (f, publish):
        f.write(b"content")
        (tmp := next(tmp_path.iterdir()))
        assert tmp.name.startswith(".staged-") and tmp.name.endswith(".partial")
        out = publish(tmp_path / "final.bin")
    assert out.read_bytes() == b"content" and [q.name for q in tmp_path.iterdir()] == ["final.bin"]
    with staged_file(tmp_path) as (f, publish):
        f.write(b"never published")
    assert [q.name for q in tmp_path.iterdir()] == ["final.bin"]


def test_fsync_flushes_before_the_rename(tmp_path, monkeypatch):
    order = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (order.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (order.append("replace"), real_replace(a, b))[1])
    atomic_write(tmp_path / "a", "x")
    assert order == ["replace"]
    atomic_write(tmp_path / "b", "x", fsync=True)
    assert order == ["replace", "fsync", "replace"]


def test_folder_problem(tmp_path):
    assert folder_problem(tmp_path / "new" / "deeper") is None and (tmp_path / "new" / "deeper").is_dir()
    (tmp_path / "a_file").write_text("x")
    assert folder_problem(tmp_path / "a_file" / "sub") == f"{tmp_path / 'a_file'} is a file, not a folder"
    assert folder_problem(tmp_path / "a_file") is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "new"]          # no probe file left


def test_tokenizer_files_are_written_atomically(tmp_path, monkeypatch):
    assert Tokenizer.write_file is atomic_write                       # 00a's writer in chapter 00's hook
    p = CharTokenizer().save(tmp_path / "tokenizer.json")
    def fail(*a): raise OSError("disk full")
    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        CharTokenizer("abc").save(p)
    monkeypatch.undo()
    assert Tokenizer.load(p).vocab_size == 99 and [q.name for q in tmp_path.iterdir()] == ["tokenizer.json"]


def test_chapter_00_alone_writes_plainly(tmp_path):
    "Without 00a the hook is chapter 00's plain write, and the file it writes is the same."
    code = ("import sys; from slm.tokenizer import CharTokenizer, Tokenizer, write_text\n"
            "assert Tokenizer.write_file is write_text and 'slm.files' not in sys.modules\n"
            "CharTokenizer().save(sys.argv[1])")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "plain.json")], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "plain.json").read_bytes() == CharTokenizer().save(tmp_path / "atomic.json").read_bytes()
    assert write_text(tmp_path / "t.txt", "é").read_text(encoding="utf-8") == "é"
