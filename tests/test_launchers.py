"""The sweep launchers (conf/hydra/launcher) and the hyper-parameter searches (conf/hparams_search).

Real sweeps where the machine allows it: a 2-process joblib sweep, a 2-trial Optuna search and, when
Ray is installed, a sweep on a Ray cluster started here. SLURM has no cluster here: a stand-in
`sbatch` records the job array that submitit submits.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import pickle
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from conftest import CONF, SMALL_OVERRIDES
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

QUICK = [*SMALL_OVERRIDES, "eval.max_tokens=3000", "logger=csv"]
# every log line of a run names the process that wrote it
PID_LOG = 'hydra.job_logging.formatters.simple.format="[%(asctime)s][%(process)d][%(name)s] %(message)s"'
PLUGINS = {"parallel": "hydra_plugins.hydra_joblib_launcher",
           "slurm": "hydra_plugins.hydra_submitit_launcher",
           "ray_cluster": "hydra_plugins.hydra_ray_launcher"}
PLUGIN_NAMES = {"parallel": "joblib", "slurm": "submitit_slurm", "ray_cluster": "ray"}  # what ours extend
HPARAMS = "hparams_search"  # a group of conf/config.yaml's defaults (null there)


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def needs(module: str):
    return pytest.mark.skipif(not installed(module), reason=f"{module} not installed (see pyproject extras)")


def make(*overrides: str):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


def quadapter(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "quadapter.cli", *args], cwd=cwd, capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=600)


def completed_runs(sweep: Path) -> list[dict]:
    results = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/results.json"))]
    assert results and all(r["status"] == "completed" for r in results), results
    return results


def run_pids(sweep: Path) -> list[set[int]]:
    """The process ids in each run's log (PID_LOG format)."""
    return [{int(pid) for pid in re.findall(r"^\[[^]]+\]\[(\d+)\]", p.read_text(), re.M)}
            for p in sorted(sweep.glob("*/*.log"))]


@pytest.mark.parametrize("launcher", sorted(PLUGINS))
def test_launcher_config_extends_the_plugin_config(launcher):
    """Our options keep the plugin's own schema (every plugin field is there) and set our values."""
    if not installed(PLUGINS[launcher]):
        pytest.skip(f"{PLUGINS[launcher]} not installed")
    from hydra.core.config_store import ConfigStore

    cfg = make(f"hydra/launcher={launcher}").hydra.launcher
    plugin = ConfigStore.instance().load(f"hydra/launcher/{PLUGIN_NAMES[launcher]}.yaml").node
    assert set(cfg) == set(plugin) and cfg._target_ == plugin._target_  # the plugin's schema, whole
    mine = OmegaConf.load(CONF / "hydra" / "launcher" / f"{launcher}.yaml")
    mine.pop("defaults")
    assert OmegaConf.to_container(OmegaConf.merge(cfg, mine)) == OmegaConf.to_container(cfg)  # our values


def test_launcher_options_do_not_shadow_the_plugins_names():
    """A file named like a plugin's config (joblib, submitit_slurm, ray) would be matched against
    the plugin's schema by Hydra's deprecated automatic schema matching: a warning on every run."""
    ours = {p.stem for p in (CONF / "hydra" / "launcher").glob("*.yaml")}
    assert ours == set(PLUGINS)
    assert not ours & {*PLUGIN_NAMES.values(), "submitit_local", "ray_aws", "basic"}


