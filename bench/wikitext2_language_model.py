"""make bench, section `language_model`: how fast does the Wikitext-2 recipe (recipes/wikitext2.py, AWD-LSTM)
train on this machine against the plain PyTorch word-language-model loop, and how far is its small model's
test perplexity below a count-based baseline on the same split? Settings: conf/bench_lm.yaml.

1. Tokens/s (results/bench/lm_throughput.csv), for each model size in `sizes` (awd_lstm_small, awd_lstm) on
   data=wiki_offline with the recipe's 10k vocabulary, batch (100 streams) and bptt (70):
   - plain loop: pytorch/examples word_language_model main.py's train() (its `batchify`, fixed-length
     `get_batch`, `repackage_hidden`, `model.zero_grad()`, NLLLoss on RNNModel's log_softmax,
     `clip_grad_norm_`, and its default update `p.data.add_(p.grad, alpha=-lr)`; fp32) on its RNNModel
     (Embedding -> dropout -> LSTM -> dropout -> Linear, tied). RNNModel stacks one nn.LSTM(emb, hidden,
     layers), and tying then needs hidden == emb; the AWD-LSTM's last layer is emb wide instead. So the plain
     model stacks its LSTM layer by layer with the recipe model's shapes (emb -> hidden -> ... -> emb, tied):
     the same parameters and FLOPs per token. (RNNModel's own layout, untied from a hidden-wide decoder, would
     do 2.9x the softmax work for awd_lstm and flatter the recipe.)
   - the recipe loop: the real runner.loop.fit on recipes.wikitext2.build(cfg) with the recipe's defaults
     (bf16 autocast where the CPU has native bf16, the fused chunked decoder + cross-entropy, weight drop,
     locked and embedding dropout, AR/TAR, variable BPTT, fused Adam-L2, the one-cycle schedule), and the
     `variants` that switch one speed-up off at a time (fp32; the unfused cross-entropy; the for-loop Adam),
     to show what gave the speed.
   A pass trains `warmup_steps` untimed steps then `steps` timed ones. The recipe loop runs one real epoch of
   fit over the whole training split, of which the task's `batches` yields only the first warmup + steps
   windows (fit then evaluates `eval_tokens` tokens of val and test and checkpoints, untimed); the clock runs
   from the loop's request for the first timed batch to its request after the last one, so it covers exactly
   `steps` whole iterations of fit's loop body. The variants are interleaved (their order rotated each
   repeat) `repeats` times; the CSV has the median and range, and each median's ratio to the plain loop's.
2. Test perplexity (results/bench/lm_baseline.csv): an interpolated modified Kneser-Ney n-gram (Chen &
   Goodman 1998; trigram by default) counted with numpy over the recipe's own token ids (same vocabulary,
   <unk> and <eos>) of the training split, scoring every test target the recipe's evaluate() scores (each
   stream of the test split batchified into recipe.test_batch_size streams, all tokens but each stream's
   first, contexts crossing <eos> as the LSTM's state does), beside the newest finished run of
   `adamrun train recipe=wikitext2 data=wiki_offline model=awd_lstm_small` in results_dir/runs.csv on the same
   data config (nothing trains here); without one, the baseline alone, and the section says so.
Budget on this project's 2-core CPU: about 4 to 5 minutes with the shipped settings (see conf/bench_lm.yaml).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from omegaconf import MISSING, DictConfig, OmegaConf
from torch import nn

from bench.harness import section_config
from recipes import wikitext2 as lm
from runner.config import CONF_DIR, check, compose, validate
from runner.device import resolve_device, use_bf16
from runner.errors import UsageError
from runner.loop import fit
from runner.recipe import Task
from runner.results import read_rows, write_text

RECIPE = "wikitext2"


# ------------------------------------------------------------------------------------------------ settings
@dataclass
class ModelSize:
    model: str = MISSING  # a conf/model option of the recipe
    steps: int = MISSING  # timed optimizer steps per pass

    def __post_init__(self) -> None:
        check((CONF_DIR / "model" / f"{self.model}.yaml").is_file(), "lm.sizes.model",
              "must be a conf/model option", self.model)  # fmt: skip
        check(self.steps > 0, "lm.sizes.steps", "must be > 0", self.steps)


@dataclass
class PlainLoopSettings:
    """word_language_model main.py's defaults."""

    lr: float = MISSING  # SGD step size (--lr 20)
    clip: float = MISSING  # max global gradient norm (--clip 0.25)
    dropout: float = MISSING  # on the embedding, between the LSTM layers and on the output (--dropout 0.2)

    def __post_init__(self) -> None:
        check(self.lr > 0, "lm.plain.lr", "must be > 0", self.lr)
        check(self.clip > 0, "lm.plain.clip", "must be > 0", self.clip)
        check(0 <= self.dropout < 1, "lm.plain.dropout", "must be in [0, 1)", self.dropout)


