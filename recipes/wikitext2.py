"""Wikitext-2 recipe: the AWD-LSTM language model (Merity et al., "Regularizing and Optimizing LSTM
Language Models", arXiv:1708.02182; salesforce/awd-lstm-lm) trained with Adam and a one-cycle schedule as in
fast.ai's "AdamW and super-convergence" post (2018; sgugger/Adam-experiments train_rnn.py).

Reproduces: Merity et al., Wikitext-2 val/test perplexity 68.6/65.8 (SGD then NT-ASGD, 750 epochs); fast.ai,
68.7/65.5 in 90 epochs (Adam lr 5e-3, beta1 0.8 -> 0.7, beta2 0.99, L2 1.2e-6, batch 100, BPTT 70, clip
0.12, AR alpha 3, TAR beta 1.5). A 3-layer LSTM (emb 400, hidden 1150; 33.6M parameters with the 33,278-word
vocabulary) with DropConnect on the hidden-to-hidden weights, embedding dropout, locked (variational)
dropout, tied embeddings, AR/TAR, and variable-length BPTT windows with the lr scaled by seq_len / bptt.
Expected here (2-core AMD EPYC with AVX512-BF16, 1 thread, bf16 autocast), offline on 737k Wikipedia tokens:
val/test perplexity 103.6/104.3 after 3 epochs (seed 0, about 17 minutes; Adam-L2 with fast.ai's LM cycle);
measured with a stand-in for the shared loop. The full model runs 300-700 tokens/s on one CPU thread, so the
real recipe wants a GPU (awd-lstm-lm: about 105 s an epoch on a GP100).
Commands:
    adamrun train recipe=wikitext2                  # the real Wikitext-2 from the Hugging Face Hub
    adamrun train recipe=wikitext2 data.source=files data.path=~/wikitext-2      # the wiki.*.tokens files
    adamrun train recipe=wikitext2 data=wiki_offline model=awd_lstm_small trainer.epochs=3   # offline, CPU
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import MISSING, DictConfig
from torch import nn

from runner import network
from runner.config import check
from runner.data import check_installed, data_file, read_wiki, stratified_split
from runner.errors import UsageError
from runner.recipe import PERPLEXITY, Task

# ------------------------------------------------------------------------------------------------ config


def check_probability(value: float, key: str) -> None:
    check(0 <= value < 1, key, "must be in [0, 1)", value)


class LossImpl(StrEnum):
    auto = "auto"  # fused on the CPU, plain on CUDA (see decoding_chunk)
    fused = "fused"  # DecodedCrossEntropy, recipe.loss_chunk tokens at a time
    plain = "plain"  # nn.Linear, then F.cross_entropy on the whole tokens x vocab logits


@dataclass
class WikiText2Recipe:
    name: str = MISSING
    bptt: int = MISSING  # tokens per BPTT window, on average
    full_window_p: float = MISSING  # chance that a window's mean length is bptt (else short_window * bptt)
    short_window: float = MISSING  # fraction of bptt
    window_sigma: float = MISSING  # tokens: std of a window's length around its mean
    min_window: int = MISSING  # tokens
    ar_alpha: float = MISSING  # activation regularization weight
    tar_beta: float = MISSING  # temporal activation regularization weight
    eval_batch_size: int = MISSING  # streams for the validation split
    test_batch_size: int = MISSING  # streams for the test split
    loss_impl: LossImpl = MISSING  # decoder + cross-entropy: fused in chunks, or nn.Linear + F.cross_entropy
    loss_chunk: int = MISSING  # tokens decoded at a time by the fused loss

    def __post_init__(self) -> None:
        check(self.bptt > 0, "recipe.bptt", "must be > 0", self.bptt)
        check(0 <= self.full_window_p <= 1, "recipe.full_window_p", "must be in [0, 1]", self.full_window_p)
        check(0 < self.short_window <= 1, "recipe.short_window", "must be in (0, 1]", self.short_window)
        check(self.window_sigma >= 0, "recipe.window_sigma", "must be >= 0", self.window_sigma)
        check(self.min_window > 0, "recipe.min_window", "must be > 0", self.min_window)
        check(self.ar_alpha >= 0, "recipe.ar_alpha", "must be >= 0", self.ar_alpha)
        check(self.tar_beta >= 0, "recipe.tar_beta", "must be >= 0", self.tar_beta)
        for key in ("eval_batch_size", "test_batch_size"):
            check(getattr(self, key) > 0, f"recipe.{key}", "must be > 0", getattr(self, key))
        check(self.loss_chunk > 0, "recipe.loss_chunk", "must be > 0", self.loss_chunk)


class Source(StrEnum):
    hub = "hub"  # datasets.load_dataset(path or hub_id, hub_config): the Hub's parquet layout
    files = "files"  # wiki.train.tokens, wiki.valid.tokens, wiki.test.tokens in `path`
    wiki_json = "wiki_json"  # a JSON of articles (runner.data.read_wiki), split by article


class Tokenizer(StrEnum):
    whitespace = "whitespace"  # Wikitext's own tokens, space-separated
    words = "words"  # raw text: WORD below


@dataclass
class WikiJsonConfig:
    """Task-like, as runner.data.read_wiki reads it, plus how to split the articles."""

    package: str | None = MISSING  # installed distribution holding `file`; null: `file` is a local path
    file: str = MISSING
    text_keys: list[str] = MISSING  # fields of an article that make its text
    label_key: str = MISSING  # the split is stratified by this field
    drop_labels: list[str] = MISSING  # articles with these labels are left out
    split: list[float] = MISSING  # train, val, test fractions of the articles
    split_seed: int = MISSING  # the split's own seed, independent of the run's

    def __post_init__(self) -> None:
        check_installed(self.package, "data.wiki.package")
        ok = len(self.split) == 3 and all(f >= 0 for f in self.split) and math.isclose(sum(self.split), 1)
        check(ok and self.split[0] > 0, "data.wiki.split", "must be 3 fractions summing to 1", self.split)


@dataclass
class LMDataConfig:
    name: str = MISSING
    source: Source = MISSING
    path: str | None = MISSING  # hub: a local copy of the Hub layout (null: hub_id); files: their folder
    hub_id: str | None = MISSING
    hub_config: str | None = MISSING
    wiki: WikiJsonConfig | None = MISSING
    tokenizer: Tokenizer = MISSING
    vocab_size: int | None = MISSING  # the most frequent train words, <unk> and <eos> included; null: all
    train_limit: int | None = MISSING  # first N training tokens; null: all
    test_limit: int | None = MISSING  # first N tokens of the val and test splits; null: all

    def __post_init__(self) -> None:
        check(self.source != Source.files or self.path is not None, "data.path", "must name a folder", None)
        hub_ok = self.hub_config is not None and (self.path is not None or self.hub_id is not None)
        check(self.source != Source.hub or hub_ok, "data.hub_config", "and hub_id or path must be set", None)
        check(self.source != Source.wiki_json or self.wiki is not None, "data.wiki", "must be set", None)
        if self.vocab_size is not None:
            check(
                self.vocab_size > 2,
                "data.vocab_size",
                "must be > 2 (<unk>, <eos> and a word)",
                self.vocab_size,
            )
        for key in ("train_limit", "test_limit"):
            limit = getattr(self, key)
            check(limit is None or limit > 0, f"data.{key}", "must be > 0 or null", limit)


@dataclass
class AWDLSTMConfig:
    name: str = MISSING
    emb_size: int = MISSING  # embedding width, also the last LSTM layer's output (tied weights)
    hidden_size: int = MISSING  # units of the other LSTM layers
    layers: int = MISSING
    dropout: float = MISSING  # locked dropout on the last layer's output
    dropout_hidden: float = MISSING  # locked dropout between LSTM layers
    dropout_input: float = MISSING  # locked dropout on the embedded input
    dropout_embedding: float = MISSING  # whole word rows of the embedding matrix
    weight_drop: float = MISSING  # DropConnect on each hidden-to-hidden matrix
    init_range: float = MISSING  # embedding init uniform(-r, r)

    def __post_init__(self) -> None:
        for key in ("emb_size", "hidden_size", "layers"):
            check(getattr(self, key) > 0, f"model.{key}", "must be > 0", getattr(self, key))
        for key in ("dropout", "dropout_hidden", "dropout_input", "dropout_embedding", "weight_drop"):
            check_probability(getattr(self, key), f"model.{key}")
        check(self.init_range > 0, "model.init_range", "must be > 0", self.init_range)


SCHEMAS = {"recipe": WikiText2Recipe, "data": LMDataConfig, "model": AWDLSTMConfig}

# ------------------------------------------------------------------------------------------------ data

SPLITS = ("train", "val", "test")
TOKEN_FILES = {"train": "wiki.train.tokens", "val": "wiki.valid.tokens", "test": "wiki.test.tokens"}
HUB_SPLITS = {"train": "train", "val": "validation", "test": "test"}
UNK, EOS = "<unk>", "<eos>"
# Raw text: a run of letters, digits or underscores is a word, and numbers keep their decimal and thousands
# separators (3.14, 1,000); any other non-space character is a token of its own ("100-metre" -> 100 - metre).
WORD = re.compile(r"\w+(?:[.,]\d+)*|[^\w\s]")


@dataclass
class Corpus:
    vocab: list[str]  # id -> word: <unk>, <eos>, then the train words by falling count
    train: torch.Tensor  # int64 token ids
    val: torch.Tensor
    test: torch.Tensor


def read_token_files(folder: Path) -> dict[str, list[str]]:
    """The lines of the Wikitext release files (wikitext-2-v1.zip)."""
    missing = [name for name in TOKEN_FILES.values() if not (folder / name).is_file()]
    if missing:
        raise UsageError(
            f"Wikitext-2 not found in {folder} (missing {missing[0]}); "
            "set data.path=<folder with wiki.train.tokens, wiki.valid.tokens, wiki.test.tokens>"
        )
    lines = {}
    for split, name in TOKEN_FILES.items():
        with open(folder / name, encoding="utf-8") as f:
            lines[split] = list(f)  # line by line, as awd-lstm-lm's data.py reads them
    return lines


def read_hub(cfg: DictConfig) -> dict[str, list[str]]:
    """The `text` rows (one per line of the release files) of the Hub's wikitext layout, or a local copy."""
    if cfg.path is None:
        network.require_hub(
            f"data.hub_id '{cfg.hub_id}' (or data.source=files data.path=<wiki.*.tokens folder>)"
        )
        location = cfg.hub_id
    else:
        location = str(Path(cfg.path).expanduser())
        if not Path(location).is_dir():
            raise UsageError(
                f"data.path '{cfg.path}' is not a folder (a local copy of {cfg.hub_id} on the Hub)"
            )
    import datasets  # only this source needs it

    try:
        loaded = datasets.load_dataset(location, cfg.hub_config)
        return {split: loaded[HUB_SPLITS[split]]["text"] for split in SPLITS}
    except (OSError, ValueError, KeyError) as err:
        raise UsageError(
            f"data '{location}' ({cfg.hub_config}) could not be loaded: {str(err).splitlines()[0]}"
        ) from err


