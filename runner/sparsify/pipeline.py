"""`adamrun sparsify-bert`: the whole path in resumable stages, each writing under the run directory.

    stages/finetune/            dense fine-tuned teacher (model.pt, config.json, structure.json, metrics.json)
    stages/prune-<variant>/     one gradual-pruning run with distillation per sparsity x mode
    stages/quantize/            variants.json: every (variant, precision, engine) with its measured accuracy;
                                floor.json: TF-IDF + logistic regression on the same split (floor.py)
    variants/<variant>-<precision>/model.onnx     every ONNX model that is benchmarked
    stages/bench/               timings.json, instances.json, environment.json
    stages/confirm/             confirm.json: dense and the winner over confirm.seeds (see confirm.py)
    seeds/<seed>/               those seeds' own stages and variants
    stages/scale/               scaling.json: the scaling study (scaling.py), also as scaling.csv and plots
    comparison.csv, report.md, pareto.png

A stage whose outputs exist is skipped under stage=all; naming a stage reruns just that one (stage=bench also
rewrites the report from the new timings, as stage=confirm and stage=scale do).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from runner import checkpoint, signals
from runner.config import check
from runner.errors import UsageError
from runner.results import read_json_file, write_json, write_text

STAGES = ("finetune", "prune", "quantize", "bench", "confirm", "scale", "report")
REPORTED = ("bench", "confirm", "scale")  # stages whose results report.md shows
DONE = "metrics.json"  # written last by a training stage: its presence means the stage finished


@dataclass
class Variant:
    name: str  # dense | s<sparsity>-unstructured | s<sparsity>-structured[-<layers>L]
    sparsity: float
    structured: bool
    layers: int | None = None  # encoder layers kept (structured variants); None: all of the model's


@dataclass
class Run:
    cfg: DictConfig
    dir: Path
    top: Path | None = None  # the run a seeds/<seed>/ run belongs to (resume=true is given it); None: itself
    split_seed: int | None = None  # the seed of the train/validation/test split; None: cfg.seed
    cache: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.split_seed = self.cfg.seed if self.split_seed is None else self.split_seed

    def stage(self, name: str) -> Path:
        return self.dir / "stages" / name

    def texts(self) -> Any:
        """The task's train/validation/test texts and labels (task.TaskData, loaded once per process)."""
        if "texts" not in self.cache:
            from runner.sparsify import task

            self.cache["texts"] = task.load_task(self.cfg.task, self.split_seed)
        return self.cache["texts"]

    def data(self) -> tuple[dict[str, dict], list[str]]:
        """Encoded train/validation/test splits and the label names (loaded once per process)."""
        if "data" not in self.cache:
            from runner.sparsify import model, task

            loaded = self.texts()
            tokenizer = model.load_tokenizer(self.cfg.model)
            encoded = {
                s: task.encode(getattr(loaded, s), tokenizer, self.cfg.task.max_len) for s in task.SPLITS
            }
            self.cache["data"] = (encoded, loaded.label_names)
        return self.cache["data"]


def variants(cfg: DictConfig) -> list[Variant]:
    """Dense, then per sparsity: unstructured (every layer) and structured at each depth of sparsify.layers."""
    pruned = []
    for s in cfg.sparsify.sparsity:
        if cfg.sparsify.unstructured:
            pruned.append(Variant(f"s{s:g}-unstructured", s, False))
        if cfg.sparsify.structured:
            pruned += [
                Variant(f"s{s:g}-structured" + (f"-{n}L" if n else ""), s, True, n)
                for n in cfg.sparsify.layers
            ]
    return [Variant("dense", 0.0, False), *pruned]


def model_dir(run: Run, variant: Variant) -> Path:
    return run.stage("finetune" if variant.name == "dense" else f"prune-{variant.name}")


def require(path: Path, stage: str) -> None:
    if not path.exists():
        raise UsageError(f"stage={stage} needs {path} (run the earlier stages first, e.g. stage=all)")