@pytest.mark.slow  # each worker imports torch and prepares the corpora itself: 50-100 s on 2 busy cores
@needs("hydra_plugins.hydra_joblib_launcher")
def test_parallel_launcher_runs_a_sweep_in_two_processes_at_once(tmp_path, small_model_dir):
    sweep = tmp_path / "sweep"
    proc = subprocess.Popen(
        [sys.executable, "-m", "quadapter.cli", "-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2",
         *QUICK, "compare=fp", "eval.stride=32,64", f"hydra.sweep.dir={sweep}", PID_LOG],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, f"{out}\n{err}"
    results = completed_runs(sweep)
    assert [r["protocol"]["code"]["stride"] for r in results] == [32, 64]
    pids = run_pids(sweep)
    assert len(pids) == 2 and all(len(p) == 1 for p in pids), pids
    assert pids[0] != pids[1] and proc.pid not in pids[0] | pids[1]  # two worker processes
    # Hydra writes .hydra/ when a run starts; results.json last gets written when it ends
    runs = sorted(p.parent for p in sweep.glob("*/results.json"))
    start = [(d / ".hydra" / "overrides.yaml").stat().st_mtime for d in runs]
    end = [(d / "results.json").stat().st_mtime for d in runs]
    assert start[0] < end[1] and start[1] < end[0], (start, end)  # they ran at the same time
    assert "fp | fp |" in (sweep / "comparison.md").read_text()  # the sweep report still follows


@needs("hydra_plugins.hydra_submitit_launcher")
def test_slurm_launcher_submits_one_job_array_with_the_configured_resources(tmp_path):
    """Runs the real launcher and submitit up to `sbatch`, which a stand-in records (no cluster)."""
    bin_dir, script = tmp_path / "bin", tmp_path / "submitted.sh"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" {script}\necho "sbatch: no cluster in tests" >&2\n'
                                    "exit 1\n")
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit looks for it; the job script would call it
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    sweep = tmp_path / "sweep"
    proc = quadapter("-m", "hydra/launcher=slurm", "hydra.launcher.partition=debug",
                     "hydra.launcher.array_parallelism=1", "compare=fp", "eval.stride=32,64",
                     f"hydra.sweep.dir={sweep}", cwd=tmp_path,
                     env={"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    assert proc.returncode != 0 and "no cluster in tests" in proc.stdout + proc.stderr
    flags = dict(re.findall(r"^#SBATCH --([\w-]+)=(.*)$", script.read_text(), re.M))
    assert {k: flags.get(k) for k in ("partition", "gpus-per-node", "cpus-per-task", "mem", "time", "nodes",
                                      "ntasks-per-node", "array")} == {
        "partition": "debug", "gpus-per-node": "1", "cpus-per-task": "8", "mem": "32GB", "time": "240",
        "nodes": "1", "ntasks-per-node": "1", "array": "0-1%1"}  # 2 runs, 1 at a time
    assert flags["output"].startswith(f"{sweep}/.submitit/")
    # what each array task would run: the launcher, pickled with that run's overrides
    submissions = []
    for p in sorted((sweep / ".submitit").glob("*.pkl")):
        with open(p, "rb") as f:
            submissions.append(pickle.load(f))
    assert sorted(o for s in submissions for o in s.args[0] if o.startswith("eval.stride=")) == [
        "eval.stride=32", "eval.stride=64"]
    assert {type(s.function).__name__ for s in submissions} == {"SlurmLauncher"}


@needs("hydra_plugins.hydra_optuna_sweeper")
@pytest.mark.parametrize("search,method,space", [
    ("qat_lr", "qat", {"method.lr.weights": (1e-5, 1e-3), "method.lr.ranges": (1e-4, 1e-2)}),
    ("quadapter_lr", "quadapter", {"method.lr.alpha": (1e-3, 1e-1), "method.blockwise.lr": (1e-3, 1e-1)}),
])
def test_hparams_search_space_is_the_yaml_one_and_every_trial_composes(search, method, space):
    from hydra.utils import instantiate
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides
    from optuna.distributions import LogUniformDistribution
    from optuna.samplers import TPESampler

    launching = make(f"{HPARAMS}={search}")
    assert launching.method.name == method  # so method.* overrides on the command line exist
    sweeper = launching.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "minimize"
    sampler = instantiate(sweeper.sampler)
    assert isinstance(sampler, TPESampler) and sampler._rng.rand() == TPESampler(seed=0)._rng.rand()
    # parsed by the plugin itself, from the params it receives (ours merged with conf/config.yaml's)
    dists, fixed = create_params_from_overrides([f"{k}={v}" for k, v in sweeper.params.items()])
    assert dists == {k: LogUniformDistribution(lo, hi) for k, (lo, hi) in space.items()}
    assert fixed == {"compare": method, "bits": "w8a3", "eval.max_tokens": "32768"}  # not a grid
    trial = {k: lo * 3 for k, (lo, _) in space.items()}  # a sampled point: every key must exist
    cfg = make(f"{HPARAMS}={search}", *(f"{k}={v}" for k, v in {**fixed, **trial}.items()))
    assert cfg.method.name == method and cfg.bits.name == "w8a3"
    assert {k: OmegaConf.select(cfg, k) for k in trial} == trial


@pytest.mark.slow
@needs("hydra_plugins.hydra_optuna_sweeper")
def test_qat_lr_search_runs_trials_and_reports_the_best(tmp_path, small_model_dir):
    sweep = tmp_path / "search"
    proc = quadapter("-m", f"{HPARAMS}=qat_lr", "hydra.sweeper.n_trials=2", *SMALL_OVERRIDES, "logger=csv",
                     "eval.max_tokens=1500", "eval.val_max_tokens=256", "method.train.steps=2",
                     "method.train.warmup_steps=1", "trainer.val_check_interval=2",
                     "quantizer.calibration.blocks=4", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    results = completed_runs(sweep)
    assert len(results) == 2 and {r["method"] for r in results} == {"qat"}
    lrs = [OmegaConf.load(d / "config.yaml").method.lr for d in sorted(sweep.glob("*_qat-*"))]
    assert len({(lr.weights, lr.ranges) for lr in lrs}) == 2  # two sampled points
    assert all(1e-5 <= lr.weights <= 1e-3 and 1e-4 <= lr.ranges <= 1e-2 for lr in lrs)
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    ppl = [r["metrics"]["test/prose/ppl"] for r in results]
    assert best["best_value"] == pytest.approx(min(ppl))
    i = ppl.index(min(ppl))
    assert best["best_params"] == {"method.lr.weights": lrs[i].weights, "method.lr.ranges": lrs[i].ranges}



@pytest.mark.slow
@needs("hydra_plugins.hydra_optuna_sweeper")
def test_a_search_whose_trials_all_fail_ends_with_the_list_not_a_crash(tmp_path, small_model_dir):
    sweep = tmp_path / "search"
    proc = quadapter("-m", f"{HPARAMS}=qat_lr", "hydra.sweeper.n_trials=2", *SMALL_OVERRIDES, "logger=csv",
                     "dataset=ptb", "eval=in_domain", f"hydra.sweep.dir={sweep}", cwd=tmp_path,
                     env={"QUADAPTER_DATA_DIR": str(tmp_path / "no-data")})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "2 run(s) of the sweep did not complete" in proc.stderr and "ptb.test.txt" in proc.stderr
    # to Optuna a failed trial is the worst perplexity: the study ends and says so
    assert yaml.safe_load((sweep / "optimization_results.yaml").read_text())["best_value"] == math.inf

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
@needs("hydra_plugins.hydra_ray_launcher")
def test_ray_cluster_launcher_runs_a_sweep_on_an_existing_cluster(tmp_path, small_model_dir):
    """A one-node Ray cluster started here (`ray start --head --block`, stopped by its pid)."""
    port = _free_port()
    ray_tmp = tempfile.mkdtemp(prefix="ray-")  # short: Ray's socket paths under it must stay < 108 chars
    head = subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", f"--port={port}",
         "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={ray_tmp}"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    try:
        deadline = time.monotonic() + 120
        while not _listening(port):  # the head's GCS is up
            assert head.poll() is None and time.monotonic() < deadline, "ray start --head failed"
            time.sleep(1)
        sweep = tmp_path / "sweep"
        proc = quadapter("-m", "hydra/launcher=ray_cluster", *QUICK, "compare=fp", "eval.stride=32,64",
                         f"hydra.sweep.dir={sweep}", PID_LOG, cwd=tmp_path,
                         env={"RAY_ADDRESS": f"127.0.0.1:{port}"})
        assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
        assert "Connecting to existing Ray cluster" in proc.stdout + proc.stderr
        assert [r["protocol"]["code"]["stride"] for r in completed_runs(sweep)] == [32, 64]
        pids = run_pids(sweep)
        assert len(pids) == 2 and pids[0] != pids[1]  # one Ray worker process per run
    finally:
        head.terminate()  # --block: the head stops every Ray process it started
        head.wait(timeout=60)
        shutil.rmtree(ray_tmp, ignore_errors=True)
