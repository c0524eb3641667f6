"""Sweeps on real schedulers that the fixtures start on this machine: a single-node SLURM cluster and a
local Ray head. Each runs a 2x2 sweep of the embedded model, loses a run mid-sweep (``scancel`` of a
running job; SIGKILL of a Ray worker), and the same command run again finishes the sweep without
re-running the runs that had completed; the report of the sweep equals a local sweep's.

``tests/clusters/slurm_up.sh`` brings up munged, MariaDB, slurmdbd (``sacct``: submitit polls it),
slurmctld and slurmd as root with everything under a temp dir (``SLURM_CONF``); ``slurm_down.sh`` stops
them by pid. The Ray head is ``ray start --head --block``, stopped by its pid. Where that is impossible
(not root, the packages or the ``ray`` extra missing) the tests skip and say why.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest
from conftest import SMALL_OVERRIDES
from test_launchers import _free_port, _listening, completed_runs, installed

CLUSTERS = Path(__file__).parent / "clusters"
SLURM_PACKAGES = "slurmctld slurmd slurm-client slurmdbd munge mariadb-server"
SLURM_BINARIES = ("munged", "mariadbd", "mariadb-install-db", "slurmdbd", "slurmctld", "slurmd", "sbatch", "sacct",
                  "squeue", "scancel", "sinfo")
# CPU-only runs that fit the one node (2 cores): the shipped config asks for a GPU, 8 cores and 32 GB
SLURM_RUN = ["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1",
             "hydra.launcher.mem_gb=2", "hydra.launcher.timeout_min=20"]
SWEEP = [*SMALL_OVERRIDES, "eval.max_tokens=3000", "logger=csv", "compare=ptq", "bits=w8a8,w4a8", "seed=0,1",
         "quantizer.calibration.blocks=8"]


SLURM_PORTS = (6817, 6818, 6819, 3307)  # slurmctld, slurmd, slurmdbd, MariaDB (tests/clusters/slurm_up.sh)


def _why_no_slurm() -> str | None:
    if os.geteuid() != 0:
        return "the SLURM fixture runs its daemons as root (SlurmUser=root); run the tests as root"
    missing = [b for b in SLURM_BINARIES if shutil.which(b) is None]
    if missing:
        return f"SLURM is not installed ({', '.join(missing)} missing): apt-get install {SLURM_PACKAGES}"
    busy = [port for port in SLURM_PORTS if _listening(port)]
    if busy:
        return f"ports {busy} are taken (a SLURM cluster or a database already runs here); the fixture needs them"
    return None


def _log_tails(root: Path) -> str:
    return "\n".join(f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-5:])
                     for log in sorted((root / "log").glob("*")))


@pytest.fixture(scope="module")
def slurm() -> Iterator[dict[str, str]]:
    """A running one-node cluster; yields the environment that reaches it (``SLURM_CONF``)."""
    reason = _why_no_slurm()
    if reason:
        pytest.skip(reason)
    # not under pytest's 0700 temp root: munged wants its socket's every parent directory world-executable
    root = Path(tempfile.mkdtemp(prefix="slurm-"))
    root.chmod(0o755)
    env = {"SLURM_CONF": str(root / "etc" / "slurm.conf")}
    try:  # the daemons write to files under root: nothing keeps the script's pipes open
        up = subprocess.run(["bash", str(CLUSTERS / "slurm_up.sh"), str(root)], capture_output=True, text=True,
                            timeout=180)
        if up.returncode != 0:  # the machine cannot run the cluster: say why, with the daemons' logs
            pytest.skip(f"the one-node SLURM cluster did not come up (slurm_up.sh: {up.stderr.strip()[-300:]}):\n"
                        f"{_log_tails(root)}")
        yield env
    finally:
        environ = {**os.environ, **env}
        subprocess.run(["scancel", "--user=root"], env=environ, capture_output=True)
        _wait_for_empty_queue(environ, 120)
        subprocess.run(["bash", str(CLUSTERS / "slurm_down.sh"), str(root)], capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def _queue(env: dict) -> list[tuple[str, str]]:
    out = subprocess.run(["squeue", "-h", "-o", "%i %T"], env=env, capture_output=True, text=True).stdout
    return [tuple(line.split()) for line in out.splitlines() if line.strip()]


def _wait_for_empty_queue(env: dict, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while _queue(env) and time.monotonic() < deadline:
        time.sleep(1)


def quadapter(*args: str, cwd: Path, env: dict, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "quadapter.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=timeout)


def report(sweep: Path) -> str:
    proc = subprocess.run([sys.executable, "-m", "quadapter.report", str(sweep), "--format", "csv"],
                          capture_output=True, text=True, check=True)
    return proc.stdout


@pytest.fixture(scope="module")
def local_report(tmp_path_factory, small_model_dir) -> str:
    """The report of the same sweep run by Hydra's basic launcher, one run after the other."""
    where = tmp_path_factory.mktemp("local")
    proc = quadapter("-m", *SWEEP, f"hydra.sweep.dir={where / 'sweep'}", cwd=where, env={})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return report(where / "sweep")


