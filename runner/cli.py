"""The adamrun command line: typer parses the command, Hydra composes the config, runner/ does the work.

No ML here. Heavy imports (torch) happen inside the commands that need them, so `adamrun --help` is instant.
A user's mistake becomes one line on stderr and exit code 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import errno
import sys
from typing import Annotated

try:  # Ctrl-C while the command starts up exits as it does later, 130; uncaught, the interpreter would end
    import typer  # itself by SIGINT (-2 to the parent that waits for it)
    from rich.console import Console
except KeyboardInterrupt:
    sys.exit(130)

app = typer.Typer(
    help="Reproduce AdamW / super-convergence results and benchmark pruned BERT on your CPU.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
config_app = typer.Typer(help="Inspect the composed configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")

console = Console()
err_console = Console(stderr=True)

Overrides = Annotated[
    list[str] | None,
    typer.Argument(help="Hydra overrides, key=value or group=option (e.g. optimizer=adamw optimizer.lr=3e-3).",
                   show_default=False),
]  # fmt: skip


class Asked:
    """What the command line asked for besides the command's own work, read by main()."""

    debug = False  # --debug: a known error shows its traceback instead of one line


def remember_debug(value: bool) -> bool:
    Asked.debug = Asked.debug or value
    return value


Debug = Annotated[  # accepted by every command; its callback is its one reader
    bool, typer.Option("--debug", help="Show the full traceback on errors.", callback=remember_debug)
]

EXIT_CODES = {"finished": 0, "diverged": 1, "failed": 1, "pruned": 0}  # interrupted: 128 + the signal
USAGE_ERROR = 2  # a mistake in the command line or a file it names (click's code too)
ENVIRONMENT_FAULT = 74  # the machine refused a write: disk full, read-only, permission (sysexits' EX_IOERR)
PATH_MISTAKES = (errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG)  # a path given wrong: usage

TRAIN_EXAMPLES = """
Examples:

  adamrun train recipe=cifar10 data=fashion_mnist optimizer=adamw schedule=one_cycle

  adamrun train recipe=cifar10 optimizer=adam_l2 optimizer.weight_decay=5e-4 trainer.epochs=10

  adamrun train resume=true run_dir=results/runs/<id>

  adamrun train schedule=one_cycle optimizer.lr=find      # the LR range test picks the peak lr first
"""


@app.command(epilog=TRAIN_EXAMPLES)
def train(overrides: Overrides = None, debug: Debug = False) -> None:
    """Train a recipe: a run directory plus a row in runs.csv."""
    from runner import signals
    from runner.config import compose
    from runner.lr_find import with_found_lr
    from runner.run import train as run_training

    overrides, finding = with_found_lr(overrides or [])
    if finding is not None:
        console.print(f"lr-find: {finding.describe()} (plot: {finding.png})")
    row = run_training(compose(overrides))
    show_fields(row, title=f"run {row['run_id']}")
    if row["status"] == "interrupted":
        err_console.print(f"interrupted; continue with: adamrun train resume=true run_dir={row['run_dir']}")
        raise typer.Exit(signals.exit_code())
    raise typer.Exit(EXIT_CODES[row["status"]])


LR_FIND_EXAMPLES = """
Examples:

  adamrun lr-find recipe=cifar10 data=fashion_mnist optimizer=adamw

  adamrun lr-find lr_find.rule=steepest lr_find.steps=300
"""


@app.command("lr-find", epilog=LR_FIND_EXAMPLES)
def lr_find(overrides: Overrides = None, debug: Debug = False) -> None:
    """Smith's LR range test on the recipe: a plot of loss against lr, and the suggested lr."""
    from runner.lr_find import find, lr_find_config

    finding = find(lr_find_config(overrides or []))
    console.print(finding.describe(), markup=False, highlight=False)
    console.print(f"plot: {finding.png}\ntrain with it: adamrun train ... optimizer.lr={finding.lr:.3g}")


SWEEP_EXAMPLES = """
Examples:

  adamrun sweep sweep=lr_wd_grid data=fashion_mnist

  adamrun sweep sweep=lr_wd_grid 'optimizer.lr=1e-3,3e-3' 'optimizer.weight_decay=0,0.1' data.train_limit=5000

  adamrun sweep sweep=lr_wd_grid hydra/launcher=joblib hydra.launcher.n_jobs=2 trainer.threads=1

  adamrun sweep sweep=lr_wd_grid hydra/launcher=submitit_local

  adamrun sweep sweep=lr_wd_grid hydra/launcher=ray

  adamrun sweep sweep=lr_wd_grid resume=true
"""


