"""`adamrun reproduce`: every study's config composes (both scales), mistakes are one line before any run, and
(slow) every study runs end to end on tiny limits through the real sweeps, resuming without re-running a trial."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from runner.config import CONF_DIR
from runner.errors import UsageError
from studies import report, reproduce, sequential, stats
from studies.reproduce import Replicate
from studies.trials import Context, digest, grid_args, merged
from tests.conftest import adamrun, assert_one_line

STUDIES = sorted(p.stem for p in (CONF_DIR / "study").glob("*.yaml"))


# ------------------------------------------------------------------------------------------------ configs
@pytest.mark.parametrize("scale", ["offline", "full"])
def test_every_study_composes_one_trial_of_each_of_its_sweeps(scale):
    plan = reproduce.plan([f"scale={scale}"])
    replica = plan.settings.replicate
    assert [s.name for s in plan.studies] == [*plan.settings.studies, f"{replica.study}_replica"]
    assert sorted(plan.settings.studies) == STUDIES  # make reproduce runs every study there is
    assert reproduce.check_trials(plan) >= len(STUDIES)


def test_the_replica_runs_the_same_study_on_a_disjoint_seed_set():
    plan = reproduce.plan([])
    replica = plan.studies[-1]
    original = next(s for s in plan.studies if s.name == replica.replica_of)
    seeds = {}
    for study in (original, replica):
        ctx = Context(plan, study, echo=lambda line: None)
        seeds[study.name] = set(ctx.seeds)
    assert seeds[original.name] and not seeds[original.name] & seeds[replica.name]
    assert replica.scale.test == original.scale.test  # the same rules
    with pytest.raises(UsageError, match="the seed sets are disjoint"):
        reproduce.replica(Replicate(original.name, 110), "offline", plan.shared, plan.studies[:-1])


def test_one_override_reruns_a_study_on_other_seeds():
    plan = reproduce.plan(["study=amsgrad", "study.first_seed=301"])
    assert Context(plan, plan.studies[0], echo=lambda line: None).seeds[:3] == [301, 302, 303]
    assert [s.name for s in plan.studies] == ["amsgrad"]  # one study asked for: no replica


def test_one_override_reruns_a_study_on_other_grids_and_its_seeds_stay_fresh():
    plan = reproduce.plan(["study=amsgrad", "study.grid_seeds=[5,6]"])
    ctx = Context(plan, plan.studies[0], echo=lambda line: None)
    assert ctx.grid_seeds == [5, 6] and "seed=5,6" in grid_args(ctx, "adamw")
    shared = reproduce.plan(["study=amsgrad"])
    assert Context(shared, shared.studies[0], echo=lambda line: None).grid_seeds == [1, 2]
    with pytest.raises(UsageError, match="first_seed must be above every grid seed \\(150\\)"):
        reproduce.plan(["study=amsgrad", "study.grid_seeds=[1,150]"])


def test_the_replica_runs_alone_on_its_own_seeds():
    plan = reproduce.plan(["study=amsgrad_replica"])
    assert [(s.name, s.replica_of) for s in plan.studies] == [("amsgrad_replica", "amsgrad")]
    assert Context(plan, plan.studies[0], echo=lambda line: None).seeds[0] == 201


def test_the_offline_budget_fits_4_hours_and_each_study_60_minutes():
    plan = reproduce.plan([])
    minutes = {s.name: s.scale.minutes for s in plan.studies}
    assert sum(minutes.values()) <= 240 and max(minutes.values()) <= 60, minutes


def test_a_study_override_changes_its_config_and_a_typo_is_one_line():
    plan = reproduce.plan(["study=schedules", "study.short=2", "study.long=16"])
    assert (plan.studies[0].scale.short, plan.studies[0].scale.long) == (2, 16)
    with pytest.raises(UsageError, match="unknown config key 'study.budget'"):
        reproduce.plan(["study=schedules", "study.budget=[1]"])
    with pytest.raises(UsageError, match="stages must increase from at least 3"):
        reproduce.plan(["shared.sequential.stages=[2,4]"])
    with pytest.raises(UsageError, match="first_seed must be above every grid seed"):
        reproduce.plan(["shared.sequential.first_seed=2"])
    with pytest.raises(UsageError, match="test.margin must be > 0"):  # refused before hours of runs
        reproduce.plan(["study=amsgrad", "study.test.margin=0"])
    with pytest.raises(UsageError, match="study.short must be > 0 and < study.long"):
        reproduce.plan(["study=schedules", "study.short=8"])
    with pytest.raises(UsageError, match="must differ from study.baseline"):
        reproduce.plan(["study=amsgrad", "study.contender=adamw"])
    with pytest.raises(UsageError, match="study.judge_lr must be one of study.lr"):
        reproduce.plan(["study=warmup", "study.judge_lr=5.0"])


def test_trial_overrides_go_to_every_trial_and_a_bad_one_stops_before_any_run():
    plan = reproduce.plan(["study=warmup", "trainer.threads=1", "data.train_limit=2000"])
    assert plan.extra == ["trainer.threads=1", "data.train_limit=2000"]
    bad = reproduce.plan(["study=warmup", "trainer.epochz=1"])
    with pytest.raises(UsageError, match="study warmup, sweep warmup: unknown config key 'trainer.epochz'"):
        reproduce.check_trials(bad)


def test_cli_mistakes_are_one_line_and_exit_2(monkeypatch, capsys, tmp_path):
    code, _, err = adamrun(monkeypatch, capsys, "reproduce", "study=adamw_vs_sgd")
    assert code == 2
    assert_one_line(err, "unknown study 'adamw_vs_sgd'", "decoupling")
    code, _, err = adamrun(monkeypatch, capsys, "reproduce", "scale=huge")
    assert code == 2
    assert_one_line(err, "scale must be one of offline, full")
    code, _, err = adamrun(monkeypatch, capsys, "reproduce", "--report-only", f"out_dir={tmp_path / 'none'}")
    assert code == 2
    assert_one_line(err, "no study has written its CSVs")


def test_sweeps_are_named_by_their_trials_not_by_runtime_settings():
    trials = ["optimizer=adamw", "optimizer.lr=1e-3,3e-3"]
    assert digest(trials) == digest([*trials, "trainer.threads=1", "hydra.launcher.n_jobs=1"])
    assert digest(trials) != digest([*trials, "data=cifar10"])
    assert merged(["data=fashion_mnist", "seed=1", "data=cifar10"]) == ["seed=1", "data=cifar10"]
    assert reproduce.first_trial(
        ["optimizer.lr=1e-3,3e-3", "recipe.widths=[8,8]", "trainer.target=val_acc>=0.5"]
    )[:2] == ["optimizer.lr=0.001", "recipe.widths=[8,8]"]


# ------------------------------------------------------------------------------------------------ end to end
CNN = [
    "recipe=cifar10",
    "data=fashion_mnist",
    "data.train_limit=400",
    "data.val_size=100",
    "recipe.widths=[8,8,16,16]",
    "recipe.channels_last=false",
    "trainer.precision=bf16",
    "trainer.batch_size=50",
    "trainer.eval_batch_size=200",
    "trainer.epochs=1",
    "optimizer.decay_mode=torch",
]
ARTICLES = {
    f"{topic} {i}": {
        "title": f"{topic} {i}",
        "topic": topic,
        "extract": f"{topic} {i} is a word about {topic.lower()} and more words.\nAgain: words.",
    }
    for topic in ("Arts", "People")
    for i in range(8)
}


def tiny_arguments(tmp_path: Path) -> list[str]:
    """Every study on fixture-sized limits: tiny nets, 1 epoch, 3 x 2 grids, 3 seeds, a 16-article corpus."""
    corpus = tmp_path / "wiki.json"
    corpus.write_text(json.dumps(ARTICLES))
    lm = [
        "recipe=wikitext2",
        "data=wiki_offline",
        "model=awd_lstm_small",
        "~data.val_size",
        "data.wiki.package=null",
        f"data.wiki.file={corpus}",
        "data.wiki.split=[0.5,0.25,0.25]",
        "data.train_limit=null",
        "data.test_limit=null",
        "trainer.epochs=1",
        "optimizer.decay_mode=torch",
        "model.emb_size=8",
        "model.hidden_size=8",
        "trainer.batch_size=2",
        "recipe.bptt=5",
        "recipe.eval_batch_size=1",
    ]
    arguments = [
        f"shared.bases.cnn.trials={json.dumps(CNN)}",
        'shared.bases.cnn.select=["data.test_limit=100"]',
        'shared.bases.cnn.confirm=["data.test_limit=100", "trainer.eval_every=0.5"]',
        f"shared.bases.lm.trials={json.dumps(lm)}",
        "shared.grid_seeds=[1]",
        "shared.sequential.stages=[3]",
    ]
    for arm in ("adam_l2", "adamw", "amsgrad", "adam_l2_to_edge", "adamw_to_edge"):
        arguments += [f"shared.arms.{arm}.lr=[1e-3,1e-2,3e-2]", f"shared.arms.{arm}.weight_decay=[1e-4,1e-2]"]
    arguments += ["shared.arms.sgd.lr=[0.01,0.1,0.3]", "shared.arms.sgd.weight_decay=[1e-4,1e-2]"]
    return [
        *arguments,
        "trainer.threads=1",
        "trainer.log_every=2",
        f"out_dir={tmp_path / 'out'}",
        f"work_dir={tmp_path / 'work'}",
    ]


STUDY_OVERRIDES = {  # the non-grid studies, shrunk the same way
    "schedules": [
        "study.schedules=[one_cycle,constant]",
        "study.lr=[1e-2]",
        "study.short=1",
        "study.long=2",
        "study.stages=[3]",
        "study.trials=[]",
    ],
    "warmup": [
        "study.lr=[1e-1]",
        "study.judge_lr=1e-1",
        "study.stages=[3]",
        "study.trials=[schedule=constant,trainer.log_every=1]",
    ],
    "lm_optimizers": ["study.stages=[3]"],
}


@pytest.fixture(scope="module")
def tiny_reproduction(tmp_path_factory) -> Path:
    """Every study, one after the other, through the real sweeps (joblib, 2 jobs x 1 thread)."""
    tmp = tmp_path_factory.mktemp("reproduce")
    for study in reproduce.load_settings().studies:
        plan = reproduce.plan([f"study={study}", *STUDY_OVERRIDES.get(study, []), *tiny_arguments(tmp)])
        reproduce.run(plan, echo=lambda line: None, report=False)
    report.write_report(tmp / "out")
    return tmp


@pytest.mark.slow
def test_every_study_runs_end_to_end_and_reports(tiny_reproduction):
    out = tiny_reproduction / "out"
    text = (out / "report.md").read_text()
    assert text == report.render_report(out)
    for study in STUDIES:
        runs = pd.read_csv(out / f"{study}_runs.csv")
        assert len(runs) and (runs["status"] == "finished").any(), study
        assert (out / f"{study}.png").stat().st_size > 10_000
        assert f"## {study}:" in text
    for section in report.sections(out):
        assert section.verdict.outcome in (*sequential.DECIDED, stats.INCONCLUSIVE, stats.UNTESTED)
    adamw = pd.read_csv(out / "adamw_vs_adam_runs.csv")
    amsgrad, sgd = (pd.read_csv(out / f"{name}_runs.csv") for name in ("amsgrad", "sgd_vs_adamw"))
    grids = [set(t.loc[(t["arm"] == "adamw") & (t["role"] == "select"), "sweep"]) for t in (amsgrad, sgd)]
    assert (
        len(grids[0] & grids[1]) == 1
    )  # AdamW's grid on the shared grid seeds: one sweep, serving both studies
    decoupling = pd.read_csv(out / "decoupling_runs.csv")
    assert set(decoupling["arm"]) >= {"adam_l2_to_edge", "adamw_to_edge"}  # its own grids, seeds 5, 6
    assert set(decoupling.loc[decoupling["role"] == "select", "seed"]) == {5, 6}
    assert not set(decoupling["sweep"]) & set(adamw["sweep"])  # adamw_vs_adam keeps its grid seeds 3, 4
    assert adamw.loc[adamw["role"] == "select", "test_metric"].isna().all()  # selection shows no test figure
    confirm = adamw[adamw["role"] == "confirm"]
    assert sorted(confirm["seed"].unique()) == [301, 302, 303] and confirm["test_metric"].notna().all()


@pytest.mark.slow
def test_a_finished_study_run_again_reruns_no_trial(tiny_reproduction):
    lines = []
    before = {p: p.read_text() for p in (tiny_reproduction / "work").rglob("run.json")}
    timing = tiny_reproduction / "work" / "amsgrad-offline.timing.json"
    spent = timing.read_text()
    plan = reproduce.plan(["study=amsgrad", *tiny_arguments(tiny_reproduction)])
    reproduce.run(plan, echo=lines.append, report=False)
    assert all("trials done" in line for line in lines if ": grid-" in line or ": seeds-" in line), lines
    assert {p: p.read_text() for p in (tiny_reproduction / "work").rglob("run.json")} == before
    assert timing.read_text() == spent  # nothing trained: the study's measured time stays what it was


def test_resume_true_is_accepted_as_running_the_command_again(monkeypatch, capsys):
    """One meaning of resume: reproduce continues whenever it runs again, so resume=true is a synonym (never a
    trial override), and resume=false, which it cannot honour, is one line."""
    from studies import reproduce as studies

    planned = studies.plan(["study=decoupling", "resume=true"])
    assert planned.extra == [] and [s.name for s in planned.studies] == ["decoupling"]
    code, _, err = adamrun(monkeypatch, capsys, "reproduce", "study=decoupling", "resume=false")
    assert code == 2
    assert_one_line(err, "resume can only be true")


def test_cpu_counts_live_workers_then_the_same_once_they_end():
    """A study's sweeps run in joblib workers that outlive it: their CPU counts while they live, and it is not
    counted twice once they are reaped."""
    import subprocess
    import sys

    from studies.reproduce import cpu_seconds

    burn = 0.5  # CPU seconds the worker spends before it reports, then idles
    code = (
        f"import sys, time\nt = time.process_time()\nwhile time.process_time() - t < {burn}: pass\n"
        "print(flush=True)\nsys.stdin.read()"
    )
    before = cpu_seconds()
    worker = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    worker.stdout.readline()  # it has spent `burn`
    alive = cpu_seconds() - before
    worker.communicate()
    ended = cpu_seconds() - before
    assert burn <= alive < burn + 1.0
    assert alive <= ended < alive + 0.5
