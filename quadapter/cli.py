"""The ``quadapter`` command: the Hydra app (``quadapter-report`` lives in ``quadapter.report``).

Errors a user can fix (``UserError``: config, data, model, non-finite training) print one message,
no traceback (``HYDRA_FULL_ERROR=1`` shows it). In a sweep a failed run does not stop the others:
it is recorded as failed in its ``results.json``, the sweep report lists it, and the command exits
non-zero at the end. SIGINT/SIGTERM stop the run (and the sweep) resumably.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

# The configs are the interface users edit, so they stay in the checkout's conf/ (editable install).
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")
EXIT_FAILED, EXIT_SIGINT, EXIT_SIGTERM = 1, 130, 143

log = logging.getLogger("quadapter")


def main() -> None:
    if not Path(CONFIG_DIR).is_dir():
        sys.exit(f"quadapter: no config dir at {CONFIG_DIR}; install from a checkout: pip install -e .")
    from quadapter.resume import incomplete_runs

    app()
    _warn_if_refused(sys.argv[1:])
    if incomplete_runs:  # filled after a sweep by resume.SweepExitStatus
        print(f"quadapter: {len(incomplete_runs)} run(s) of the sweep did not complete: "
              f"{', '.join(incomplete_runs)}", file=sys.stderr)
        sys.exit(EXIT_FAILED)


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def app(cfg: DictConfig) -> float:
    from quadapter.errors import RunInterrupted, UserError
    from quadapter.runner import format_results, run

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    run_dir = Path(hc.runtime.output_dir)
    try:
        results = run(cfg, run_dir, group=Path(hc.sweep.dir).name if multirun else None,
                      command_line=list(hc.overrides.task))
    except RunInterrupted as e:
        print(f"quadapter: interrupted: {e}\nre-run the same command to resume (results so far: "
              f"{run_dir / 'results.json'})", file=sys.stderr)
        sys.exit(EXIT_SIGINT if e.signal_name == "SIGINT" else EXIT_SIGTERM)
    except Exception as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or not (isinstance(e, UserError) or multirun):
            raise  # a bug: keep the traceback
        if isinstance(e, UserError):
            print(f"quadapter: error: {e}", file=sys.stderr)
        else:
            log.exception("run %s failed", run_dir)
        print(f"results: {run_dir / 'results.json'}", file=sys.stderr)
        if multirun:
            return _worst(cfg)  # the sweep goes on (its report and exit status list this run); to a
            # search (Optuna) a failed run is the worst value, not a crash when all trials fail
        sys.exit(EXIT_FAILED)
    if results["status"] != "completed":  # skipped by the resume rule: an earlier failed attempt
        print(f"quadapter: {run_dir} holds a {results['status']} run ({results.get('error')}); it was "
              "not run again: pass resume.rerun_failed=true to retry it", file=sys.stderr)
        if multirun:
            return _worst(cfg)  # listed by resume.SweepExitStatus; the sweep exits 1
        sys.exit(EXIT_FAILED)
    print(format_results(results))
    print(f"results: {run_dir / 'results.json'}")
    # what Hydra sweepers optimise: the task's primary metric on the fine-tuning dataset's held-out
    # split (LM: test perplexity, minimised; GLUE: e.g. dev accuracy, maximised: direction=maximize)
    objective = results["metrics"].get(f"test/{cfg.dataset.name}/{results.get('primary_metric', 'ppl')}")
    return objective if results["status"] == "completed" and objective is not None else _worst(cfg)


def _worst(cfg: DictConfig) -> float:
    """The objective of a run without a result: the worst value in its task's direction."""
    from quadapter.tasks import TASKS

    task = TASKS.get(OmegaConf.select(cfg, "task.name", default="lm"))
    return -math.inf if task is not None and task.direction == "maximize" else math.inf


def _warn_if_refused(argv: list[str]) -> None:
    """After ``--cfg``/``-c`` (Hydra prints the config and runs nothing): say whether a run of that
    config would be refused, so a printed config is never mistaken for a valid one. Sweeps (``-m``
    with comma lists) are not checked here: each of their runs is checked when it starts."""
    if not any(a in ("--cfg", "-c") or a.startswith("--cfg=") for a in argv) or any(
            a in ("-m", "--multirun") for a in argv):
        return
    takes_value = {"--cfg", "-c", "--package", "-p", "--config-name", "-cn", "--config-dir", "-cd",
                   "--config-path", "-cp", "--info", "-i"}
    overrides, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in takes_value:
            skip = True
        elif not a.startswith("-"):
            overrides.append(a)
    from hydra import compose, initialize_config_dir

    from quadapter.errors import UserError
    from quadapter.runner import check_before_work, default_cache_dir

    try:
        with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
            cfg = compose("config", overrides=overrides)
        check_before_work(cfg, overrides, Path(cfg.paths.cache_dir or default_cache_dir()).expanduser())
    except UserError as e:
        print(f"quadapter: warning: a run of this config would be refused: {e}", file=sys.stderr)
    except Exception:  # composing failed: Hydra has already said why
        pass


if __name__ == "__main__":
    main()
