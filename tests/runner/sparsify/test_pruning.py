"""Gradual magnitude pruning: the schedule, the masks, and structured removal giving the same function."""

import pytest
import torch

from runner.sparsify import pruning, training
from runner.sparsify.schema import compose

TOTAL_STEPS = 100


def tiny_bert(seed=0, layers=2, hidden=32, intermediate=64, positions=32):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=50,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=intermediate,
        max_position_embeddings=positions,
        num_labels=3,
    )
    return BertForSequenceClassification(config).eval()


def inputs():
    ids = torch.randint(0, 50, (3, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0  # padding must stay padding after pruning
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


@pytest.fixture(scope="module")
def prune_cfg():
    return compose([]).prune


def zhu_gupta(step, t0, t1, s_i, s_f):
    """The paper's formula, written independently of the code under test."""
    if step < t0:
        return 0.0
    if step >= t1:
        return s_f
    return s_f + (s_i - s_f) * (1 - (step - t0) / (t1 - t0)) ** 3


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_unstructured_sparsity_follows_the_cubic_ramp_at_every_update(prune_cfg, scope):
    model = tiny_bert()
    cfg = compose([f"prune.scope={scope}", "prune.start=0.1", "prune.end=0.7", "prune.update_every=7"]).prune
    pruner = pruning.UnstructuredPruner(model, cfg, 0.9, TOTAL_STEPS)
    assert len(pruner.modules) == 2 * 6  # q, k, v, attention output, intermediate, output per layer
    t0, t1 = 10, 70
    tolerance = 1e-4 if scope == "global" else 1e-3  # per matrix, k = round(s * n) with n >= 1024
    updates = [*range(t0, t1, 7), t1]  # every update_every steps from t0, and t1 itself
    for step in range(TOTAL_STEPS):
        pruner(step)
        last = max((u for u in updates if u <= step), default=None)  # masks hold between updates
        expected = 0.0 if last is None else zhu_gupta(last, t0, t1, cfg.init_sparsity, 0.9)
        assert pruning.sparsity_of(pruner.modules) == pytest.approx(expected, abs=tolerance), step
    if scope == "layer":  # every matrix on its own at the target
        for module in pruner.modules.values():
            assert pruning.sparsity_of({"m": module}) == pytest.approx(0.9, abs=1e-3)


def test_masks_only_grow_and_survive_the_state_dict(prune_cfg):
    model = tiny_bert()
    pruner = pruning.UnstructuredPruner(model, prune_cfg, 0.8, TOTAL_STEPS)
    pruner.apply(0.3)
    before = {n: m.weight_mask.clone() for n, m in pruner.modules.items()}
    pruner.apply(0.6)
    for name, module in pruner.modules.items():
        assert torch.all(module.weight_mask <= before[name])  # a pruned weight never comes back
    copy = tiny_bert(seed=1)
    pruning.UnstructuredPruner(copy, prune_cfg, 0.8, TOTAL_STEPS)
    copy.load_state_dict(model.state_dict())  # masks are buffers: a checkpoint resumes them
    name = next(iter(pruner.modules))
    assert torch.equal(copy.get_submodule(name).weight_mask, pruner.modules[name].weight_mask)


def test_structured_removal_computes_the_masked_function_with_smaller_matrices(prune_cfg):
    model = tiny_bert()
    pruner = pruning.StructuredPruner(model, prune_cfg, 0.5, TOTAL_STEPS)
    for step in range(TOTAL_STEPS):
        pruner(step)
    with torch.no_grad():
        masked = model(**inputs()).logits
    params_before, _ = pruning.count(model)
    pruner.finalize(model)
    with torch.no_grad():
        shrunk = model(**inputs()).logits
    torch.testing.assert_close(shrunk, masked, rtol=1e-5, atol=1e-6)
    assert pruning.structure(model) == {"heads": [2, 2], "ffn": [32, 32]}
    layer = model.bert.encoder.layer[0]
    assert layer.attention.self.query.weight.shape == (16, 32)  # 2 heads of 8
    assert layer.output.dense.weight.shape == (32, 32)
    assert pruning.count(model)[0] < params_before


def test_structured_keeps_min_heads_per_layer():
    cfg = compose(["prune.min_heads_per_layer=3"]).prune
    model = tiny_bert()
    pruner = pruning.StructuredPruner(model, cfg, 0.9, TOTAL_STEPS)
    pruner.apply(0.9)
    assert pruning.structure(pruner.finalize(model))["heads"] == [3, 3]


def test_saved_shrunk_model_loads_back_identical(prune_cfg, tmp_path):
    model = tiny_bert()
    pruner = pruning.StructuredPruner(model, prune_cfg, 0.5, TOTAL_STEPS)
    pruner.apply(0.5)
    pruner.finalize(model)
    training.save_model(model, tmp_path)
    loaded = training.load_saved(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs()).logits, model(**inputs()).logits)


@pytest.mark.parametrize(
    ("total", "keep", "expected"),
    [(6, 3, [0, 2, 4]), (12, 6, [0, 2, 4, 6, 8, 10]), (12, 4, [0, 3, 6, 9]), (6, 6, list(range(6)))],
)
def test_kept_layers_are_evenly_spaced_from_the_bottom(total, keep, expected):
    assert pruning.kept_layer_indices(total, keep) == expected  # DistilBERT's choice for 12 -> 6


def test_dropped_layers_model_equals_a_shallow_bert_with_the_kept_weights():
    deep = tiny_bert(layers=4)
    shallow = tiny_bert(seed=1, layers=2)  # an independent 2-layer BERT, given layers 0 and 2 of `deep`
    renamed = {
        k.replace("layer.2.", "layer.1."): v for k, v in deep.state_dict().items() if "layer.1." not in k
    }
    shallow.load_state_dict({k: v for k, v in renamed.items() if "layer.3." not in k})
    pruning.drop_layers(deep, 2)
    assert deep.config.num_hidden_layers == 2
    with torch.no_grad():
        torch.testing.assert_close(deep(**inputs()).logits, shallow(**inputs()).logits)


def test_dropped_and_shrunk_model_saves_and_loads_back_identical(prune_cfg, tmp_path):
    model = pruning.drop_layers(tiny_bert(layers=4), 2)
    pruner = pruning.StructuredPruner(model, prune_cfg, 0.5, TOTAL_STEPS)
    pruner.apply(0.5)
    pruner.finalize(model)
    training.save_model(model, tmp_path)
    loaded = training.load_saved(tmp_path)
    assert len(pruning.encoder_layers(loaded)) == 2
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs()).logits, model(**inputs()).logits)


