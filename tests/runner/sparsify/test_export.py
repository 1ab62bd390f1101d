"""Distillation loss, ONNX export and int8 quantization against independent expectations."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from runner.sparsify import engines, export, sessions, training
from runner.sparsify.distill import distillation_loss
from runner.sparsify.schema import compose
from tests.runner.sparsify.test_pruning import tiny_bert

INT8_TOLERANCE = 0.05  # max |logit difference| of int8 vs fp32 on the tiny model (logits are about +-1)


def test_distillation_loss_mixes_scaled_kl_and_cross_entropy():
    student = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.2, 0.1]])
    teacher = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    labels = torch.tensor([0, 1])
    t = 2.0
    p = F.softmax(teacher / t, -1)
    kl = (p * (p.log() - F.log_softmax(student / t, -1))).sum(-1).mean()
    expected = 0.3 * t * t * kl + 0.7 * F.cross_entropy(student, labels)
    assert distillation_loss(student, teacher, labels, t, 0.3).item() == pytest.approx(
        expected.item(), rel=1e-6
    )
    same = distillation_loss(student, student, labels, t, 1.0).item()
    assert same == pytest.approx(0.0, abs=1e-7)  # no signal when the student equals the teacher


def test_stored_teacher_logits_follow_their_examples_through_shuffled_batches():
    teacher, student = tiny_bert(seed=0), tiny_bert(seed=1)
    ids = torch.randint(0, 50, (10, 8), generator=torch.Generator().manual_seed(0))
    split = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "token_type_ids": torch.zeros_like(ids),
    }
    encoded = {"train": split | {"labels": torch.arange(10) % 3}, "validation": {}, "test": {}}
    cfg = compose(["trainer.batch_size=4"])
    stored = training.with_teacher_logits(encoded, teacher, batch_size=3)
    loss = training.distilled(cfg.distill)
    task = training.make_task(student, stored, cfg, loss)
    for batch in task.batches(torch.Generator().manual_seed(1)):
        with torch.no_grad():
            fresh = teacher(input_ids=batch[0], attention_mask=batch[1], token_type_ids=batch[2]).logits
            torch.testing.assert_close(batch[4], fresh)
            kd = cfg.distill
            expected = distillation_loss(
                training.logits(student, batch), fresh, batch[3], kd.temperature, kd.kd_weight
            )
            torch.testing.assert_close(loss(student, batch), expected)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = tiny_bert()
    cfg = compose([]).export
    folder = tmp_path_factory.mktemp("onnx")
    with engines.quiet():
        fp32 = export.export_onnx(model, folder / "fp32.onnx", cfg, export.example_inputs(2, 8, 50, seed=0))
        int8 = export.quantize_onnx(fp32, folder / "int8.onnx", cfg)
    return model, fp32, int8


def test_onnx_fp32_equals_torch_on_new_shapes(exported):
    model, fp32, _ = exported
    inputs = export.example_inputs(3, 20, 50, seed=3)  # not the traced batch/sequence length
    with torch.no_grad():
        expected = model(**inputs).logits.numpy()
    got = sessions.run_session(sessions.session(fp32, threads=1), inputs)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_onnx_int8_is_smaller_and_close_to_fp32(exported):
    _, fp32, int8 = exported
    inputs = export.example_inputs(4, 16, 50, seed=4)
    reference = sessions.run_session(sessions.session(fp32, threads=1), inputs)
    quantized = sessions.run_session(sessions.session(int8, threads=1), inputs)
    assert int8.stat().st_size < fp32.stat().st_size
    assert np.abs(quantized - reference).max() < INT8_TOLERANCE
    assert not np.array_equal(quantized, reference)  # really int8 arithmetic, not a copy


def test_torch_dynamic_int8_is_close_to_fp32():
    model = tiny_bert()
    inputs = export.example_inputs(2, 10, 50, seed=5)
    with torch.no_grad():
        reference = model(**inputs).logits
        quantized = export.quantize_torch(model)(**inputs).logits
    assert math.isfinite(quantized.abs().max().item())
    assert (quantized - reference).abs().max().item() < INT8_TOLERANCE


@pytest.mark.parametrize("fault", ["good", "empty", "truncated", "not a model", "missing"])
def test_a_saved_onnx_model_is_checked_before_it_is_timed(exported, tmp_path, fault):
    """The bench stage re-times saved models: each is read back and checked first; a spoilt one is one line."""
    from runner.errors import UsageError

    _, fp32, _ = exported
    path = tmp_path / "model.onnx"
    data = fp32.read_bytes()
    spoilt = {
        "good": data,
        "empty": b"",
        "truncated": data[: len(data) // 2],
        "not a model": b"epoch,step\n1,2\n",
    }
    if fault != "missing":
        path.write_bytes(spoilt[fault])
    if fault == "good":
        export.check_onnx(path)
        return
    with pytest.raises(UsageError, match=str(path)):
        export.check_onnx(path)


def calibration_batches(n: int) -> list[dict[str, np.ndarray]]:
    return [
        {k: v.numpy() for k, v in export.example_inputs(4, 16, 50, seed=10 + i).items()} for i in range(n)
    ]


def test_every_engine_computes_the_torch_function(exported, tmp_path):
    """fp32 on ONNX Runtime and OpenVINO equals torch to float rounding; bf16 and every int8 form (torch,
    ONNX Runtime dynamic and static, OpenVINO with NNCF) are within INT8_TOLERANCE of it and really differ."""
    from runner.sparsify import isolated, openvino_engine

    model, fp32, dynamic = exported
    cfg = compose([]).export
    inputs = export.example_inputs(3, 20, 50, seed=6)  # not the traced shapes
    numpy_inputs = [{k: v.numpy() for k, v in inputs.items()}]
    with torch.no_grad():
        expected = model(**inputs).logits.numpy()
    with engines.quiet():
        static = export.quantize_static_onnx(
            fp32, tmp_path / "static.onnx", calibration_batches(4), cfg.static
        )
    ir = isolated.call(openvino_engine.convert, str(fp32), str(tmp_path / "fp32.xml"))
    ir_int8 = isolated.call(
        openvino_engine.quantize, ir, str(tmp_path / "int8.xml"), calibration_batches(4), 4
    )

    def ov(xml: str, precision: str | None) -> np.ndarray:
        return isolated.call(openvino_engine.logits, xml, 1, "LATENCY", precision, numpy_inputs)

    exact = {"onnxruntime fp32": sessions.run_session(sessions.session(fp32, threads=1), inputs),
             "openvino fp32": ov(ir, cfg.openvino.fp32_precision)}  # fmt: skip
    close = {
        "torch bf16": engines.torch_forward(model, "bf16")(inputs),
        "torch int8": engines.torch_forward(engines.at_precision(model, "int8"), "int8")(inputs),
        "onnxruntime int8": sessions.run_session(sessions.session(dynamic, threads=1), inputs),
        "onnxruntime int8-static": sessions.run_session(sessions.session(static, threads=1), inputs),
        "openvino int8-static": ov(ir_int8, cfg.openvino.int8_precision),
    }
    for name, got in exact.items():
        np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=name)
    for name, got in close.items():
        assert np.abs(got - expected).max() < INT8_TOLERANCE, name
        assert not np.array_equal(got, expected), f"{name}: not really reduced precision"


def test_hidden_state_and_attention_terms_by_hand():
    """Two layers of a student against layers 0 and 2 of a teacher; padded tokens never count."""
    from runner.sparsify.distill import attention_loss, hidden_state_loss

    g = torch.Generator().manual_seed(0)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    student = tuple(torch.randn(2, 3, 4, generator=g) for _ in range(3))
    teacher = tuple(torch.randn(2, 3, 4, generator=g) for _ in range(4))
    real = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    mse = lambda s, t: sum(((s[b, i] - t[b, i]) ** 2).mean() for b, i in real) / len(real)  # noqa: E731
    expected = (mse(student[0], teacher[0]) + mse(student[1], teacher[1]) + mse(student[2], teacher[3])) / 3
    torch.testing.assert_close(hidden_state_loss(student, teacher, [0, 2], mask), expected)
    moved = tuple(s.clone() for s in student)
    moved[1][1, 2] += 100.0  # a padded token
    torch.testing.assert_close(hidden_state_loss(moved, teacher, [0, 2], mask), expected)

    softmax = lambda n: torch.softmax(torch.randn(2, n, 3, 3, generator=g), -1)  # noqa: E731
    s_maps, t_maps = (softmax(2), softmax(2)), (softmax(4), softmax(4), softmax(4))  # pruned: fewer heads
    kl = lambda p, q: (p * (p / q).log()).sum()  # noqa: E731
    per_layer = [sum(kl(t_maps[t].mean(1)[b, i], s_maps[j].mean(1)[b, i]) for b, i in real) / len(real)
                 for j, t in enumerate([0, 2])]  # fmt: skip
    torch.testing.assert_close(attention_loss(s_maps, t_maps, [0, 2], mask), sum(per_layer) / 2)
    assert attention_loss(t_maps, t_maps, [0, 1], mask).item() == pytest.approx(0.0, abs=1e-6)


def test_deep_distillation_adds_both_terms_against_the_teacher_on_the_same_batch():
    from runner.sparsify.distill import attention_loss, hidden_state_loss

    cfg = compose(["distill=deep"]).distill
    teacher, student = tiny_bert(seed=0), tiny_bert(seed=1, layers=1)
    for model in (teacher, student):
        model.set_attn_implementation("eager")
    ids = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    batch = (ids, mask, torch.zeros_like(ids), torch.tensor([0, 2]), torch.randn(2, 3))
    run = {"input_ids": ids, "attention_mask": mask, "token_type_ids": batch[2]}
    s = student(**run, output_hidden_states=True, output_attentions=True)
    with torch.no_grad():
        t = teacher(**run, output_hidden_states=True, output_attentions=True)
    expected = (
        distillation_loss(s.logits, batch[4], batch[3], cfg.temperature, cfg.kd_weight)
        + hidden_state_loss(s.hidden_states, t.hidden_states, [1], mask)
        + attention_loss(s.attentions, t.attentions, [1], mask)
    )
    torch.testing.assert_close(training.distilled(cfg, teacher, [1])(student, batch), expected)
    plain = training.distilled(compose([]).distill, teacher, [1])(student, batch)  # weights 0: logits only
    torch.testing.assert_close(
        plain, distillation_loss(s.logits, batch[4], batch[3], cfg.temperature, cfg.kd_weight)
    )