def read_wiki_json(cfg: DictConfig) -> dict[str, list[str]]:
    """The paragraphs of the articles the sparsify task's reader reads, split by article (stratified)."""
    wiki = cfg.wiki
    try:
        data_file(wiki)
    except UsageError:
        raise UsageError(
            f"data.wiki.file '{wiki.file}' not found (package: {wiki.package}); run `make install`, "
            "or set data.wiki.package=null data.wiki.file=<a JSON file>"
        ) from None
    texts, labels = read_wiki(wiki)
    parts = stratified_split(np.array(labels), list(wiki.split), wiki.split_seed)
    return {split: paragraphs([texts[i] for i in part]) for split, part in zip(SPLITS, parts, strict=True)}


def paragraphs(texts: list[tuple[str, ...]]) -> list[str]:
    return [line.strip() for fields in texts for text in fields for line in text.split("\n") if line.strip()]


READERS = {
    Source.files: lambda cfg: read_token_files(Path(cfg.path).expanduser()),
    Source.hub: read_hub,
    Source.wiki_json: read_wiki_json,
}


def tokenize(lines: list[str], tokenizer: Tokenizer, limit: int | None) -> list[str]:
    """Every line's words, then <eos> (blank lines too, as awd-lstm-lm counts Wikitext); the first `limit`."""
    words: list[str] = []
    for line in lines:
        words += line.split() if tokenizer == Tokenizer.whitespace else WORD.findall(line)
        words.append(EOS)
        if limit is not None and len(words) >= limit:
            break
    return words[:limit]


