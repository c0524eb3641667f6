"""The ``quadapter`` command: the Hydra app (``quadapter-report`` lives in ``quadapter.report``)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

# The configs are the interface users edit, so they stay in the checkout's conf/ (editable install).
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")

log = logging.getLogger("quadapter")


def main() -> None:
    if not Path(CONFIG_DIR).is_dir():
        sys.exit(f"quadapter: no config dir at {CONFIG_DIR}; install from a checkout: pip install -e .")
    app()


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def app(cfg: DictConfig) -> float | None:
    from quadapter.runner import format_results, run

    hc = HydraConfig.get()
    group = Path(hc.sweep.dir).name if hc.mode == RunMode.MULTIRUN else None
    results = run(cfg, hc.runtime.output_dir, group=group)
    print(format_results(results))
    print(f"results: {Path(hc.runtime.output_dir) / 'results.json'}")
    metrics = results["metrics"]
    return metrics.get(f"test/{cfg.dataset.name}/ppl")  # the objective of Hydra sweepers


if __name__ == "__main__":
    main()