def for_pruning(cfg: DictConfig, epochs: int) -> DictConfig:
    """The config of one pruning run: its own epochs, and prune.lr as its peak lr where it is set."""
    changed = copy.deepcopy(cfg)
    changed.trainer.epochs = epochs
    if cfg.prune.lr is not None:
        changed.optimizer.lr = cfg.prune.lr
    return changed


# ------------------------------------------------------------------------------------------ the stages
def train(
    run: Run, encoded: dict, model: Any, cfg: DictConfig, out: Path, loss: Any, after_step: Any = None
) -> list[dict]:
    from runner.loop import fit
    from runner.sparsify.training import make_task

    saved = checkpoint.load(out) if cfg.resume else None
    outcome = fit(make_task(model, encoded, cfg, loss, after_step), cfg, out, saved=saved)
    top = run.top or run.dir
    if outcome.status == "interrupted":
        print(f"{out.name}: interrupted; continue with: adamrun sparsify-bert resume=true run_dir={top}")
        raise signals.Interrupted(signals.exit_code() - 128)
    if outcome.status != "finished":
        raise SystemExit(f"{out.name}: training {outcome.status}; rerun with resume=true run_dir={top}")
    return outcome.metrics


def finish(run: Run, model: Any, out: Path, history: list[dict]) -> None:
    """Save the trained variant and its test metrics; metrics.json marks the stage done."""
    from runner.sparsify import training

    training.save_model(model, out)
    encoded, _ = run.data()
    test = encoded["test"]
    found = training.scores(
        training.predict(training.torch_forward(model), test, run.cfg.export.eval_batch_size),
        test["labels"],
        "test",
    )
    write_json(out / DONE, {"epochs": history, **found})


def finetune(run: Run, forced: bool) -> None:
    import torch

    from runner.sparsify import model as models
    from runner.sparsify.training import cross_entropy

    out = run.stage("finetune")
    if (out / DONE).exists() and not forced:
        return
    encoded, labels = run.data()
    torch.manual_seed(run.cfg.seed)  # the new classification head
    model = models.load_model(run.cfg.model, len(labels))
    finish(run, model, out, train(run, encoded, model, run.cfg, out, cross_entropy))


def prune(run: Run, forced: bool, only: list[Variant] | None = None) -> None:
    """Every pruned variant of the config (or `only` those) not trained yet, each from the run's teacher."""
    from runner.sparsify import pruning, training

    teacher_dir = run.stage("finetune")
    require(teacher_dir / DONE, "prune")
    chosen = variants(run.cfg)[1:] if only is None else only
    todo = [v for v in chosen if forced or not (model_dir(run, v) / DONE).exists()]
    if not todo:
        return
    teacher = training.load_saved(teacher_dir)
    encoded = training.with_teacher_logits(run.data()[0], teacher, run.cfg.export.eval_batch_size)
    for variant in todo:
        out = model_dir(run, variant)
        student = training.load_saved(teacher_dir)
        dropped = variant.layers is not None
        if dropped:
            pruning.drop_layers(student, variant.layers)
        cfg = for_pruning(run.cfg, run.cfg.prune.layer_drop_epochs if dropped else run.cfg.prune.epochs)
        steps = training.steps_per_epoch(encoded, cfg) * cfg.trainer.epochs
        pruner = pruning.PRUNERS[variant.structured](student, cfg.prune, variant.sparsity, steps)
        depth = teacher.config.num_hidden_layers
        layer_map = pruning.kept_layer_indices(depth, variant.layers) if dropped else list(range(depth))
        if cfg.distill.attention_weight:
            # only eager attention returns its maps (not saved: the exports use sdpa)
            for model in (student, teacher):
                model.set_attn_implementation("eager")
        loss = training.distilled(cfg.distill, teacher, layer_map)
        history = train(run, encoded, student, cfg, out, loss, pruner)
        finish(run, pruner.finalize(student), out, history)


