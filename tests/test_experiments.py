"""The paper reproductions under conf/experiment/: each one composes into valid runs, job by job of
its own sweep; every real-GPT-2 experiment runs end to end shrunk (a random-weight GPT-2 of the same
architecture, the offline data mirror, a few steps); experiments/README.md lists them; and the
proxy model pretrains on real corpora from the data dir under a cache key that covers them."""

import copy
import hashlib
import importlib.util
import json
import math
import platform
import shutil
import sys
from functools import lru_cache
from pathlib import Path

import pytest
import yaml
from conftest import CONF, SHARED_DATA, SMALL_SPEC, needs_shared_data
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from quadapter.errors import ConfigError
from quadapter.schema import validate

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
# The ablations rerun what gpt2_quadapter's jobs already cover (every method): ~30 s each, so slow.
_SLOW = {"gpt2_data_size_qat", "gpt2_data_size_quadapter", "gpt2_sites"}
REAL_GPT2 = [pytest.param(e, marks=pytest.mark.slow) if e in _SLOW else e
             for e in EXPERIMENTS if e.startswith("gpt2_")]
PAGES = CONF.parent / "experiments"


def make(*overrides: str):
    """The composed config (cached: composing costs ~0.2 s and the tests reuse jobs)."""
    return copy.deepcopy(_make(tuple(overrides)))


@lru_cache(maxsize=None)
def _make(overrides: tuple[str, ...]):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@lru_cache(maxsize=None)
def sweep_jobs(experiment: str, *overrides: str) -> list[list[str]]:
    """The overrides of each job `quadapter -m experiment=<experiment> *overrides` launches.

    As Hydra's basic sweeper does it: the composed ``hydra.sweeper.params`` (conf/config.yaml's,
    replaced key by key by the experiment's), then the command line, which replaces a param of the
    same key; the jobs are the product of the sweeps.
    """
    parser = OverridesParser.create()
    fixed = [o for o, p in zip(overrides, parser.parse_overrides(list(overrides)), strict=True)
             if not p.is_sweep_override()]
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={experiment}", *fixed],
                      return_hydra_config=True)
    params = [f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()]
    args = parser.parse_overrides([*params, f"experiment={experiment}", *overrides])
    return BasicSweeper.split_arguments(args, None)[0]


def job_value(job: list[str], key: str) -> str | None:
    return next((o.split("=", 1)[1] for o in job if o.split("=", 1)[0] == key), None)