def build_vocab(train_words: list[str], size: int | None) -> list[str]:
    """<unk>, <eos>, then the train words by falling count (ties alphabetical), `size` in all."""
    counts = Counter(word for word in train_words if word not in (UNK, EOS))
    ranked = sorted(counts, key=lambda word: (-counts[word], word))
    return [UNK, EOS, *ranked[: None if size is None else size - 2]]


def encode(words: list[str], index: dict[str, int]) -> torch.Tensor:
    unknown = index[UNK]
    return torch.tensor([index.get(word, unknown) for word in words], dtype=torch.long)


def load_corpus(cfg: DictConfig) -> Corpus:
    lines = READERS[cfg.source](cfg)
    limits = {"train": cfg.train_limit, "val": cfg.test_limit, "test": cfg.test_limit}
    words = {split: tokenize(lines[split], cfg.tokenizer, limits[split]) for split in SPLITS}
    vocab = build_vocab(words["train"], cfg.vocab_size)
    index = {word: i for i, word in enumerate(vocab)}
    return Corpus(vocab, *(encode(words[split], index) for split in SPLITS))


def batchify(ids: torch.Tensor, streams: int, key: str) -> torch.Tensor:
    """awd-lstm-lm's batchify: cut the tokens into `streams` contiguous streams, rows x streams (the tail that
    does not fill a row is dropped); the hidden state flows down each column."""
    rows = len(ids) // streams
    check(rows >= 2, key, f"must leave >= 2 tokens per stream (the split has {len(ids)} tokens)", streams)
    return ids[: rows * streams].view(streams, rows).t().contiguous()