def quantize(run: Run, forced: bool) -> None:
    from runner.sparsify import engines
    from runner.sparsify.bench import progress

    out = run.stage("quantize") / "variants.json"
    if out.exists() and not forced:
        return
    encoded, _ = run.data()
    rows = []
    with progress() as bar:
        for variant in bar.track(variants(run.cfg), description="export, quantize, test accuracy"):
            folder = model_dir(run, variant)
            require(folder / DONE, "quantize")
            rows += engines.build_variant(run, variant, folder, encoded)
    if run.cfg.floor.enabled:
        from runner.sparsify import floor

        write_json(run.stage("quantize") / floor.RESULT, floor.fit(run.texts(), run.cfg.floor))
    write_json(out, rows)  # last: its presence marks the stage done


def bench(run: Run, forced: bool) -> None:
    from runner.sparsify import bench as benchmark
    from runner.sparsify import export

    out = run.stage("bench")
    if (out / "timings.json").exists() and not forced:
        return
    require(run.stage("quantize") / "variants.json", "bench")
    rows = read_json_file(run.stage("quantize") / "variants.json")
    for row in rows:  # every saved ONNX model is checked before the first is timed
        if str(row.get("path", "")).endswith(".onnx"):
            export.check_onnx(Path(row["path"]))
    benchmark.run_all(run.cfg, rows, out)


def seed_run(run: Run, seed: int) -> Run:
    """The run again under seeds/<seed>/ with every seeded step on `seed`, on the parent run's split (so every
    seed is tested on the same examples, none of which was read to choose the winner)."""
    cfg = copy.deepcopy(run.cfg)
    cfg.seed = seed
    return Run(cfg, run.dir / "seeds" / str(seed), top=run.top or run.dir, split_seed=run.split_seed)


def tested(run: Run, variant: Variant, engine: str, precision: str) -> float:
    """Test accuracy of one (variant, engine, precision), built as the quantize stage builds it."""
    from runner.sparsify import engines

    [row] = engines.build_variant(run, variant, model_dir(run, variant), run.data()[0], [(engine, precision)])
    return row["accuracy"]


def one_seed(run: Run, winner: dict, seed: int) -> dict:
    """Dense and the winner alone trained, built and tested with `seed` (kept in seeds/<seed>/)."""
    from runner.sparsify import confirm as confirming

    sub = seed_run(run, seed)
    saved = sub.dir / confirming.RESULT
    if saved.exists():
        return read_json_file(saved)
    dense, variant = (next(v for v in variants(run.cfg) if v.name == n) for n in ("dense", winner["variant"]))
    finetune(sub, forced=False)
    if variant.name != "dense":
        prune(sub, forced=False, only=[variant])
    found = {"seed": seed, "dense": tested(sub, dense, "torch", "fp32"),
             "winner": tested(sub, variant, winner["engine"], winner["precision"])}  # fmt: skip
    write_json(saved, found)
    return found


def headline_winner(run: Run) -> tuple[list[dict], dict]:
    """The quantize stage's rows and the winner its bench chose at the headline point (confirm.chosen)."""
    from runner.sparsify import confirm as confirming

    rows = read_json_file(run.stage("quantize") / "variants.json")
    timings = read_json_file(run.stage("bench") / "timings.json")
    return rows, confirming.chosen(rows, timings, list(run.cfg.bench.headline))


def confirm(run: Run, forced: bool) -> None:
    """Dense and the winner (chosen on validation with the run's seed) on every seed of confirm.seeds."""
    from runner.sparsify import confirm as confirming

    out = run.stage("confirm") / confirming.RESULT
    if out.exists() and not forced:
        return
    require(run.stage("bench") / "timings.json", "confirm")
    _, winner = headline_winner(run)
    seeds = [{"seed": int(run.cfg.seed), "dense": winner["dense_accuracy"], "winner": winner["accuracy"]}]
    seeds += [one_seed(run, winner, int(s)) for s in run.cfg.confirm.seeds]
    write_json(out, confirming.summary(winner, seeds, run.cfg.confirm))


