"""Every config under conf/ composes: each option of each group, discovered from the folder (never a hand list),
composes under at least one of the configs that read its group, and every top-level file has its loader."""

from __future__ import annotations

import pytest

from runner.config import compose
from runner.errors import UsageError
from tests.conftest import REPO

CONF = REPO / "conf"
RECIPES = sorted(p.stem for p in (CONF / "recipe").glob("*.yaml"))


def train(*overrides: str):
    return compose(list(overrides))


def train_with_each_recipe(*overrides: str):
    """The train config under the first recipe that takes the option (a model or data set is a recipe's)."""
    errors = []
    for recipe in RECIPES:
        try:
            return compose([f"recipe={recipe}", *overrides])
        except UsageError as err:
            errors.append(f"recipe={recipe}: {err}")
    raise UsageError("; ".join(errors))


def lr_find(*overrides: str):
    from runner.lr_find import lr_find_config

    return lr_find_config(list(overrides))


def bench_train(*overrides: str):
    from bench.harness import bench_config

    return bench_config(list(overrides))


def search(*overrides: str):
    from runner.tune import search_config

    return search_config(list(overrides))


def sparsify_bert(*overrides: str):
    from runner.sparsify.schema import compose as compose_sparsify

    return compose_sparsify(list(overrides))


def section(name: str):
    """A bench section's own settings file, loaded and checked by its module."""

    def load(*overrides: str):
        from importlib import import_module

        from bench.harness import SECTIONS

        assert not overrides
        return import_module(SECTIONS[name]).settings()

    return load


def reproduce(*overrides: str):
    from studies import reproduce as studies

    return studies.plan(list(overrides))


PRIMARY = {  # conf/<name>.yaml: what composes or loads it
    "train": train,
    "lr_find": lr_find,
    "bench_train": bench_train,
    "sparsify_bert": sparsify_bert,
    "bench_cars": section("cars"),
    "bench_lm": section("language_model"),
    "bench_sweeps": section("sweeps"),
    "bench_time_to_accuracy": section("time_to_accuracy"),
    "reproduce": reproduce,
}
READERS = [train_with_each_recipe, lr_find, bench_train, search, sparsify_bert]  # configs with groups
GROUP_READERS = {"study": [lambda override: reproduce(override)]}  # not a Hydra group: the studies' own


def options() -> list[tuple[str, str]]:
    return [
        (group.name, option.stem)
        for group in sorted(p for p in CONF.iterdir() if p.is_dir())
        for option in sorted(group.glob("*.yaml"))
    ]


def test_discovery_finds_every_group_and_option():
    """The list below is read from conf/: a new file there is composed by the next test without any edit."""
    found = options()
    assert (
        ("optimizer", "adamw") in found
        and ("sparsify_bench", "full") in found
        and ("study", "warmup") in found
    )
    assert len(found) == sum(len(list(g.glob("*.yaml"))) for g in CONF.iterdir() if g.is_dir())


@pytest.mark.parametrize("group,option", options())
def test_every_option_of_every_group_composes(group, option):
    errors = []
    for read in GROUP_READERS.get(group, READERS):
        try:
            cfg = read(f"{group}={option}")
        except UsageError as err:
            errors.append(f"{getattr(read, '__name__', 'reader')}: {err}")
            continue
        if group not in GROUP_READERS:
            assert option in cfg.choices.values(), cfg.choices
        return
    pytest.fail(f"{group}={option} composes nowhere: " + " | ".join(errors))


@pytest.mark.parametrize("name", sorted(p.stem for p in CONF.glob("*.yaml")))
def test_every_top_level_config_has_its_loader_and_loads(name):
    assert name in PRIMARY, f"conf/{name}.yaml: no loader known to this test (add it to PRIMARY)"
    PRIMARY[name]()