@dataclass
class BaselineSettings:
    order: int = MISSING  # n of the Kneser-Ney n-gram (3: trigram)
    discount_fallback: list[float] = MISSING  # D1, D2, D3+ where the count-of-counts estimate is undefined
    model: str = MISSING  # the recipe's model option whose finished run is compared

    def __post_init__(self) -> None:
        check(1 <= self.order <= 4, "lm.baseline.order", "must be in [1, 4]", self.order)
        fallback = self.discount_fallback
        ok = len(fallback) == 3 and fallback[0] > 0 and all(0 <= d <= r for r, d in enumerate(fallback, 1))
        check(ok, "lm.baseline.discount_fallback", "must be [D1, D2, D3+] with 0 < D1 <= 1, 0 <= Dr <= r",
              fallback)  # fmt: skip


@dataclass
class LMBenchConfig:
    """conf/bench_lm.yaml: every value's unit is in the YAML file's comments."""

    data: str = MISSING
    overrides: list[str] = MISSING
    sizes: list[ModelSize] = MISSING
    warmup_steps: int = MISSING
    repeats: int = MISSING
    eval_tokens: int = MISSING
    variants: dict[str, list[str]] = MISSING
    plain: PlainLoopSettings = MISSING
    baseline: BaselineSettings = MISSING
    threads: int | None = MISSING
    seed: int = MISSING

    def __post_init__(self) -> None:
        check((CONF_DIR / "data" / f"{self.data}.yaml").is_file(), "lm.data", "must be a conf/data option",
              self.data)  # fmt: skip
        check(len(self.sizes) > 0, "lm.sizes", "must name at least one model", self.sizes)
        check(self.warmup_steps >= 0, "lm.warmup_steps", "must be >= 0", self.warmup_steps)
        check(self.repeats > 0, "lm.repeats", "must be > 0", self.repeats)
        check(self.eval_tokens > 0, "lm.eval_tokens", "must be > 0", self.eval_tokens)
        check(len(self.variants) > 0, "lm.variants", "must name at least one recipe loop", self.variants)
        check(self.threads is None or self.threads > 0, "lm.threads", "must be > 0 or null", self.threads)


def settings(changes: dict | None = None) -> DictConfig:
    """conf/bench_lm.yaml, its top-level keys replaced by `changes` (tests shrink the section), checked."""
    s = section_config("lm", LMBenchConfig)
    if changes:
        s = OmegaConf.merge(OmegaConf.structured(LMBenchConfig), OmegaConf.to_container(s) | changes)
        validate(s)
    return s


def recipe_config(s: DictConfig, model: str, overrides: list[str] = ()) -> DictConfig:
    """The config of `adamrun train recipe=wikitext2 data=<s.data> model=<model>`, one epoch, quiet."""
    return compose([f"recipe={RECIPE}", f"data={s.data}", f"model={model}", f"seed={s.seed}",
                    "trainer.epochs=1", "trainer.progress=false", *s.overrides, *overrides])  # fmt: skip