def windows_per_epoch(rows: int, bptt: int) -> int:
    return math.ceil((rows - 1) / bptt)


def window_lengths(rows: int, recipe: DictConfig, gen: torch.Generator) -> list[int]:
    """Variable-length BPTT (awd-lstm-lm main.py): each window's mean is bptt with probability full_window_p,
    else short_window * bptt; its length is drawn from normal(mean, window_sigma), truncated to an int, at
    least min_window.

    awd-lstm-lm draws until the stream ends, so its number of steps is random. Here exactly windows_per_epoch
    lengths are drawn, then scaled (by about bptt / 68, the mean drawn length) to tile the rows - 1 targets:
    every epoch has the same number of steps (the schedule's length), covers every target exactly once, in
    order, and replays bitwise from the same generator."""
    steps = windows_per_epoch(rows, recipe.bptt)
    full = torch.rand(steps, generator=gen) < recipe.full_window_p
    means = torch.where(full, float(recipe.bptt), recipe.bptt * recipe.short_window)
    drawn = means + recipe.window_sigma * torch.randn(steps, generator=gen)
    drawn = drawn.long().clamp(min=recipe.min_window)  # long(): truncates toward zero, as int() does
    ends = torch.round(drawn.cumsum(0).double() * (rows - 1) / drawn.sum()).long()
    return torch.diff(ends, prepend=ends.new_zeros(1)).tolist()


def bptt_batches(stream: torch.Tensor, recipe: DictConfig, gen: torch.Generator):
    """(inputs, targets), each seq_len x streams, the targets one token ahead."""
    start = 0
    for length in window_lengths(len(stream), recipe, gen):
        yield stream[start : start + length], stream[start + 1 : start + 1 + length]
        start += length


# ------------------------------------------------------------------------------------------------ model

State = tuple[tuple[torch.Tensor, torch.Tensor], ...]  # (h, c) per layer, each 1 x streams x units