def test_there_are_experiments_and_the_real_gpt2_ones_are_known():
    assert {"gpt2_zero_shot", "gpt2_quadapter", "gpt2_data_size_qat", "gpt2_data_size_quadapter",
            "gpt2_sites", "proxy_quadapter", "proxy_bits_ptq", "proxy_bits_qat",
            "proxy_bits_quadapter"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_job_of_the_experiment_sweep_composes_and_validates(experiment):
    jobs = sweep_jobs(experiment)
    assert jobs, f"{experiment}: its sweep launches no job"
    for job in jobs:
        cfg = make(*job)
        OmegaConf.to_container(cfg, resolve=True)
        validate(cfg)  # types, values and relations, as a run checks them before any work
        assert job_value(job, "experiment") == experiment


def test_experiment_sweeps_are_the_documented_ones():
    """The sweeps the pages promise (run counts), and the experiment's params replace the default's."""
    counts = {e: len(sweep_jobs(e)) for e in ("gpt2_zero_shot", "gpt2_quadapter", "gpt2_sites",
                                               "gpt2_data_size_qat", "proxy_quadapter", "proxy_bits_qat")}
    assert counts == {"gpt2_zero_shot": 8, "gpt2_quadapter": 30, "gpt2_sites": 5,
                      "gpt2_data_size_qat": 3, "proxy_quadapter": 10, "proxy_bits_qat": 5}
    zero_shot = [make(*job) for job in sweep_jobs("gpt2_zero_shot")]
    assert {c.method.name for c in zero_shot} == {"fp"}
    assert all(c.eval.max_tokens is None for c in zero_shot)  # not the default sweep's 32768
    sites = sorted(tuple(make(*job).adapter.sites) for job in sweep_jobs("gpt2_sites"))
    assert sites == sorted([("ln1_qkv",), ("ln2_fc",), ("v_proj",), ("ln1_qkv", "ln2_fc"),
                            ("ln1_qkv", "ln2_fc", "v_proj")])
    proxy = [make(*job) for job in sweep_jobs("proxy_quadapter")]
    assert sum(c.model.outlier_profile is not None for c in proxy) == 5
    assert {c.dataset.name for c in proxy} == {"ptb"} and {c.model.name for c in proxy} == {"proxy"}
    bits = [make(*job) for job in sweep_jobs("proxy_bits_quadapter")]
    assert [c.bits.name for c in bits] == ["w8a8", "w6a6", "w4a8", "w8a4", "w4a4"]
    assert {(c.method.name, c.method.e2e.steps) for c in bits} == {("quadapter", 100)}
    assert all(c.model.outlier_profile.factor == 30.0 for c in bits)
    # a command-line value replaces the experiment's sweep of the same key
    assert len(sweep_jobs("gpt2_quadapter", "model=gpt2", "bits=w4a8")) == 5


def test_blockptq_sweep_gives_each_model_its_own_bits_and_every_row_its_units():
    jobs = [make(*job) for job in sweep_jobs("blockptq")]
    assert len(jobs) == 14
    settings = {(c.model.name, c.bits.name, c.bits.weight, c.bits.act, c.quantizer.name,
                 c.quantizer.weight.granularity) for c in jobs}
    assert settings == {("proxy", "w2", 2, None, "minmax", "per_channel"),
                        ("smollm2-135m", "w3", 3, None, "minmax_g64", "per_group")}  # not the default sweep's w8a3
    rows = {(c.method.name, c.method.get("unit_size"), c.method.get("target_offset")) for c in jobs}
    assert rows == {("ptq", None, None), ("gptq", None, None), ("blockptq", 1, 0), ("blockptq", 2, 0),
                    ("blockptq", 4, 0), ("blockptq", 1, 1), ("blockptq", 1, 2)}
    assert all(c.eval.max_tokens == 16384 and c.dataset.name == "ptb" for c in jobs)
    assert len({c.run_name for c in jobs}) == 14  # every row named apart


def test_kngpt2_sweeps_train_fp_students_before_the_rows_that_load_them():
    jobs = [make(*job) for job in sweep_jobs("kngpt2")]
    names = [c.run_name.split("-")[0] for c in jobs]
    assert names == ["fp", "kngpt2_2x", "kngpt2_2x_nokd", "kngpt2_4x", "kngpt2_4x_nokd", "distilgpt2",
                     "distilgpt2_nokd", "ptq", "kngpt2_2x_w8a8", "distilgpt2_w8a8", "teacher_continued"]
    by_name = dict(zip(names, jobs))
    for name, c in by_name.items():
        trains = c.method.name == "kd_pretrain"
        assert c.bits.name == ("fp" if trains else "w8a8")  # not the default sweep's w8a3 (method=fp ignores it)
        if trains:
            assert c.method.data == "pretraining"
            assert (c.distill.name == "none") == (name.endswith("_nokd") or name == "teacher_continued")
    assert by_name["kngpt2_2x_w8a8"].model.name_or_path == "multirun/kngpt2/kngpt2_2x-proxy-ptb/student"
    mrpc = [make(*job) for job in sweep_jobs("kngpt2_mrpc")]
    assert [c.run_name for c in mrpc] == ["teacher-proxy-glue_mrpc", "kngpt2_2x-proxy-glue_mrpc",
                                          "kngpt2_4x-proxy-glue_mrpc", "distilgpt2-proxy-glue_mrpc"]
    assert mrpc[0].task.finetune.save and mrpc[0].distill.name == "none"
    for c in mrpc[1:]:  # each student loads its saved kngpt2 row and distils from the teacher row
        row = c.run_name.split("-")[0]
        assert c.model.name_or_path == f"multirun/kngpt2/{row}-proxy-ptb/student"
        assert c.distill.name == "kd" and c.distill.teacher == "multirun/kngpt2_mrpc/teacher-proxy-glue_mrpc"
    assert mrpc[3].distill.layers == [0, 2, 4]


def test_experiments_readme_lists_every_experiment_with_command_and_cost():
    readme = (PAGES / "README.md").read_text()
    for experiment in EXPERIMENTS:
        assert f"experiment={experiment}" in readme, f"experiments/README.md does not list {experiment}"
    for page in ("gpt2_zero_shot.md", "gpt2_quadapter.md", "proxy.md"):
        assert (PAGES / page).is_file() and page in readme


def test_reference_files_have_the_report_format():
    files = sorted((PAGES / "references").glob("*.yaml"))
    assert files
    for f in files:
        doc = yaml.safe_load(f.read_text())
        assert {"title", "source", "protocol", "numbers"} <= set(doc), f
        for entry in doc["numbers"]:
            assert {"method", "bits", "model", "set", "ppl"} <= set(entry), (f, entry)
            assert isinstance(entry["ppl"], float) and entry["ppl"] > 1
    gpt2 = yaml.safe_load((PAGES / "references" / "gpt2_paper.yaml").read_text())
    ppl = {(e["model"], e["set"]): e["ppl"] for e in gpt2["numbers"]}
    assert ppl[("gpt2", "wikitext2")] == 29.41 and ppl[("gpt2-xl", "ptb")] == 35.76


# ---- every real-GPT-2 experiment, shrunk ---------------------------------------------------------

# Per method: the fewest steps and blocks that still run every phase of it.
SHRINK = {
    "fp": [],
    "ptq": ["quantizer.calibration.blocks=2", "quantizer.calibration.batch_size=2"],
    "qat": ["quantizer.calibration.blocks=2", "quantizer.calibration.batch_size=2",
            "method.train.steps=2", "method.train.batch_size=2", "method.train.warmup_steps=1"],
    "quadapter": ["quantizer.calibration.blocks=2", "quantizer.calibration.batch_size=2",
                  "method.e2e.steps=2", "method.e2e.batch_size=2", "method.e2e.warmup_steps=1",
                  "method.blockwise.steps=2", "method.blockwise.batch_size=2",
                  "method.save_folded=false"],
}
SHRINK["smoothquant"] = SHRINK["ptq"]
SHRINK["gptq"] = [*SHRINK["ptq"], "method.batch_size=2"]
for _row in ("blockptq", "blockptq_joint2", "blockptq_joint4", "blockptq_down1", "blockptq_down2"):
    SHRINK[_row] = [*SHRINK["ptq"], "method.steps=2", "method.batch_size=2", "method.save_quantized=false"]
REAL_SETS = {"wikitext2", "ptb", "wikitext103", "lambada"}


@pytest.fixture(scope="module")
def gpt2_data_dir(tmp_path_factory) -> Path:
    """The offline mirror, plus a stand-in WikiText-2 train split (the mirror has none): the first
    1500 lines of WikiText-103 valid. Enough to calibrate and train on; not WikiText-2 train."""
    out = tmp_path_factory.mktemp("data")
    for sub in ("wikitext-103", "ptb", "lambada", "gpt2-tokenizer"):
        (out / sub).symlink_to(SHARED_DATA / sub)
    raw = out / "wikitext-2-raw"
    raw.mkdir()
    (raw / "wiki.test.raw").symlink_to(SHARED_DATA / "wikitext-2-raw" / "wiki.test.raw")
    lines = (SHARED_DATA / "wikitext-103" / "wiki.valid.tokens").read_text().splitlines(keepends=True)
    (raw / "wiki.train.raw").write_text("".join(lines[:1500]))
    return out


def shrunk(model_dir: Path, data_dir: Path) -> list[str]:
    """GPT-2 replaced by a random one of the same architecture (2 layers, d=64, context 128) with the
    real GPT-2 tokenizer, the data mirror, a few hundred tokens per set."""
    return ["model=gpt2", f"model.name_or_path={model_dir}",
            f"model.tokenizer={data_dir / 'gpt2-tokenizer'}", f"paths.data_dir={data_dir}",
            "eval.context=null", "eval.stride=null", "eval.max_tokens=300", "eval.val_max_tokens=200",
            "trainer.val_check_interval=2", "trainer.enable_progress_bar=false", "logger=csv"]


# gpt2_quadapter at one bit-width: every method still runs; the other bit-width only changes bits.
NARROW = {"gpt2_quadapter": ["bits=w4a8"]}


@needs_shared_data
@pytest.mark.parametrize("experiment", REAL_GPT2)
def test_real_gpt2_experiment_runs_shrunk_offline(experiment, tmp_path, random_gpt2_dir, gpt2_data_dir):
    from quadapter.runner import run

    jobs = sweep_jobs(experiment, *shrunk(random_gpt2_dir, gpt2_data_dir), *NARROW.get(experiment, []))
    seen = []
    for i, job in enumerate(jobs):
        compare = job_value(job, "compare")
        cfg = make(*job, *SHRINK[compare])
        res = run(cfg, tmp_path / str(i))
        assert res["status"] == "completed", res["error"]
        assert set(res["protocol"]) == REAL_SETS and res["dataset"] == "wikitext2"
        assert all(math.isfinite(v) and v > 1000 for v in res["metrics"].values())  # random weights
        assert res["protocol"]["wikitext2"]["tokenizer"].endswith("gpt2-tokenizer")
        if compare in ("qat", "quadapter"):
            curves = res["training"]["curves"]
            assert [row["step"] for row in curves] == [0, 2]
            assert {f"val/{s}/ppl" for s in REAL_SETS} <= set(curves[-1])
        seen.append((res["method"], res["bits"], res))
    methods = {m for m, _, _ in seen}
    if experiment == "gpt2_quadapter":
        assert methods == {"fp", "ptq", "qat", "quadapter"} and len(seen) == 5
        assert [r["adapter"] for m, _, r in seen if m == "ptq"] == ["none", "smoothquant"]
    if experiment == "gpt2_zero_shot":
        assert methods == {"fp"} and seen[0][2]["protocol"]["ptb"]["context"] == 128
    if experiment.startswith("gpt2_data_size"):
        train = [r["training"]["train_tokens"] for _, _, r in seen]
        assert train[0] == 24000 and train[1] == train[2] > 24000  # the stand-in has < 240000
    if experiment == "gpt2_sites":
        assert [tuple(r["quadapter"]["sites"]) for _, _, r in seen] == [
            ("ln1_qkv",), ("ln2_fc",), ("v_proj",), ("ln1_qkv", "ln2_fc"),
            ("ln1_qkv", "ln2_fc", "v_proj")]
        assert {b for _, b, _ in seen} == {"w4a8"}


@needs_shared_data
@pytest.mark.slow
def test_quadapter_multirun_uses_the_experiment_sweep(tmp_path, random_gpt2_dir, gpt2_data_dir):
    """`quadapter -m experiment=gpt2_sites` launches the experiment's own sweep (5 site sets)."""
    import subprocess

    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [sys.executable, "-m", "quadapter.cli", "-m", "experiment=gpt2_sites",
         *shrunk(random_gpt2_dir, gpt2_data_dir), *SHRINK["quadapter"], "method.e2e.enabled=false",
         f"hydra.sweep.dir={sweep}"], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/results.json"))]
    assert len(results) == 5 and all(r["status"] == "completed" for r in results)
    assert sorted(len(r["quadapter"]["sites"]) for r in results) == [1, 1, 1, 2, 3]


# ---- the proxy model: pretraining on real corpora ------------------------------------------------

def proxy_spec(data_dir: Path | None, **changes) -> dict:
    """SMALL_SPEC pretrained on WikiText-103 valid plus embedded prose, as conf/model/proxy.yaml is."""
    spec = OmegaConf.to_container(make("model=proxy").model.pretrain, resolve=False)
    return {**SMALL_SPEC, "domains": ["wikitext103", "prose"], "corpora": spec["corpora"],
            "data_dir": None if data_dir is None else str(data_dir), **changes}


def test_tiny_model_cache_key_is_unchanged():
    """model=tiny hashes its spec as it always has, so nobody's cached tiny model is re-pretrained."""
    from quadapter.methods.embedded_model import embedded_model_dir

    spec = OmegaConf.to_container(make().model.pretrain, resolve=True)
    blob = json.dumps({"spec": spec, "python": platform.python_version()}, sort_keys=True)
    assert embedded_model_dir(spec, "/c").name == f"embedded-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def test_proxy_config_pretrains_on_wikitext103_validation_only():
    pretrain = make("model=proxy", "paths.data_dir=/somewhere").model.pretrain
    assert list(pretrain.domains) == ["wikitext103", "prose", "code"]
    assert pretrain.corpora.wikitext103.split == "validation"  # WikiText-2 test's articles are in test
    assert pretrain.corpora.wikitext103.local.dir == "wikitext-103" and pretrain.data_dir == "/somewhere"


def test_unknown_pretraining_domain_names_the_key_and_the_fix():
    from quadapter.methods.embedded_model import embedded_model_dir

    with pytest.raises(ConfigError, match=r"model.pretrain.domains has 'wikitext2'.*corpora"):
        embedded_model_dir(proxy_spec(None, domains=["wikitext2"]), "/c")


@needs_shared_data
def test_proxy_cache_key_follows_the_text_not_the_data_dir(tmp_path):
    from quadapter.methods.embedded_model import embedded_model_dir

    copy = tmp_path / "copy"
    (copy / "wikitext-103").mkdir(parents=True)
    shutil.copy(SHARED_DATA / "wikitext-103" / "wiki.valid.tokens", copy / "wikitext-103")
    key = embedded_model_dir(proxy_spec(SHARED_DATA), tmp_path)
    assert embedded_model_dir(proxy_spec(copy), tmp_path) == key  # same text elsewhere
    with open(copy / "wikitext-103" / "wiki.valid.tokens", "a") as f:
        f.write(" one more line \n")
    assert embedded_model_dir(proxy_spec(copy), tmp_path) != key  # other text
    assert embedded_model_dir(proxy_spec(SHARED_DATA, steps=61), tmp_path) != key


@needs_shared_data
def test_proxy_pretrains_on_a_real_corpus_from_the_data_dir(tmp_path):
    from quadapter.data.corpora import load_text
    from quadapter.methods.embedded_model import ensure_embedded_model
    from quadapter.models.loading import load_model

    spec = proxy_spec(SHARED_DATA, steps=4, warmup_steps=1)
    model_dir = ensure_embedded_model(spec, tmp_path)
    meta = json.loads((model_dir / "pretrain.json").read_text())
    assert set(meta["domain_tokens"]) == {"wikitext103", "prose"}
    assert meta["domain_tokens"]["wikitext103"] > 100_000  # all of WikiText-103 valid
    text = load_text(spec["corpora"]["wikitext103"], "validation", str(SHARED_DATA))
    assert meta["data_sha256"] == {"wikitext103": hashlib.sha256(text.encode()).hexdigest()}
    _, tok = load_model(str(model_dir))
    assert len(tok.encode(" the <unk> of the")) < 10  # its BPE learned WikiText's words


def test_sweep_details_prints_outliers_of_plain_ptq_runs_and_every_curve_point(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("sweep_details", PAGES / "sweep_details.py")
    details = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(details)
    stats = {f"transformer.h.{b}.mlp.c_fc.input": {"max_over_median": 30.0 + b, "kurtosis": 150.0 + b}
             for b in (1, 0)}
    runs = {"0_ptq": {"method": "ptq", "adapter": "none", "outliers": stats},
            "1_smoothquant": {"method": "ptq", "adapter": "smoothquant", "outliers": stats},
            "2_qat": {"method": "qat", "adapter": "none", "training": {"curves": [
                {"step": 0, "val/ptb/ppl": 400.0, "val/wikitext2/ppl": 250.0},
                {"step": 50, "train/ppl": 160.25, "val/ptb/ppl": 150.0, "val/wikitext2/ppl": 212.8}]}},
            "3_failed": {"method": "qat", "status": "failed"}}
    for name, res in runs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(
            {"status": "completed", "bits": "w8a3", "model": "proxy+outliers", "dataset": "ptb"} | res))
    assert details.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    # blocks in order, only the plain PTQ run (SmoothQuant's inputs are already smoothed)
    assert "| proxy+outliers | w8a3 | mlp.c_fc | 30.0 / 31.0 | 150.0 / 151.0 |" in out
    assert out.count("mlp.c_fc") == 1
    assert "**qat w8a3 proxy+outliers** (2_qat)" in out and "3_failed" not in out
    assert "| step | train | ptb (ID) | wikitext2 (OOD) |" in out
    assert "| 0 |  | 400.0 | 250.0 |" in out and "| 50 | 160.2 | 150.0 | 212.8 |" in out
    assert details.main([str(tmp_path / "2_qat")]) == 0
    assert "(no plain PTQ run in these sweeps: none measured)" in capsys.readouterr().out