# ------------------------------------------------------------------------------------------------ plain loop
class RNNModel(nn.Module):
    """word_language_model's RNNModel (LSTM, tied) with its LSTM stacked layer by layer in the recipe model's
    shapes: Embedding -> dropout -> LSTMs (dropout between them, as nn.LSTM(dropout=) does) -> dropout ->
    Linear -> log_softmax."""

    def __init__(self, vocab: int, model: DictConfig, dropout: float):
        super().__init__()
        self.ntoken = vocab
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(vocab, model.emb_size)
        sizes = [model.emb_size] + [model.hidden_size] * (model.layers - 1) + [model.emb_size]
        self.rnns = nn.ModuleList(nn.LSTM(n_in, n_out) for n_in, n_out in itertools.pairwise(sizes))
        self.decoder = nn.Linear(model.emb_size, vocab)
        self.decoder.weight = self.encoder.weight  # tied (Press & Wolf; Inan et al.)
        nn.init.uniform_(self.encoder.weight, -model.init_range, model.init_range)  # init_weights()
        nn.init.zeros_(self.decoder.bias)

    def forward(self, input: torch.Tensor, hidden):
        x, new = self.drop(self.encoder(input)), []
        for i, (rnn, state) in enumerate(zip(self.rnns, hidden, strict=True)):
            x, state = rnn(x, state)
            new.append(state)
            if i < len(self.rnns) - 1:
                x = self.drop(x)
        decoded = self.decoder(self.drop(x)).view(-1, self.ntoken)
        return F.log_softmax(decoded, dim=1), tuple(new)

    def init_hidden(self, bsz: int):
        weight = next(self.parameters())
        return tuple((weight.new_zeros(1, bsz, rnn.hidden_size), weight.new_zeros(1, bsz, rnn.hidden_size))
                     for rnn in self.rnns)  # fmt: skip


def batchify(data: torch.Tensor, bsz: int) -> torch.Tensor:
    nbatch = data.size(0) // bsz
    data = data.narrow(0, 0, nbatch * bsz)
    return data.view(bsz, -1).t().contiguous()


def get_batch(source: torch.Tensor, i: int, bptt: int) -> tuple[torch.Tensor, torch.Tensor]:
    seq_len = min(bptt, len(source) - 1 - i)
    return source[i : i + seq_len], source[i + 1 : i + 1 + seq_len].view(-1)


def repackage_hidden(h):
    if isinstance(h, torch.Tensor):
        return h.detach()
    return tuple(repackage_hidden(v) for v in h)


def plain_model(vocab: int, cfg: DictConfig, s: DictConfig) -> RNNModel:
    torch.manual_seed(s.seed)
    return RNNModel(vocab, cfg.model, s.plain.dropout)


def plain_loop_speed(
    train_ids: torch.Tensor, vocab: int, cfg: DictConfig, s: DictConfig, steps: int
) -> float:
    """Tokens/s of main.py's train() over `steps` batches after `s.warmup_steps` untimed ones: batch size and
    bptt are the recipe's (cfg.trainer.batch_size streams, cfg.recipe.bptt tokens a window)."""
    bptt, batch_size, lr = cfg.recipe.bptt, cfg.trainer.batch_size, s.plain.lr
    train_data = batchify(train_ids, batch_size)
    windows = s.warmup_steps + steps
    check(len(train_data) - 1 >= windows * bptt, "lm.sizes.steps",
          f"needs {windows * bptt + 1} tokens per stream (the split has {len(train_data)})", steps)  # fmt: skip
    model = plain_model(vocab, cfg, s)
    criterion = nn.NLLLoss()
    model.train()
    hidden = model.init_hidden(batch_size)
    total_loss, tokens, started = 0.0, 0, time.perf_counter()
    for batch, i in enumerate(range(0, windows * bptt, bptt)):
        if batch == s.warmup_steps:
            started, tokens = time.perf_counter(), 0
        data, targets = get_batch(train_data, i, bptt)
        model.zero_grad()
        hidden = repackage_hidden(hidden)
        output, hidden = model(data, hidden)
        loss = criterion(output, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), s.plain.clip)
        for p in model.parameters():
            p.data.add_(p.grad, alpha=-lr)
        total_loss += loss.item()  # main.py logs it (and so waits for the step) every batch
        tokens += targets.numel()
    return tokens / (time.perf_counter() - started)