def test_param_patterns_match_whole_names():
    assert pruning.matches("bert.encoder.layer.3.output.dense", [r"re:.*layer\.\d+\.output\.dense"])
    assert not pruning.matches("bert.encoder.layer.3.output.dense.x", [r"re:.*layer\.\d+\.output\.dense"])
    assert pruning.matches("classifier", ["classifier"])


def taylor_by_hand(model, batches):
    """An unpruned copy's gradients: per step and unit (sum of w * dL/dw over the unit)^2, summed over steps."""
    heads, neurons = [0.0] * 2, [0.0] * 2
    for labels in batches:
        model.zero_grad()
        model(**inputs(), labels=labels).loss.backward()
        for i, layer in enumerate(model.bert.encoder.layer):
            a, d = layer.attention.self, 8  # 4 heads of 8
            wg = lambda m, name: getattr(m, name) * getattr(m, name).grad  # noqa: E731
            rows = sum(wg(m, "weight").sum(1) + wg(m, "bias") for m in (a.query, a.key, a.value))
            per_head = (rows + wg(layer.attention.output.dense, "weight").sum(0)).view(-1, d).sum(1)
            up, down = layer.intermediate.dense, layer.output.dense
            per_neuron = wg(up, "weight").sum(1) + wg(up, "bias") + wg(down, "weight").sum(0)
            heads[i] = heads[i] + per_head.detach() ** 2
            neurons[i] = neurons[i] + per_neuron.detach() ** 2
    return heads, neurons


def test_taylor_importance_is_the_squared_first_order_loss_change_per_unit():
    cfg = compose(["prune.importance=taylor"]).prune
    batches = [torch.tensor([0, 1, 2]), torch.tensor([2, 2, 0])]
    model, reference = tiny_bert(), tiny_bert()  # the same weights; eval mode: no dropout, gradients as ever
    pruner = pruning.StructuredPruner(model, cfg, 0.5, TOTAL_STEPS)
    expected_heads, expected_neurons = taylor_by_hand(reference, batches)
    for labels in batches:
        model.zero_grad()
        model(**inputs(), labels=labels).loss.backward()
        pruner.taylor.end_step()
    for i, layer in enumerate(pruner.layers):
        heads, neurons = pruner.scores(i, layer)
        torch.testing.assert_close(heads, expected_heads[i], rtol=1e-4, atol=1e-10)
        torch.testing.assert_close(neurons, expected_neurons[i], rtol=1e-4, atol=1e-10)
    assert pruner.scores(0, pruner.layers[0])[0].eq(0).all()  # taken: the next update counts afresh


def test_taylor_pruning_removes_the_units_that_change_the_loss_least_and_they_stay_removed():
    cfg = compose(["prune.importance=taylor", "prune.update_every=1"]).prune
    model = tiny_bert()
    pruner = pruning.StructuredPruner(model, cfg, 0.5, TOTAL_STEPS)
    model(**inputs(), labels=torch.tensor([0, 1, 2])).loss.backward()
    pruner.taylor.end_step()
    heads = pruner.taylor.totals[0]["head"].clone()
    pruner.apply(0.5)
    kept = pruning.kept_units(model.bert.encoder.layer[0].attention.self.value.weight_mask[:, 0], 8)
    assert kept.tolist() == sorted(torch.argsort(heads, descending=True)[:2].tolist())
    model.zero_grad()
    model(**inputs(), labels=torch.tensor([2, 1, 0])).loss.backward()
    pruner.taylor.end_step()
    removed = [h for h in range(4) if h not in kept.tolist()]
    assert pruner.taylor.totals[0]["head"][removed].eq(0).all()  # no gradient reaches a masked head
