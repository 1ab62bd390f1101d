"""The command line: one-line errors with exit code 2, help that answers without importing torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from runner import cli
from runner.config import compose
from runner.errors import UsageError
from tests.conftest import adamrun, assert_one_line, tiny_overrides

OPTIMIZERS = [
    "adam_l2",
    "adam_l2_cars",
    "adam_l2_lm",
    "adamw",
    "adamw_cifar10",
    "adamw_lm",
    "amsgrad",
    "asgd",
    "sgd",
    "sgdw",
]
SCHEDULES = [
    "constant",
    "cosine",
    "linear",
    "one_cycle",
    "one_cycle_cars",
    "one_cycle_lm",
    "step",
    "warm_restarts",
]
CONF_GROUPS = {
    "optimizer": OPTIMIZERS,
    "schedule": SCHEDULES,
    "data": ["cifar10", "fashion_mnist"],
    "recipe": ["cars", "cifar10", "wikitext2"],
}


def run_main(monkeypatch, capsys, *argv: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["adamrun", *argv])
    monkeypatch.setattr(cli, "console", Console(width=200))  # a wide terminal: tables print unwrapped
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


@pytest.mark.parametrize("group,options", CONF_GROUPS.items())
def test_every_group_option_composes(group, options):
    for option in options:
        assert compose([f"{group}={option}"]).choices[group] == option


@pytest.mark.parametrize(
    "override,expected",
    [
        ("optimizer=adamx", f"valid choices: {', '.join(OPTIMIZERS)}"),
        ("schedule=cyclic", f"valid choices: {', '.join(SCHEDULES)}"),
        ("optimizer.lrr=1", "unknown config key 'optimizer.lrr'; valid keys here: family, decoupled, lr,"),
        ("optimizer.lr=-1", "optimizer.lr must be > 0"),
        ("optimizer.betas=[0.9,1.0]", "optimizer.betas[1] must be in [0, 1)"),
        ("trainer.epochs=0", "trainer.epochs must be > 0"),
        ("trainer.epochs=two", "full_key: trainer.epochs"),
        ("optimizer.decay_mode=fastai", "expected one of [torch, paper]"),
    ],
)
def test_a_bad_override_is_one_line_and_exit_code_2(monkeypatch, capsys, override, expected):
    code, out, err = run_main(monkeypatch, capsys, "train", override)
    assert code == 2
    assert expected in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert out == ""


def test_debug_shows_the_traceback(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["adamrun", "train", "optimizer.lr=-1", "--debug"])
    with pytest.raises(UsageError):
        cli.main()


def test_missing_data_is_one_line_with_the_install_hint(monkeypatch, capsys, tmp_path):
    code, _, err = run_main(monkeypatch, capsys, "train", "data=fashion_mnist", f"data.root={tmp_path}",
                            f"results_dir={tmp_path}")  # fmt: skip
    assert code == 2 and "apt-get install dataset-fashion-mnist" in err


def test_resume_without_a_run_dir_is_a_usage_error(monkeypatch, capsys, tmp_path):
    code, _, err = run_main(monkeypatch, capsys, "train", "resume=true", f"run_dir={tmp_path / 'nothing'}")
    assert code == 2 and "resume=true needs run_dir" in err


def test_train_prints_the_row_and_report_summarizes_seeds(monkeypatch, capsys, tmp_path, fmnist_root):
    overrides = tiny_overrides(tmp_path, fmnist_root) + ["trainer.epochs=1"]
    for seed in (0, 1):
        code, out, _ = run_main(monkeypatch, capsys, "train", *overrides, f"seed={seed}")
        assert code == 0 and "finished" in out
    code, out, _ = run_main(monkeypatch, capsys, "report", f"results_dir={tmp_path / 'results'}")
    assert code == 0 and "fashion_mnist" in out and "±" in out  # two seeds: mean ± std


def test_config_show_prints_the_composed_yaml(monkeypatch, capsys):
    code, out, _ = run_main(monkeypatch, capsys, "config", "show", "optimizer=sgdw")
    assert code == 0 and "decoupled: true" in out and "family: sgd" in out


def test_help_does_not_import_torch():
    probe = "import sys, runner.cli; sys.argv = ['adamrun', '--help']\ntry:\n runner.cli.main()\nexcept SystemExit:\n pass\nprint('torch' in sys.modules)"  # noqa: E501
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert "train" in result.stdout and result.stdout.strip().endswith("False")


def installed(*argv: str) -> subprocess.CompletedProcess:
    """The console script as installed, as a user types it."""
    script = str(Path(sys.executable).with_name("adamrun"))
    return subprocess.run([script, *argv], capture_output=True, text=True, timeout=120)


COMMANDS = sorted(
    {c.name or c.callback.__name__.replace("_", "-") for c in cli.app.registered_commands} | {"config show"}
)


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(
    "mistake,says",
    [
        (["--frobnicate"], "No such option: --frobnicate"),
        (["--debug=yes"], "Option '--debug' does not take a value"),
    ],
)
def test_every_command_line_mistake_of_every_command_is_one_line_and_exit_2(command, mistake, says):
    done = installed(*command.split(), *mistake)
    assert done.returncode == 2, done.stderr
    assert_one_line(done.stderr, says)


@pytest.mark.parametrize(
    "argv,says",
    [
        (["trian"], "No such command 'trian'. Did you mean 'train'?"),  # the suggestion kept
        (["config", "shw"], "No such command 'shw'. Did you mean 'show'?"),
        (["report", "--group-by"], "Option '--group-by' requires an argument"),
        (["train", "optimizer.lr"], "Error parsing override 'optimizer.lr'"),  # malformed argument
        (["train", "=3"], "Config group override must be a string"),
        (["train", "optimizer.lr=fast"], "optimizer.lr"),  # bad value
        (["report", "a", "b"], "adamrun report takes one results folder"),
    ],
)
def test_mistakes_through_the_installed_command_are_one_line_and_exit_2(argv, says):
    done = installed(*argv)
    assert done.returncode == 2, done.stderr
    assert_one_line(done.stderr, says)


def test_a_command_group_alone_shows_its_help():
    done = installed("config")
    assert done.returncode == 2 and "Usage: adamrun config" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(("raised", "code"), [(KeyboardInterrupt, 130), (EOFError, 1)])
def test_a_ctrl_c_before_the_command_handles_it_exits_130(monkeypatch, capsys, raised, code):
    """A Ctrl-C while a command composes its config (before its own handling) is 130, as a shell expects;
    end of input there is click's Abort, 1."""
    from runner.sparsify import schema

    def interrupted(overrides):
        raise raised

    monkeypatch.setattr(schema, "compose", interrupted)
    assert adamrun(monkeypatch, capsys, "sparsify-bert")[0] == code