class LockedDropout(nn.Module):
    """Variational dropout (Gal & Ghahramani): one mask per sequence, the same at every time step."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # time x streams x features
        if not self.training or self.p == 0:
            return x
        mask = x.new_empty(1, x.size(1), x.size(2)).bernoulli_(1 - self.p) / (1 - self.p)
        return x * mask


def embedded_dropout(embedding: nn.Embedding, tokens: torch.Tensor, p: float) -> torch.Tensor:
    """Drop whole words: rows of the embedding matrix, the same for every occurrence in the batch."""
    weight = embedding.weight
    if p > 0:
        weight = weight * weight.new_empty(weight.size(0), 1).bernoulli_(1 - p) / (1 - p)
    return F.embedding(tokens, weight)


def drop_connect(weight: torch.Tensor, p: float) -> torch.Tensor:
    """Each weight zeroed with probability p, the rest scaled by 1 / (1 - p): F.dropout's result, from a
    uniform draw instead of its bernoulli_, which takes 3 times as long on the CPU (75 vs 25 ms for the paper
    model's 4600 x 1150 matrix, 2 threads): bernoulli_ took 3.6% of a paper-size step in the profile."""
    return weight * (torch.rand_like(weight) >= p) / (1 - p)


def keep_weights_apart() -> None:
    """Replaces nn.LSTM.flatten_parameters: cuDNN would copy the weights into one buffer, but the dropped
    hidden-to-hidden matrix is a fresh tensor every forward (fastai's WeightDropout does the same)."""


class WeightDropLSTM(nn.Module):
    """One nn.LSTM layer with DropConnect on its hidden-to-hidden matrix (awd-lstm-lm's WeightDrop).

    The raw matrix is this module's Parameter; every forward sets the dropped copy on the LSTM as a plain
    tensor, which the fused kernel then reads, so no Python loop runs over time steps.
    """

    def __init__(self, input_size: int, hidden_size: int, p: float):
        super().__init__()
        self.p, self.hidden_size = p, hidden_size
        self.lstm = nn.LSTM(input_size, hidden_size)
        self.weight_hh_raw = self.lstm.weight_hh_l0
        del self.lstm.weight_hh_l0  # no longer a parameter of the LSTM: the optimizer sees the raw one only
        self.lstm.flatten_parameters = keep_weights_apart
        self.lstm.weight_hh_l0 = self.weight_hh_raw.detach()

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        raw = self.weight_hh_raw
        dropping = self.training and self.p > 0
        # view_as: the raw weight as a plain tensor (assigning the Parameter would register it on the LSTM)
        weight = drop_connect(raw, self.p) if dropping else raw.view_as(raw)
        self.lstm.weight_hh_l0 = weight  # nn.LSTM's __setattr__ also points its fused kernel's weights here
        out = self.lstm(x, state)
        # the autograd graph keeps `weight`; the module keeps a leaf, so the model can be deep-copied
        self.lstm.weight_hh_l0 = weight.detach()
        return out


class LMOutput(NamedTuple):
    logits: torch.Tensor | None  # time x streams x vocab (None from AWDLSTM.features)
    state: State
    last_raw: torch.Tensor  # the last layer's output before dropout (TAR)
    last_dropped: torch.Tensor  # after the output dropout (AR)


class AWDLSTM(nn.Module):
    def __init__(self, vocab_size: int, cfg: DictConfig):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, cfg.emb_size)
        sizes = [cfg.emb_size] + [cfg.hidden_size] * (cfg.layers - 1) + [cfg.emb_size]
        self.layers = nn.ModuleList(
            WeightDropLSTM(n_in, n_out, cfg.weight_drop)
            for n_in, n_out in zip(sizes, sizes[1:], strict=False)
        )
        self.drop_input = LockedDropout(cfg.dropout_input)
        self.drop_hidden = LockedDropout(cfg.dropout_hidden)
        self.drop_output = LockedDropout(cfg.dropout)
        self.dropout_embedding = cfg.dropout_embedding
        self.decoder = nn.Linear(cfg.emb_size, vocab_size)
        self.decoder.weight = self.embedding.weight  # tied (Inan et al.; Press & Wolf)
        nn.init.uniform_(self.embedding.weight, -cfg.init_range, cfg.init_range)
        nn.init.zeros_(self.decoder.bias)

    def zero_state(self, streams: int) -> State:
        like = self.embedding.weight
        return tuple(
            (like.new_zeros(1, streams, layer.hidden_size), like.new_zeros(1, streams, layer.hidden_size))
            for layer in self.layers
        )

    def forward(self, tokens: torch.Tensor, state: State) -> LMOutput:
        out = self.features(tokens, state)
        return out._replace(logits=self.decoder(out.last_dropped))

    def features(self, tokens: torch.Tensor, state: State) -> LMOutput:
        """Everything but the decoder (logits None): the loss decodes the last layer's output itself."""
        p_embedding = self.dropout_embedding if self.training else 0.0
        x = self.drop_input(embedded_dropout(self.embedding, tokens, p_embedding))
        new_state = []
        for i, layer in enumerate(self.layers):
            x, (h, c) = layer(self.drop_hidden(x) if i else x, state[i])
            new_state.append((h.float(), c.float()))  # carried in fp32 across windows, even under autocast
        return LMOutput(None, tuple(new_state), x, self.drop_output(x))


