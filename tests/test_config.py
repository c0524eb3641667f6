"""Every config group option composes, and every value in conf/ is documented by a comment."""

import re

import pytest
from conftest import CONF
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import OmegaConf

from quadapter.data import eval_sets
from quadapter.tracking import config_hash

GROUPS = sorted(d.name for d in CONF.iterdir() if d.is_dir())
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]


def make(*overrides: str):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_and_resolves(group, option):
    glue = (group, option) in (("eval", "glue"), ("task", "glue")) or (
        group == "dataset" and option.startswith("glue_"))
    cfg = make(f"{group}={option}", *(["task=glue"] if glue and group != "task" else []))
    OmegaConf.to_container(cfg, resolve=True)
    if cfg.task.name == "glue":  # its held-out set is the GLUE dataset's dev split
        assert {"name", "task", "source", "hub", "local"} <= set(cfg.dataset)
        return
    for spec in eval_sets(cfg).values():
        assert {"name", "variant", "source", "joiner"} <= set(spec)


def test_groups_cover_the_design():
    assert {"model", "dataset", "eval", "quantizer", "bits", "adapter", "method", "trainer", "logger",
            "experiment"} <= set(GROUPS)


def test_fine_tuning_set_is_scored_first_and_sets_are_not_duplicated():
    assert list(eval_sets(make())) == ["prose", "code"]
    assert list(eval_sets(make("dataset=code"))) == ["code", "prose"]
    assert list(eval_sets(make("dataset=ptb", "eval=real"))) == ["ptb", "wikitext2", "wikitext103", "lambada"]


def test_unknown_option_lists_available_options():
    with pytest.raises(MissingConfigException, match=r"Available options in 'dataset'"):
        make("dataset=imagenet")
    with pytest.raises(ConfigCompositionException):
        make("no_such_key=1")


def test_config_hash_tracks_what_is_computed_not_where_it_is_logged():
    base = config_hash(make())
    assert config_hash(make("paths.cache_dir=/elsewhere", "logger=csv")) == base
    assert config_hash(make("eval.stride=64")) != base
    assert config_hash(make("seed=1")) != base


_VALUE_LINE = re.compile(r"^\s*(- )?[\w.@/-]+:\s*\S")  # `key: value` or `- group: option`


@pytest.mark.parametrize("path", sorted(CONF.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONF)))
def test_every_value_has_a_comment(path):
    lines = path.read_text().splitlines()
    assert lines[0].startswith("#") or lines[1].startswith("#"), f"{path}: no header comment"
    block_indent = None  # inside a `key: |` block scalar: its text lines are not values
    for no, line in enumerate(lines, 1):
        indent = len(line) - len(line.lstrip())
        if block_indent is not None and (not line.strip() or indent > block_indent):
            continue
        block_indent = indent if re.match(r"^\s*[\w.]+:\s*\|", line) else None
        if line.lstrip().startswith("#") or not _VALUE_LINE.match(line):
            continue
        assert "#" in line, f"{path.relative_to(CONF)}:{no}: value without a comment: {line.strip()}"


def test_readme_lists_every_group_option():
    readme = (CONF.parent / "README.md").read_text()
    rows = {line.split("|")[1].strip(" `"): line for line in readme.splitlines()
            if line.startswith("| `")}
    for group, option in OPTIONS:
        assert group in rows, f"README's config table has no row for group {group}"
        assert f"`{option}`" in rows[group], f"README does not list {group}={option}"