@app.command(epilog=SWEEP_EXAMPLES)
def sweep(overrides: Overrides = None, debug: Debug = False) -> None:
    """A grid of runs through Hydra's multirun and launchers: one run per trial, tables and plots."""
    from runner import sweep as sweeps

    planned = sweeps.plan(overrides or [])
    console.print(f"sweep {planned.name}: {planned.trials} trials in {planned.dir}")
    done = sweeps.run(planned, echo=lambda line: console.print(line, markup=False, highlight=False))
    show_report(done.dir)


TUNE_EXAMPLES = """
Examples:

  adamrun tune tune=adamw_lr_wd trials=24 data=fashion_mnist

  adamrun tune tune=adamw_lr_wd trials=24 tune.pruner=successive_halving

  adamrun tune tune=adamw_lr_wd trials=24 sweep_dir=results/sweeps/my_search   # again: resumes, or joins

  adamrun tune tune=adamw_lr_wd trials=24 tune.workers=4 tune.storage=journal   # 4 joblib workers

  adamrun tune tune=adamw_lr_wd tune.workers=8 tune.storage=postgresql://me@db:5432/adamrun hydra/launcher=submitit_slurm
"""


@app.command(epilog=TUNE_EXAMPLES)
def tune(overrides: Overrides = None, debug: Debug = False) -> None:
    """A search on Optuna: resumable, shareable between processes, hopeless trials pruned early."""
    from runner import storage, tune_workers
    from runner import tune as searches

    search = searches.plan(overrides or [])
    settings, echo = search.cfg.tune, lambda line: console.print(line, markup=False, highlight=False)
    workers = f", {settings.workers} workers" if settings.workers > 1 else ""
    echo(
        f"search {search.name}: {settings.trials} trials in {search.dir}{workers}; study in {storage.where(settings, search.dir)}"
    )
    echo(f"dashboard: {storage.dashboard_command(settings, search.dir)}")
    reason = tune_workers.work(search, echo)
    counts = searches.counts(searches.study(search))
    echo("trials: " + ", ".join(f"{state} {n}" for state, n in sorted(counts.items())))
    show_report(search.dir)
    if reason != "done":
        err_console.print(f"the search stopped: {reason}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_CODES["failed"])


REPRODUCE_EXAMPLES = """
Examples:

  adamrun reproduce                    # every study, then results/reproduction/report.md

  adamrun reproduce study=decoupling

  adamrun reproduce study=decoupling data=cifar10 scale=full

  adamrun reproduce --report-only      # the report again, from the studies' CSVs
"""


@app.command(epilog=REPRODUCE_EXAMPLES)
def reproduce(
    overrides: Overrides = None,
    report_only: Annotated[
        bool, typer.Option("--report-only", help="Rewrite report.md and its plots from the studies' CSVs.")
    ] = False,
    debug: Debug = False,
) -> None:
    """The papers' claims as studies of sweeps, a verdict each, and one report (resumable)."""
    from studies import reproduce as studies

    planned = studies.plan(overrides or [])
    if report_only:
        console.print(f"wrote {studies.write_report(planned.out_dir)}", markup=False)
        return
    names = ", ".join(study.name for study in planned.studies)
    console.print(f"reproduce ({planned.scale}): {names}; sweeps in {planned.work_dir}", markup=False)
    try:
        report_path = studies.run(
            planned, echo=lambda line: console.print(line, markup=False, highlight=False)
        )
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM: every sweep resumes from where it stopped
        from runner import signals

        err_console.print("interrupted; run the same command again to resume", markup=False)
        raise typer.Exit(signals.exit_code()) from None
    console.print(f"wrote {report_path}", markup=False)


@config_app.command("show")
def config_show(overrides: Overrides = None, debug: Debug = False) -> None:
    """Print the composed, validated config as YAML (e.g. adamrun config show recipe=cifar10)."""
    from omegaconf import OmegaConf

    from runner.config import compose

    console.print(OmegaConf.to_yaml(compose(overrides or [])), markup=False, highlight=False)


REPORT_EXAMPLES = """
Examples:

  adamrun report

  adamrun report results/sweeps/lr_wd_grid

  adamrun report results/sweeps/lr_wd_grid --group-by schedule
"""


@app.command(epilog=REPORT_EXAMPLES)
def report(
    where: Annotated[
        list[str] | None,
        typer.Argument(
            help="A results or sweep folder (or its runs.csv); results_dir=<folder> works too. Default: results.",
            show_default=False,
        ),
    ] = None,
    group_by: Annotated[
        str, typer.Option("--group-by", help="The column to pick the best setting per.")
    ] = "optimizer",
    debug: Debug = False,
) -> None:
    """Tables and plots of a sweep or results folder: mean ± std per setting, the best per group (on validation)."""
    show_report(report_path(where or []), group_by)


def report_path(arguments: list[str]) -> str:
    """The one folder or table `adamrun report` reads: a bare path or results_dir=<path>."""
    from runner.errors import UsageError

    paths = [
        a.removeprefix("results_dir=") for a in arguments if "=" not in a or a.startswith("results_dir=")
    ]
    unknown = [a for a in arguments if "=" in a and not a.startswith("results_dir=")]
    if unknown or len(paths) > 1:
        raise UsageError(f"adamrun report takes one results folder or runs.csv (got {' '.join(arguments)})")
    return paths[0] if paths else "results"


@app.command()
def bench(overrides: Overrides = None, debug: Debug = False) -> None:
    """Time the recipe loop against a plain loop (results/bench/)."""
    from bench.harness import main as run_bench

    console.print(f"wrote {run_bench(overrides or [])}")


@app.command("sparsify-bert")
def sparsify_bert(overrides: Overrides = None, debug: Debug = False) -> None:
    """Prune, distil, quantize and time BERT on the CPU."""
    from runner.sparsify.pipeline import run, selected
    from runner.sparsify.schema import compose

    cfg = compose(overrides or [])
    run_dir = run(cfg)
    wrote_report = "report" in selected(str(cfg.stage))
    console.print(f"report: {run_dir / 'report.md'}" if wrote_report else f"run directory: {run_dir}")


def show_report(folder, group_by: str = "optimizer") -> None:
    """Write the folder's report (tables, plots, report.md) and print its tables."""
    from runner import import_frozen

    report = import_frozen("runner.report")  # pandas
    written = report.write_report(folder, group_by=group_by)
    if written.summary.empty:
        console.print(f"no finished runs in {written.folder} yet", markup=False)
    else:
        console.print(report.summary_table(written))
        console.print(report.best_table(written))
    for name, why in written.skipped.items():
        console.print(f"{name}.png not drawn: {why}", markup=False)
    if written.malformed:
        entries = "entry" if len(written.malformed) == 1 else "entries"
        console.print(f"skipped {len(written.malformed)} malformed {entries}: {'; '.join(written.malformed)}",
                      markup=False)  # fmt: skip
    console.print(f"wrote {written.path('report')}", markup=False)


def show_fields(row: dict, title: str) -> None:
    from rich.table import Table

    table = Table(title=title, show_header=False)
    for key, value in row.items():
        table.add_row(key, format_cell(value))
    console.print(table)


def format_cell(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def main() -> None:
    """Console entry point: known errors become one line and exit code 2; --debug shows the traceback."""
    from runner import signals, skip_final_collections
    from runner.errors import UsageError

    skip_final_collections()
    Asked.debug = False
    try:
        code = app(standalone_mode=False)
    except KeyboardInterrupt:  # before the command's own handling began (it returns 130 itself)
        sys.exit(signals.exit_code())
    except UsageError as err:
        if Asked.debug:
            raise
        fail(str(err), USAGE_ERROR)
    except OSError as err:  # a folder that cannot be written, a disk that is full: the path and the reason
        if Asked.debug or not err.filename:
            raise
        fail(
            f"{err.filename}: {err.strerror}",
            USAGE_ERROR if err.errno in PATH_MISTAKES else ENVIRONMENT_FAULT,
        )
    except typer.TyperException as err:  # a bad command, option or value (typer's click): its message, code
        if type(err).__name__ == "NoArgsIsHelpError":  # `adamrun`, `adamrun config` alone: the help itself
            err_console.print(err.format_message(), markup=False, highlight=False)
            sys.exit(err.exit_code)
        context = getattr(err, "ctx", None)
        where = context.command_path if context is not None else "adamrun"
        fail(f"{err.format_message()} (see {where} --help)", err.exit_code)
    except typer.Abort:  # end of input at a prompt
        sys.exit(1)
    if code == 130:  # typer's code for any KeyboardInterrupt: 128 + the signal it really was
        code = signals.exit_code()
    sys.exit(code or 0)


def fail(message: str, code: int) -> None:
    err_console.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