# ------------------------------------------------------------------------------------------------ loss


def cross_entropy_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="sum")


class DecodedCrossEntropy(torch.autograd.Function):
    """sum over tokens of cross_entropy(x @ weight.T + bias, targets), `chunk` tokens at a time, each chunk's
    gradient computed in the same pass (softmax - one-hot): the tokens x vocab logits (70M floats at 100
    streams x 70 steps x 10k words), their fp32 copy and their gradient never exist whole, which nn.Linear then
    F.cross_entropy spends a third of a small-model step writing and reading. Matmuls in `dtype` (bf16 under
    autocast, as nn.Linear runs them there), softmax in fp32 (or the inputs' wider type)."""

    @staticmethod
    def forward(ctx, x, weight, bias, targets, chunk: int, dtype: torch.dtype, grads: bool):
        softmax_dtype = torch.promote_types(dtype, torch.float32)
        with torch.autocast(x.device.type, enabled=False):
            w, b = weight.to(dtype), bias.to(dtype)
            total = torch.zeros((), dtype=softmax_dtype, device=x.device)
            grad_x = torch.empty_like(x) if grads else None
            grad_w = torch.zeros_like(weight) if grads else None
            grad_b = torch.zeros_like(bias) if grads else None
            for start in range(0, len(x), chunk):
                xc, tc = x[start : start + chunk].to(dtype), targets[start : start + chunk]
                logits = torch.addmm(b, xc, w.t()).to(softmax_dtype)
                peak = logits.amax(1, keepdim=True)
                exp = (logits - peak).exp_()
                mass = exp.sum(1, keepdim=True)
                total += (peak + mass.log() - logits.gather(1, tc[:, None])).sum()
                if grads:
                    probs = exp.div_(mass)
                    probs[torch.arange(len(tc), device=x.device), tc] -= 1  # d loss / d logits
                    probs = probs.to(dtype)
                    grad_x[start : start + chunk] = probs @ w
                    grad_w += probs.t() @ xc
                    grad_b += probs.sum(0)
        ctx.save_for_backward(grad_x, grad_w, grad_b)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_x, grad_w, grad_b = ctx.saved_tensors
        return grad_x * grad_total, grad_w * grad_total, grad_b * grad_total, None, None, None, None


def decoded_cross_entropy_sum(decoder: nn.Linear, x: torch.Tensor, targets: torch.Tensor,
                              chunk: int | None) -> torch.Tensor:  # fmt: skip
    """The summed cross-entropy of decoder(x) against targets (x: time x streams x features), fused and
    chunked (DecodedCrossEntropy) unless chunk is None."""
    if chunk is None:
        return cross_entropy_sum(decoder(x), targets)
    device = x.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else decoder.weight.dtype
    grads = torch.is_grad_enabled() and (x.requires_grad or decoder.weight.requires_grad)
    return DecodedCrossEntropy.apply(
        x.flatten(0, 1), decoder.weight, decoder.bias, targets.flatten(), chunk, dtype, grads
    )