# ------------------------------------------------------------------------------------------------ recipe loop
class TimedWindow:
    """The first warmup + steps batches of an epoch; times the last `steps` as the loop consumes them. The
    loop asks for the next batch only once the step on the previous one is done (CPU: synchronous), so the
    time from the request for batch `warmup` to the request after the last one is `steps` whole steps."""

    def __init__(self, warmup: int, steps: int, count: Callable[[tuple], int]):
        self.warmup, self.steps, self.count = warmup, steps, count
        self.tokens, self.seconds = 0, math.nan

    def __call__(self, batches: Iterator[tuple]) -> Iterator[tuple]:
        started = time.perf_counter()
        for i, batch in enumerate(itertools.islice(batches, self.warmup + self.steps)):
            if i == self.warmup:
                started = time.perf_counter()
            if i >= self.warmup:
                self.tokens += self.count(batch)
            yield batch
        self.seconds = time.perf_counter() - started

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


@dataclass
class Built:
    task: Task
    initial: dict[str, torch.Tensor]  # the model's weights as built: every pass starts from them
    vocab: int


def build_task(cfg: DictConfig, cache: dict[str, Built]) -> Built:
    """recipes.wikitext2.build(cfg), once per data/model/recipe setting (a variant that changes only what fit
    reads, such as precision or the optimizer, shares the task; one that changes the model gets its own)."""
    read = {k: OmegaConf.to_container(cfg[k], enum_to_str=True) for k in ("data", "model", "recipe")}
    read |= {"seed": cfg.seed, "trainer": {k: cfg.trainer[k] for k in ("batch_size", "device")}}
    key = OmegaConf.to_yaml(OmegaConf.create(read))
    if key not in cache:
        task = lm.build(cfg, resolve_device(cfg.trainer.device))
        initial = {k: v.detach().clone() for k, v in task.model.state_dict().items()}
        cache[key] = Built(task, initial, task.model.embedding.num_embeddings)
    return cache[key]


def recipe_loop_speed(built: Built, cfg: DictConfig, s: DictConfig, steps: int, tmp: Path) -> float:
    """Tokens/s of `steps` steps of the real fit after `s.warmup_steps` untimed ones (see the module doc)."""
    task, windows = built.task, s.warmup_steps + steps
    check(task.steps_per_epoch >= windows, "lm.sizes.steps",
          f"needs {windows} windows in an epoch (the split has {task.steps_per_epoch})", steps)  # fmt: skip
    task.model.load_state_dict(built.initial)
    window = TimedWindow(s.warmup_steps, steps, task.count)
    timed = dataclasses.replace(task, batches=lambda generator: window(task.batches(generator)))
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=tmp))
    try:
        outcome = fit(timed, cfg, run_dir)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    if outcome.status != "finished":
        raise UsageError(f"the recipe loop's timed pass ended {outcome.status} ({cfg.overrides})")
    return window.tokens_per_s


def parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


PLAIN = "plain loop (word_language_model: fp32, SGD p.data.add_)"