def _processes(title: str) -> list[int]:
    """Pids whose command line starts with ``title`` (Ray sets its workers' titles), read from /proc."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if cmdline.read_bytes().startswith(title.encode()):
                pids.append(int(cmdline.parent.name))
        except OSError:  # gone meanwhile
            continue
    return pids


def _finished(sweep: Path) -> dict[str, int]:
    """Run dir name -> results.json's mtime, for the runs that have completed."""
    return {p.parent.name: p.stat().st_mtime_ns for p in sweep.glob("*/results.json") if '"completed"' in p.read_text()}


def relaunch_finishes(command: list[str], sweep: Path, cwd: Path, env: dict, local_report: str) -> None:
    """The same command finishes the interrupted sweep: every run completed, the runs that had completed
    untouched, the lost one run again (an earlier attempt recorded), the report equal to the local sweep's."""
    before = _finished(sweep)
    again = quadapter(*command, cwd=cwd, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    runs = completed_runs(sweep)
    assert len(runs) == 4
    after = _finished(sweep)
    assert all(after[name] == stamp for name, stamp in before.items())  # finished runs not re-run
    assert any(r["attempts"] for r in runs)  # the lost run resumed
    assert report(sweep) == local_report


@pytest.mark.slow
def test_a_slurm_sweep_survives_a_cancelled_job_and_reports_what_a_local_sweep_does(slurm, local_report, tmp_path):
    env = {**os.environ, **slurm}

    sweep = tmp_path / "slurm"  # absolute: jobs write where the submitting process points them
    command = ["-m", *SWEEP, *SLURM_RUN, f"hydra.sweep.dir={sweep}", "hydra.launcher.array_parallelism=2"]
    launcher = subprocess.Popen([sys.executable, "-m", "quadapter.cli", *command], cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline, cancelled = time.monotonic() + 300, []
    while not cancelled and time.monotonic() < deadline and launcher.poll() is None:
        # once a run is under way, cancel the running tasks: one of them is that run's
        under_way = sweep.exists() and any('"running"' in p.read_text() for p in sweep.glob("*/results.json"))
        running = [job for job, state in _queue(env) if state == "RUNNING"]
        if under_way and running:
            cancelled = running
            subprocess.run(["scancel", *cancelled], env=env, check=True)
        time.sleep(0.2)
    assert cancelled, f"no run of the SLURM sweep was caught under way: {launcher.communicate()[0][-3000:]}"
    out, _ = launcher.communicate(timeout=600)
    assert launcher.returncode != 0, out[-3000:]  # the launcher reports the cancelled job
    _wait_for_empty_queue(env, 300)  # the array's other tasks finish on their own
    sacct = subprocess.run(["sacct", "-n", "-X", "-o", "JobID,State"], env=env, capture_output=True, text=True,
                           check=True).stdout
    assert "CANCELLED" in sacct and "COMPLETED" in sacct, sacct
    assert _finished(sweep)  # the array's other tasks completed their runs
    relaunch_finishes(command, sweep, tmp_path, slurm, local_report)


@pytest.fixture(scope="module")
def ray_head() -> Iterator[dict[str, str]]:
    """A one-node Ray cluster (``ray start --head --block``, 2 CPUs), stopped by its pid; yields the
    environment that reaches it (``RAY_ADDRESS``)."""
    if not installed("hydra_plugins.hydra_ray_launcher"):
        pytest.skip("the ray extra is not installed: pip install -e '.[ray]'")
    port = _free_port()
    ray_tmp = tempfile.mkdtemp(prefix="ray-")  # short: Ray's socket paths under it must stay < 108 chars
    env = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ADDRESS": f"127.0.0.1:{port}"}
    head = subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", f"--port={port}",
         "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={ray_tmp}"],
        cwd=ray_tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **env})
    try:
        deadline = time.monotonic() + 120
        while not _listening(port):  # the head's GCS is up
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.skip(f"a local Ray head did not start (ray start --head, exit {head.poll()})")
            time.sleep(1)
        yield env
    finally:
        head.terminate()  # --block: the head stops every Ray process it started
        head.wait(timeout=60)
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.slow
def test_a_ray_sweep_survives_a_killed_worker_and_reports_what_a_local_sweep_does(ray_head, local_report, tmp_path):
    sweep = tmp_path / "ray"  # absolute: Ray's workers run in the head's directory
    # no retry by Ray itself: the killed run fails the sweep, and the re-launch is what finishes it
    command = ["-m", *SWEEP, "hydra/launcher=ray_cluster", "+hydra.launcher.ray.remote.max_retries=0",
               f"hydra.sweep.dir={sweep}"]
    launcher = subprocess.Popen([sys.executable, "-m", "quadapter.cli", *command], cwd=tmp_path,
                                env={**os.environ, **ray_head}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
    deadline, killed = time.monotonic() + 300, []
    while not killed and time.monotonic() < deadline and launcher.poll() is None:
        # once a run is under way, kill the workers executing runs (ray::_run_job; an idle one is ray::IDLE)
        under_way = sweep.exists() and any('"running"' in p.read_text() for p in sweep.glob("*/results.json"))
        busy = _processes("ray::_run_job")
        if under_way and busy:
            killed = [int(pid) for pid in busy]
            for pid in killed:
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    if not killed:
        launcher.kill()
        pytest.fail(f"no run of the Ray sweep ever started:\n{launcher.communicate()[0][-3000:]}")
    out, _ = launcher.communicate(timeout=600)
    assert launcher.returncode != 0, out[-3000:]  # the lost run fails the sweep
    relaunch_finishes(command, sweep, tmp_path, ray_head, local_report)