def decoding_chunk(recipe: DictConfig, device: torch.device) -> int | None:
    """Tokens per chunk of the fused loss, or None for the plain one. `auto` fuses on the CPU only: there it
    made a small-model step 1.3x and a paper-size one 1.1x faster (2-core AMD EPYC, bf16); on an H200 the
    whole logits fit and the chunks' many small kernels made training 0.64x (small) and 0.72x (paper) as fast
    (whole steps interleaved, 4 repeats, medians 234k vs 365k and 264k vs 367k tokens/s)."""
    fused = recipe.loss_impl == LossImpl.fused or (recipe.loss_impl == LossImpl.auto and device.type == "cpu")
    return recipe.loss_chunk if fused else None


def lm_loss(model: AWDLSTM, batch, state: State, recipe: DictConfig, chunk: int | None
            ) -> tuple[torch.Tensor, State]:  # fmt: skip
    """Cross-entropy per token + AR (alpha * mean squared dropped output) + TAR (beta * mean squared change of
    the undropped output between consecutive time steps), on the last layer as in awd-lstm-lm. The decoder
    and the cross-entropy are fused `chunk` tokens at a time (None: not fused)."""
    inputs, targets = batch
    out = model.features(inputs, state)
    loss = decoded_cross_entropy_sum(model.decoder, out.last_dropped, targets, chunk)
    loss = loss / targets.numel()
    loss = loss + recipe.ar_alpha * out.last_dropped.float().pow(2).mean()
    if len(out.last_raw) > 1:
        loss = loss + recipe.tar_beta * (out.last_raw[1:] - out.last_raw[:-1]).float().pow(2).mean()
    return loss, out.state


# ------------------------------------------------------------------------------------------------ metrics


def evaluate(model: AWDLSTM, stream: torch.Tensor, bptt: int, split: str, chunk: int | None = None
             ) -> dict[str, float]:  # fmt: skip
    """Mean cross-entropy over every target of the split (all tokens but each stream's first), the hidden
    state carried through the whole split from a zero state; perplexity is its exp."""
    state = model.zero_state(stream.size(1))
    total = torch.zeros((), dtype=torch.float64, device=stream.device)
    for start in range(0, len(stream) - 1, bptt):
        targets = stream[start + 1 : start + 1 + bptt]
        out = model.features(stream[start : start + len(targets)], state)
        total += decoded_cross_entropy_sum(model.decoder, out.last_dropped, targets, chunk).double()
        state = out.state
    mean = total / ((len(stream) - 1) * stream.size(1))
    return {f"{split}_loss": mean.item(), f"{split}_{PERPLEXITY.name}": mean.exp().item()}


# ------------------------------------------------------------------------------------------------ task


def build(cfg: DictConfig, device: torch.device) -> Task:
    torch.manual_seed(cfg.seed)
    corpus = load_corpus(cfg.data)
    recipe, streams = cfg.recipe, cfg.trainer.batch_size
    train = batchify(corpus.train, streams, "trainer.batch_size").to(device)
    evals = {
        "val": batchify(corpus.val, recipe.eval_batch_size, "recipe.eval_batch_size").to(device),
        "test": batchify(corpus.test, recipe.test_batch_size, "recipe.test_batch_size").to(device),
    }
    model = AWDLSTM(len(corpus.vocab), cfg.model).to(device)
    chunk = decoding_chunk(recipe, device)
    return Task(
        model=model,
        train_size=(len(train) - 1) * streams,  # target tokens per epoch
        steps_per_epoch=windows_per_epoch(len(train), recipe.bptt),
        batches=partial(bptt_batches, train, recipe),
        loss=partial(lm_loss, recipe=recipe, chunk=chunk),
        evaluate=lambda model, split: evaluate(model, evals[split], recipe.bptt, split, chunk),
        metric=PERPLEXITY,
        splits=("val", "test"),
        unit="tokens",
        count=lambda batch: batch[1].numel(),
        lr_scale=lambda batch: len(batch[0]) / recipe.bptt,  # awd-lstm-lm: lr * seq_len / bptt
        init_state=lambda: model.zero_state(streams),
    )