def scale(run: Run, forced: bool) -> None:
    """The scaling study of the winner and the dense int8 deployment it is compared with (bench.scaling)."""
    from runner.sparsify import report as reporting
    from runner.sparsify import scaling

    out = run.stage("scale") / "scaling.json"
    if not run.cfg.bench.scaling.enabled or (out.exists() and not forced):
        return
    require(run.stage("bench") / "timings.json", "scale")
    rows, winner = headline_winner(run)
    studied = [r for r in rows if reporting.name(r) in (winner["name"], winner["int8_baseline"])]
    mask = run.data()[0]["test"]["attention_mask"][: run.cfg.bench.scaling.real_lengths]
    write_json(out, scaling.study(studied, run.cfg, [int(n) for n in mask.sum(1)]))


def report(run: Run, forced: bool) -> None:
    from runner.sparsify import report as reporting

    require(run.stage("bench") / "timings.json", "report")
    reporting.write(run.cfg, run.dir)


STAGE_FUNCTIONS = {
    "finetune": finetune,
    "prune": prune,
    "quantize": quantize,
    "bench": bench,
    "confirm": confirm,
    "scale": scale,
    "report": report,
}


# ------------------------------------------------------------------------------------------ entry point
def resolve_run_dir(cfg: DictConfig) -> Path:
    stage = str(cfg.stage)
    if cfg.run_dir is not None:
        path = Path(cfg.run_dir)
        if stage != "all" and not path.is_dir():
            raise UsageError(f"run_dir '{path}' does not exist (stage={stage} re-uses a finished run)")
        return path
    if stage not in ("all", "finetune"):
        raise UsageError(
            f"stage={stage} re-uses the earlier stages of a run: give run_dir=results/sparsify/<id>"
        )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(cfg.results_dir) / "sparsify" / f"{stamp}-{cfg.model.name}-{cfg.task.name}"


def selected(stage: str) -> list[str]:
    """The stages that `stage=...` runs, in order: all, or the one named (bench, confirm and scale also rewrite
    the report, which shows what they found)."""
    if stage == "all":
        return list(STAGES)
    return [stage, "report"] if stage in REPORTED else [stage]


def check_depths(cfg: DictConfig) -> None:
    """sparsify.layers against the model's depth before any training (reads the model's config.json only)."""
    from transformers import AutoConfig

    from runner.sparsify.model import pretrained

    wanted = [n for n in cfg.sparsify.layers if n is not None]
    if not (wanted and cfg.sparsify.structured):
        return
    depth = pretrained(AutoConfig, cfg.model).num_hidden_layers
    check(max(wanted) <= depth, "sparsify.layers", f"must not exceed the model's {depth} layers", wanted)


def run(cfg: DictConfig) -> Path:
    """Run the selected stage (or all of them) and return the run directory."""
    import torch

    from runner.sparsify import report as reporting

    stage = str(cfg.stage)
    if cfg.trainer.threads is not None:
        torch.set_num_threads(cfg.trainer.threads)
    if "prune" in selected(stage):
        check_depths(cfg)
    run_dir = resolve_run_dir(cfg)
    current = Run(cfg, run_dir)
    if {"finetune", "prune", "quantize"} & set(selected(stage)):
        current.data()  # a missing or unreachable dataset stops here, before anything is written
    write_text(run_dir / f"config-{stage}.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    commands = run_dir / reporting.COMMANDS
    write_text(commands, (commands.read_text() if commands.exists() else "") + reporting.command() + "\n")
    for name in selected(stage):
        STAGE_FUNCTIONS[name](current, forced=stage == name)
    return run_dir