def throughput(s: DictConfig, tmp: Path) -> pd.DataFrame:
    """Every size's plain loop and recipe variants, interleaved `s.repeats` times."""
    cache: dict[str, Built] = {}
    corpora: dict[str, torch.Tensor] = {}  # the training tokens of each data config, for the plain loop
    rows = []
    for size in s.sizes:
        base = recipe_config(s, size.model, [f"data.test_limit={s.eval_tokens}"])
        configs = {name: recipe_config(s, size.model, [f"data.test_limit={s.eval_tokens}", *overrides])
                   for name, overrides in s.variants.items()}  # fmt: skip
        built = {name: build_task(cfg, cache) for name, cfg in configs.items()}
        first = next(iter(built.values()))
        data_key = OmegaConf.to_yaml(base.data)
        if data_key not in corpora:
            corpora[data_key] = lm.load_corpus(base.data).train
        train_ids = corpora[data_key]
        names = [PLAIN, *configs]
        speeds: dict[str, list[float]] = {name: [] for name in names}
        for repeat in range(s.repeats):
            print(f"language model {size.model}, pass {repeat + 1}/{s.repeats}", flush=True)
            shift = repeat % len(names)
            for name in names[shift:] + names[:shift]:  # rotated: no variant always runs first
                if name == PLAIN:
                    speeds[name].append(plain_loop_speed(train_ids, first.vocab, base, s, size.steps))
                else:
                    speeds[name].append(recipe_loop_speed(built[name], configs[name], s, size.steps, tmp))
        plain = statistics.median(speeds[PLAIN])
        for name in names:
            cfg = configs.get(name, base)
            model = plain_model(first.vocab, base, s) if name == PLAIN else built[name].task.model
            bf16 = name != PLAIN and use_bf16(cfg.trainer.precision, torch.device("cpu"))
            values = speeds[name]
            rows.append({
                "model": size.model,
                "variant": name,
                "precision": "bf16 autocast" if bf16 else "fp32",
                "tokens_per_s": statistics.median(values),
                "min_tokens_per_s": min(values),
                "max_tokens_per_s": max(values),
                "ratio_vs_plain": statistics.median(values) / plain,
                "params": parameters(model),
                "vocab": first.vocab,
                "batch_size": cfg.trainer.batch_size,
                "bptt": cfg.recipe.bptt,
                "steps": size.steps,
                "warmup_steps": s.warmup_steps,
                "repeats": len(values),
            })  # fmt: skip
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------ Kneser-Ney
@dataclass
class Level:
    """The k-grams of one order: their counts (raw at the top order, continuation counts below: how many
    distinct words precede the k-gram in the training text), and per context (its first k-1 words) the total
    count and the backoff weight gamma = sum of the discounts taken / total."""

    keys: np.ndarray  # sorted int64 codes of the k-grams counted (w1 * V^(k-1) + ... + wk)
    counts: np.ndarray
    discount: np.ndarray  # [0, D1, D2, D3+]: what a count of 0, 1, 2, >= 3 gives up
    contexts: np.ndarray  # sorted codes of the contexts (0 for every unigram: the empty context)
    totals: np.ndarray
    gamma: np.ndarray


@dataclass
class KneserNey:
    """Interpolated modified Kneser-Ney (Chen & Goodman 1998, "An Empirical Study of Smoothing Techniques for
    Language Modeling", eq. 17-19), its unigrams interpolated with the uniform distribution over the vocab:

        P_k(w | h) = max(c(hw) - D(c(hw)), 0) / c(h.) + gamma(h) P_{k-1}(w | h minus its first word)
        gamma(h) = (D1 N1(h.) + D2 N2(h.) + D3+ N3+(h.)) / c(h.);  P_0(w) = 1 / V

    with P_k = P_{k-1} for a context h never seen. Each order's discounts come from its count-of-counts n_r:
    Y = n1 / (n1 + 2 n2), D_r = r - (r + 1) Y n_{r+1} / n_r, or `fallback` (kenlm's --discount_fallback)
    where an n_r is 0 or a D_r leaves [0, r]."""

    vocab: int
    levels: list[Level]  # orders 1..n

    @property
    def order(self) -> int:
        return len(self.levels)


def ngram_codes(tokens: np.ndarray, k: int, vocab: int) -> np.ndarray:
    """The code of every k-gram of the token sequence, in order."""
    n = max(len(tokens) - k + 1, 0)
    codes = np.zeros(n, dtype=np.int64)
    for j in range(k):
        codes = codes * vocab + tokens[j : j + n]
    return codes


def discounts(counts: np.ndarray, fallback: list[float]) -> np.ndarray:
    """[0, D1, D2, D3+] from the count-of-counts (Chen & Goodman), else the fallback."""
    n = [int(np.count_nonzero(counts == r)) for r in (1, 2, 3, 4)]
    if min(n) > 0:
        y = n[0] / (n[0] + 2 * n[1])
        estimated = [r - (r + 1) * y * n[r] / n[r - 1] for r in (1, 2, 3)]
        if all(0 <= d <= r for r, d in enumerate(estimated, 1)):
            return np.array([0.0, *estimated])
    return np.array([0.0, *fallback], dtype=float)


