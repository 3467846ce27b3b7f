"""Tests of `slm.evaluation` (chapter 07): exact token accounting against a brute-force per-token computation, PAD
targets, the baselines, evaluating and comparing run folders, errors for bad input, and the sample-quality heuristics.

Models are tiny (random, or trained for a few steps on a small generated corpus) and run on one CPU thread."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from slm.config import ModelConfig, config_from_dict
from slm.evaluation import (EvaluationError, baseline_losses, bigram_probs, bits_per_char, char_entropy,
                            compare_runs, config_differences, evaluate_run, format_comparison,
                            format_report, known_word_rate, loss_by_position, perplexity, repetition_rate, run_summary,
                            sample_heuristics, score_tokens, unigram_probs, window_plan, words)
from slm.model import GPT
from slm.tokenizer import CharTokenizer
from slm.loop import train

from _corpus import play_text

torch.set_num_threads(1)
T = 8

# Public-domain text (Hamlet III.1) for the baselines on real English.
HAMLET = """To be, or not to be, that is the question:
Whether 'tis nobler in the mind to suffer
The slings and arrows of outrageous fortune,
Or to take arms against a sea of troubles
And by opposing end them. To die: to sleep;
No more; and by a sleep to say we end
The heart-ache and the thousand natural shocks
That flesh is heir to, 'tis a consummation
Devoutly to be wish'd. To die, to sleep;
To sleep: perchance to dream: ay, there's the rub;
For in that sleep of death what dreams may come
When we have shuffled off this mortal coil,
Must give us pause: there's the respect
That makes calamity of so long life;
For who would bear the whips and scorns of time,
The oppressor's wrong, the proud man's contumely,
The pangs of despised love, the law's delay,
The insolence of office and the spurns
That patient merit of the unworthy takes,
When he himself might his quietus make
With a bare bodkin? who would fardels bear,
To grunt and sweat under a weary life,
But that the dread of something after death,
The undiscover'd country from whose bourn
No traveller returns, puzzles the will
And makes us rather bear those ills we have
Than fly to others that we know not of?
Thus conscience does make cowards of us all;
And thus the native hue of resolution
Is sicklied o'er with the pale cast of thought,
And enterprises of great pith and moment
With this regard their currents turn awry,
And lose the name of action.
"""



@pytest.fixture(scope="module")
def tiny():
    "A random GPT with context length T = 8, vocab 99 (eval mode)."
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=99, context_length=T, n_layers=2, d_model=16, n_heads=2, d_ff=32, dropout=0.0)).eval()


@pytest.fixture(scope="module")
def tok():
    return CharTokenizer()


def brute_force(model, ids, tail):
    "-ln p(ids[i] | its context) for i = 1 … n-1, one forward pass per target; the contexts written out independently of window_plan."
    n = len(ids)
    n_full = (n - 1) // T
    out = []
    for i in range(1, n):
        if i <= n_full * T: start = ((i - 1) // T) * T          # inside a full window
        elif tail == "context" and n_full: start = n - 1 - T    # the tail re-uses earlier context
        else: start = n_full * T                                # a short last window
        x = torch.tensor(np.asarray(ids[start:i], dtype=np.int64))[None]
        out.append(-F.log_softmax(model(x)[0][0, -1].double(), -1)[int(ids[i])].item())
    return np.array(out)


# ---- token accounting

@pytest.mark.parametrize("n", [2, 3, 8, 9, 10, 17, 25, 33, 40])
@pytest.mark.parametrize("tail", ["context", "short"])
def test_window_plan_scores_every_target_once(n, tail):
    cover = np.zeros(n - 1, dtype=int)
    for s, L, f in window_plan(n, T, tail):
        assert 1 <= L <= T and 0 <= f < L and s >= 0 and s + L <= n - 1
        cover[s + f:s + L] += 1
    assert cover.tolist() == [1] * (n - 1)


@pytest.mark.parametrize("n", [2, 9, 17, 33, 12, 20, 38])   # n-1 targets: 1; 8, 16, 32 (multiples of T); 11, 19, 37 (not)
@pytest.mark.parametrize("tail", ["context", "short"])
def test_exact_loss_equals_brute_force(tiny, tok, n, tail):
    ids = tok.encode(HAMLET[:n])
    s = score_tokens(tiny, ids, batch_size=3, tail=tail)
    ref = brute_force(tiny, ids, tail)
    assert s.n_scored == n - 1
    np.testing.assert_allclose(s.loss, ref, atol=1e-5)
    assert s.mean_loss == pytest.approx(ref.mean(), abs=1e-6)
    assert np.all(s.entropy > 0) and np.all(s.entropy <= math.log(99) + 1e-6)


def test_batch_size_does_not_change_result(tiny, tok):
    ids = tok.encode(HAMLET[:300])
    a, b = score_tokens(tiny, ids, batch_size=1), score_tokens(tiny, ids, batch_size=64)
    np.testing.assert_allclose(a.loss, b.loss, atol=1e-5)


def test_pad_targets_ignored(tiny, tok):
    ids = tok.encode(HAMLET[:30])
    padded = np.concatenate([ids, [0] * 5])
    s = score_tokens(tiny, padded, tail="short")
    assert s.n_scored == 29 and np.isnan(s.loss[29:]).all()
    assert s.mean_loss == pytest.approx(score_tokens(tiny, ids, tail="short").mean_loss, abs=1e-9)
    by_pos, counts = loss_by_position(s, T)
    assert counts.sum() == 29 and by_pos.shape == (T,)
    assert baseline_losses(tok.encode(HAMLET), padded, 99)[0].n_tokens == 29


def test_short_input_rejected(tiny):
    with pytest.raises(ValueError, match="at least 2 tokens"):
        score_tokens(tiny, [5])
    with pytest.raises(ValueError, match="tail must be"):
        window_plan(10, T, "overlap")


# ---- units and baselines

def test_units():
    assert bits_per_char(math.log(2)) == pytest.approx(1.0)
    assert perplexity(math.log(99)) == pytest.approx(99)


def test_uniform_baseline_is_ln_vocab(tok):
    ids = tok.encode(HAMLET)
    rows = baseline_losses(ids, ids, 99)
    assert rows[2].nats == math.log(99)
    assert rows[2].perplexity == pytest.approx(99)


def test_bigram_beats_unigram_on_real_text(tok):
    ids = tok.encode(HAMLET)
    cut = int(len(ids) * 0.8)
    bigram, unigram, uniform = baseline_losses(ids[:cut], ids[cut:], 99)
    assert bigram.nats < unigram.nats < uniform.nats
    assert unigram_probs(ids, 99).sum() == pytest.approx(1.0)
    np.testing.assert_allclose(bigram_probs(ids, 99).sum(1), 1.0)
    assert (bigram_probs(ids, 99) > 0).all()            # smoothing: nothing has probability 0


# ---- run folders

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    "Two tiny runs (differing in d_model and lr) on a ~20k-character generated corpus, plus the folder they live in."
    root = tmp_path_factory.mktemp("evaluation")
    (root / "corpus.txt").write_text(play_text(350))

    def cfg(name, d_model, lr):
        return config_from_dict({
            "model": dict(context_length=16, n_layers=1, d_model=d_model, n_heads=2, d_ff=64, dropout=0.0),
            "training": dict(batch_size=8, max_steps=40, lr=lr),
            "data": dict(source=str(root / "corpus.txt"), cache_dir=str(root / "cache")),
            "eval": dict(eval_interval=20, eval_batches=2, log_interval=10, sample_length=0),
            "checkpoint": dict(interval=20, keep_last=2, runs_dir=str(root / "runs")),
            "other": dict(seed=1, device="cpu", num_threads=1, run_name=name)})

    a = train(cfg("a", 32, 3e-3), progress=False, quiet=True)
    b = train(cfg("b", 16, 1e-3), progress=False, quiet=True)
    return root, a.run_dir, b.run_dir


def test_evaluate_run_table(runs):
    root, a, _ = runs
    r = evaluate_run(a)
    val_tokens = json.loads((a / "manifest.json").read_text())["corpus"]["val_tokens"]
    assert r.n_tokens == val_tokens and r.model.n_tokens == val_tokens - 1
    assert [x.name for x in r.rows] == ["model (step 40)", "bigram (train counts)", "unigram (train counts)", "uniform over 99 ids"]
    assert all(x.n_tokens == r.model.n_tokens for x in r.rows)
    assert r.rows[3].nats == math.log(99)
    assert r.model.nats < r.rows[2].nats                 # 40 steps beat the unigram on this easy corpus
    text = format_report(r)
    assert "bits/char" in text and "model (step 40)" in text and str(a) in text
    json.dumps(r.to_dict())                               # JSON-ready
    assert evaluate_run(a / "checkpoints" / "step-0000020.pt").step == 20
    assert evaluate_run(a, which="best").step in (20, 40)


def test_evaluate_run_on_a_file(runs):
    root, a, _ = runs
    f = root / "other.txt"
    f.write_text("A café, and a line of ordinary text.\n", encoding="utf-8")
    r = evaluate_run(a, data=f)
    assert r.n_tokens == 37 and r.n_unk == 1 and r.model.n_tokens == 36 and r.text == str(f)


def test_errors_name_the_file(runs):
    root, a, _ = runs
    (root / "one.txt").write_text("x")
    (root / "empty.txt").write_text("")
    (root / "blob.bin").write_bytes(bytes(range(256)))
    (root / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    (root / "not-a-run").mkdir()
    cases = [((root / "missing-run",), "no such run folder"),
             ((root / "not-a-run",), "no checkpoints in this run folder"),
             ((a, root / "missing.txt"), "no such file"),
             ((a, root / "one.txt"), "at least 2"),
             ((a, root / "empty.txt"), "empty"),
             ((a, root / "blob.bin"), "binary"),
             ((a, root / "latin1.txt"), "not UTF-8")]
    for args, problem in cases:
        with pytest.raises(EvaluationError) as e:
            evaluate_run(*args)
        msg = str(e.value)
        assert problem in msg and str(args[-1]) in msg and "\n" not in msg, msg


def test_evaluate_command(runs, capsys):
    from slm.__main__ import main
    root, a, _ = runs
    assert main(["evaluate", str(a), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "nats/char" in out and "uniform over 99 ids" in out
    assert main(["evaluate", str(a), "--device", "cpu", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["results"][3]["nats_per_char"] == pytest.approx(math.log(99))
    assert main(["evaluate", str(root / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("slm: error: ") and err.count("\n") == 1 and "nowhere" in err


def test_compare_runs(runs, capsys):
    root, a, b = runs
    rows = compare_runs([a, b], exact=True)
    assert [r["run"] for r in rows] == ["a", "b"]
    assert [k for k in rows[0] if "." in k] == ["model.d_model", "training.lr"]   # run_name and runs_dir not listed
    assert rows[0]["model.d_model"] == 32 and rows[1]["training.lr"] == 1e-3
    assert rows[0]["steps"] == 40 and rows[0]["best_val"] <= rows[0]["final_val"]
    assert rows[0]["exact_val"] == pytest.approx(evaluate_run(a).model.nats)
    assert rows[0]["tokens_per_s"] > 0 and rows[0]["wall_s"] > 0
    text = format_comparison(rows)
    assert "model.d_model" in text and "exact val" in text
    s = run_summary(a)
    assert s.status == "finished" and s.final_val_loss == rows[0]["final_val"]
    assert config_differences([s.cfg, s.cfg]) == []
    from slm.__main__ import main
    png = root / "curves.png"
    assert main(["compare", str(a), str(b), "--plot", str(png)]) == 0 and png.stat().st_size > 0
    capsys.readouterr()
    assert main(["compare", str(a), str(root / "nope")]) == 2
    assert "nope: no such run folder" in capsys.readouterr().err


# ---- sample-quality heuristics

def test_heuristics_on_hand_made_strings():
    assert words("O'er the hill, 'tis ROMEO's!") == ["o'er", "the", "hill", "tis", "romeo's"]
    assert char_entropy("abab") == pytest.approx(1.0)
    assert char_entropy("abcd") == pytest.approx(2.0)
    assert char_entropy("aaaa") == pytest.approx(0.0)
    assert math.isnan(char_entropy(""))
    assert repetition_rate("a b c a b c", 3) == pytest.approx(0.25)
    assert repetition_rate("the the the the the", 1) == pytest.approx(0.8)
    assert repetition_rate("no repeats in this line at all", 2) == 0
    assert math.isnan(repetition_rate("too short", 3))
    vocab = {"the", "king", "and", "a"}
    assert known_word_rate("The king, the KING and a zorblat", vocab) == pytest.approx(5 / 6)
    assert known_word_rate("The king, the KING and a zorblat", vocab, min_len=1) == pytest.approx(6 / 7)
    h = sample_heuristics("the king and the king and the king", vocab)
    assert h["known_words"] == 1.0 and h["repeated_ngrams"] == pytest.approx(3 / 6)


def test_heuristics_with_a_model(tiny, tok):
    h = sample_heuristics(HAMLET[:200], set(words(HAMLET)), tiny, tok)
    assert h["known_words"] == 1.0
    assert abs(h["model_entropy"] - math.log2(99)) < 0.2      # a random model is nearly uniform
    with pytest.raises(ValueError, match="tokenizer"):
        sample_heuristics("abc", set(), tiny)