def fit_kneser_ney(tokens: np.ndarray, vocab: int, order: int, fallback: list[float]) -> KneserNey:
    """Count the n-grams of one token sequence (ids in [0, vocab)) and derive every order's level."""
    check(
        vocab**order < 2**62, "lm.baseline.order", f"is too large for int64 codes over {vocab} words", order
    )
    tokens = np.asarray(tokens, dtype=np.int64)
    levels = []
    for k in range(1, order + 1):
        if k == order:
            keys, counts = np.unique(ngram_codes(tokens, k, vocab), return_counts=True)
        else:  # continuation counts: distinct (k+1)-gram types ending in the k-gram
            types = np.unique(ngram_codes(tokens, k + 1, vocab))
            keys, counts = np.unique(types % vocab**k, return_counts=True)
        discount = discounts(counts, fallback)
        contexts, inverse = np.unique(keys // vocab, return_inverse=True)
        totals = np.bincount(inverse.ravel(), weights=counts)
        taken = np.bincount(inverse.ravel(), weights=discount[np.minimum(counts, 3)])
        levels.append(Level(keys, counts, discount, contexts, totals, taken / totals))
    return KneserNey(vocab, levels)


def lookup(keys: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of each query in the sorted keys, and whether it is there."""
    if len(keys) == 0:
        return np.zeros(len(query), dtype=np.int64), np.zeros(len(query), dtype=bool)
    index = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
    return index, keys[index] == query


def probabilities(model: KneserNey, history: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """P(target | history) for each row; history is n x (order - 1) token ids, the most recent last, -1 where
    the text had not begun (the row then uses the orders its history allows)."""
    vocab, targets = model.vocab, np.asarray(targets, dtype=np.int64)
    p = np.full(len(targets), 1.0 / vocab)
    for k, level in enumerate(model.levels, start=1):
        context = history[:, history.shape[1] - (k - 1) :] if k > 1 else history[:, :0]
        usable = (context >= 0).all(axis=1)
        code = np.zeros(len(targets), dtype=np.int64)
        for j in range(k - 1):
            code = code * vocab + np.where(usable, context[:, j], 0)
        at, seen = lookup(level.contexts, code)
        seen &= usable
        index, counted = lookup(level.keys, code * vocab + targets)
        count = np.where(seen & counted, level.counts[index], 0)
        total = np.where(seen, level.totals[at], 1.0)
        higher = (count - level.discount[np.minimum(count, 3)]) / total + level.gamma[at] * p
        p = np.where(seen, higher, p)
    return p


def histories(stream: np.ndarray, order: int) -> tuple[np.ndarray, np.ndarray]:
    """(history, target) of every target of a batchified split (rows x streams), as the recipe's evaluate()
    counts them: every token but each stream's first, its history the tokens before it in its stream."""
    rows, columns = [], []
    for column in np.asarray(stream, dtype=np.int64).T:
        padded, n = np.concatenate([np.full(order - 1, -1), column]), len(column)
        before = [padded[1 + j : n + j] for j in range(order - 1)]  # the (order - 1 - j)-th token back
        rows.append(np.stack(before, axis=1) if before else np.empty((n - 1, 0), dtype=np.int64))
        columns.append(column[1:])
    return np.concatenate(rows), np.concatenate(columns)


def perplexity(model: KneserNey, stream: np.ndarray) -> tuple[float, int]:
    """exp of the mean negative log probability over the split's targets, and how many there are."""
    history, targets = histories(stream, model.order)
    nll = -np.log(probabilities(model, history, targets))
    return float(np.exp(nll.mean())), len(targets)


# ------------------------------------------------------------------------------------------------ baseline
def lstm_run(results_dir: Path, cfg: DictConfig, s: DictConfig) -> dict | None:
    """The newest finished run of recipe=wikitext2 data=<s.data> model=<baseline.model> whose saved config
    has the same data (vocabulary, split, limits) and test streams as cfg; runs.csv holds a run's row at the
    place of its last update, so the last match is the newest."""
    data = OmegaConf.to_container(cfg.data, enum_to_str=True)
    rows = [row for row in read_rows(Path(results_dir) / "runs.csv")
            if (row.get("status"), row.get("recipe"), row.get("data"), row.get("model"))
            == ("finished", RECIPE, s.data, s.baseline.model) and row.get("test_metric")]  # fmt: skip
    for row in reversed(rows):
        saved = Path(row.get("run_dir", "")) / "config.yaml"
        if not saved.is_file():
            continue
        run_cfg = OmegaConf.load(saved)
        same_data = OmegaConf.to_container(run_cfg.data, resolve=True) == data
        if same_data and run_cfg.recipe.test_batch_size == cfg.recipe.test_batch_size:
            return row
    return None


def baseline(s: DictConfig, results_dir: Path) -> tuple[pd.DataFrame, str]:
    """The Kneser-Ney row and, when a run exists, the LSTM's; and a line saying what was compared."""
    cfg = recipe_config(s, s.baseline.model)
    started = time.perf_counter()
    corpus = lm.load_corpus(cfg.data)
    vocab = len(corpus.vocab)
    test = lm.batchify(corpus.test, cfg.recipe.test_batch_size, "recipe.test_batch_size").numpy()
    counted = time.perf_counter()
    model = fit_kneser_ney(corpus.train.numpy(), vocab, s.baseline.order, list(s.baseline.discount_fallback))
    kn_ppl, targets = perplexity(model, test)
    d = " ".join(f"{level.discount[1]:.3f}/{level.discount[2]:.3f}/{level.discount[3]:.3f}"
                 for level in model.levels)  # fmt: skip
    common = {"test_tokens": targets, "train_tokens": len(corpus.train), "vocab": vocab}
    rows = [{"model": f"Kneser-Ney {s.baseline.order}-gram (interpolated, modified)", "test_ppl": kn_ppl,
             **common, "epochs": None, "wall_s": round(time.perf_counter() - counted, 1), "run_dir": None,
             "ppl_ratio_vs_kn": 1.0, "ppl_diff_vs_kn": 0.0,
             "note": f"discounts D1/D2/D3+ by order 1..{s.baseline.order}: {d}; "
                     f"corpus loaded in {counted - started:.1f} s"}]  # fmt: skip
    run = lstm_run(results_dir, cfg, s)
    if run is None:
        line = (f"no finished run of `adamrun train recipe={RECIPE} data={s.data} model={s.baseline.model}` in "
                f"{Path(results_dir) / 'runs.csv'}: the Kneser-Ney baseline alone")  # fmt: skip
        return pd.DataFrame(rows), line
    lstm_ppl = float(run["test_metric"])
    rows.append({"model": f"{s.baseline.model} (recipe {RECIPE})", "test_ppl": lstm_ppl, **common,
                 "epochs": int(float(run.get("epochs_run") or run["epochs"])), "wall_s": float(run["wall_s"]),
                 "run_dir": run["run_dir"], "ppl_ratio_vs_kn": lstm_ppl / kn_ppl,
                 "ppl_diff_vs_kn": lstm_ppl - kn_ppl, "note": f"run {run['run_id']}"})  # fmt: skip
    line = (
        f"{s.baseline.model}: test perplexity {lstm_ppl:.1f} against the Kneser-Ney baseline's {kn_ppl:.1f}"
    )
    return pd.DataFrame(rows), line


# ------------------------------------------------------------------------------------------------ section
def run(cfg: DictConfig, out: Path, env: dict, s: DictConfig | None = None) -> list[Path]:
    """The language_model section: `s` is conf/bench_lm.yaml (tests pass a smaller one); of cfg, the
    bench_train config, only results_dir is read (where the LSTM run is looked up)."""
    s = s if s is not None else settings()
    speed_path, baseline_path = Path(out) / "lm_throughput.csv", Path(out) / "lm_baseline.csv"
    table, line = baseline(s, Path(cfg.results_dir))  # seconds: written first
    table = table.assign(**env)
    write_text(baseline_path, table.to_csv(index=False))
    threads = torch.get_num_threads()
    if s.threads is not None:
        torch.set_num_threads(s.threads)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            speeds = throughput(s, Path(tmp)).assign(**(env | {"threads": torch.get_num_threads()}))
    finally:
        torch.set_num_threads(threads)
    write_text(speed_path, speeds.to_csv(index=False))
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        print(speeds.drop(columns=list(env)).to_string(index=False), flush=True)
        print(table.drop(columns=[*env, "note"]).to_string(index=False), flush=True)
    print(line, flush=True)
    return [speed_path, baseline_path]
