"""The range-parameterization study: the controlled experiment's core on a tiny setting, and the
LM sweep's experiment config (experiment=range_parameterization)."""

import importlib.util
import json
import math

import pytest
from conftest import CONF, REPO
from hydra import compose, initialize_config_dir

from quadapter.methods.quant_config import quant_settings

_SCRIPT = REPO / "experiments" / "range_parameterization" / "controlled.py"
_spec = importlib.util.spec_from_file_location("range_controlled", _SCRIPT)
controlled = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(controlled)

NAMES = list(controlled.PARAMETERIZATIONS)


@pytest.fixture(scope="module")
def problem():
    return controlled.make_problem(seed=0)  # the experiment's own problem: 256 x 32 inputs


# A sane Adam lr at a low and a high bit-width, and the loss reduction every parameterization
# reaches within 25 steps there (8 bits: the min-max range is nearly right already).
@pytest.mark.parametrize("bits,lr,factor", [(3, 0.1, 0.9), (8, 0.01, 0.98)])
def test_every_parameterization_starts_from_the_same_loss_and_learns(problem, bits, lr, factor):
    runs = {n: controlled.train_range(problem, bits, n, lr=lr, optimizer="adam", steps=25)
            for n in NAMES}
    initial = {n: r["losses"][0] for n, r in runs.items()}
    # at init each parameterization reproduces the calibrated fixed-range quantizer bit for bit
    assert len(set(initial.values())) == 1, initial
    assert len({r["init_range"] for r in runs.values()}) == 1
    for n, r in runs.items():
        losses = r["losses"]
        assert len(losses) == 26 and all(math.isfinite(v) for v in losses), n
        assert not r["nonfinite"]
        assert min(losses[-5:]) < factor * losses[0], (n, losses[0], losses[-5:])
        lo, hi = r["final_range"]
        assert lo <= 0 < hi and (lo, hi) != r["init_range"], n  # the range itself moved


def test_runs_are_deterministic(problem):
    a = controlled.train_range(problem, 4, "scale_offset", 0.05, "sgd", steps=5)
    b = controlled.train_range(problem, 4, "scale_offset", 0.05, "sgd", steps=5)
    assert a["losses"] == b["losses"] and a["final_range"] == b["final_range"]


def test_summary_measures_convergence_and_flags_a_collapsed_range(problem):
    good = controlled.train_range(problem, 3, "beta_gamma", 0.1, "adam", steps=25)
    # scale/offset under Adam at lr 1: s takes steps of ~1 while the 8-bit scale is ~0.15
    bad = controlled.train_range(problem, 8, "scale_offset", 1.0, "adam", steps=25)
    rows = {r["parameterization"]: r for r in controlled.summarize([good, bad])}
    g, b = rows["beta_gamma"], rows["scale_offset"]
    assert g["loss_final"] < g["loss_init"] and not g["worse_than_init"] and not g["collapsed"]
    # the best run at a bit-width converges by definition, no later than its best step
    assert g["steps_to_converge"] is not None
    assert g["steps_to_converge"] <= good["losses"].index(g["loss_best"])
    assert b["collapsed"] and b["worse_than_init"] and b["loss_final"] > 0.9  # output ~0: NMSE ~1
    table = controlled.markdown_tables(controlled.summarize([good, bad]))
    assert "| adam | scale_offset | 1 | 0 | 1 | 1 | 1 |" in table and b["peak_over_init"] > 2


def test_script_writes_its_tables(tmp_path, capsys):
    out = tmp_path / "out"
    assert controlled.main(["--out", str(out), "--bits", "3", "--steps", "6", "--adam-lrs", "0.05",
                            "--sgd-lrs", "--no-plots"]) == 0
    printed = capsys.readouterr().out
    summary = (out / "summary.md").read_text()
    assert summary in printed  # the page's numbers are the printed ones
    rows = (out / "runs.csv").read_text().splitlines()
    assert len(rows) == 1 + len(NAMES) and rows[0].startswith("optimizer,bits,lr,parameterization")
    assert "| 3 | 0.05 |" in summary and "sgd" not in summary


EXPECTED = {  # experiment/range_params option -> (quantizer.learnable, quantizer.sigmoid)
    "scale_offset": ("scale_offset", False),
    "min_max": ("min_max", False),
    "beta_gamma": ("beta_gamma", False),
    "beta_gamma_sigmoid": ("beta_gamma", True),
}
_MODELS = ["tiny", pytest.param("proxy", marks=pytest.mark.skipif(
    not (CONF / "model" / "proxy.yaml").is_file(), reason="conf/model/proxy.yaml not present"))]


def _compose(*overrides: str, hydra: bool = False):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=["experiment=range_parameterization", *overrides],
                       return_hydra_config=hydra)


def test_experiment_sweeps_the_four_parameterizations_with_qat():
    params = _compose(hydra=True).hydra.sweeper.params
    assert params["compare"] == "qat"  # not the default comparison's five methods
    assert params["experiment/range_params@quantizer"].split(",") == list(EXPECTED)


@pytest.mark.parametrize("model", _MODELS)
@pytest.mark.parametrize("option", list(EXPECTED))
def test_each_sweep_value_sets_the_quantizers_parameterization(option, model):
    cfg = _compose(f"experiment/range_params@quantizer={option}", f"model={model}", "compare=qat")
    learnable, sigmoid = EXPECTED[option]
    assert (cfg.method.name, cfg.bits.name, cfg.model.name) == ("qat", "w8a3", model)
    assert (cfg.quantizer.learnable, cfg.quantizer.sigmoid) == (learnable, sigmoid)
    assert cfg.quantizer.estimator == "minmax"  # the learned quantizer's min-max init is kept
    assert cfg.run_name == f"qat-learned-{option}-w8a3-{model}-prose"
    settings = quant_settings(cfg, "qat")  # what QAT builds its quantizers from
    for side in (settings.weight, settings.act):
        assert (side.learnable, side.sigmoid) == (learnable, sigmoid)


def test_default_single_run_is_min_max_and_bits_can_be_overridden():
    cfg = _compose("bits=w4a4")
    assert (cfg.quantizer.learnable, cfg.quantizer.sigmoid, cfg.bits.name) == ("min_max", False, "w4a4")


def test_lm_report_labels_runs_by_their_parameterization(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location(
        "range_lm_report", REPO / "experiments" / "range_parameterization" / "lm_report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    for i, (learnable, sigmoid, ppl) in enumerate([("beta_gamma", True, 150.0),
                                                   ("scale_offset", False, 170.0)]):
        run = tmp_path / "sweep" / str(i)
        (run / "csv").mkdir(parents=True)
        (run / "csv" / "metrics.csv").write_text("step,train/loss,val/prose/ppl\n0,,400\n5,5.5,\n")
        act = {"bits": 3, "symmetric": False, "learnable": learnable, "sigmoid": sigmoid}
        (run / "results.json").write_text(json.dumps({
            "status": "completed", "model": "tiny", "bits": "w8a3", "dataset": "prose",
            "quantization": {"act": act, "weight": None}, "metrics": {"test/prose/ppl": ppl},
            "training": {"steps": 10, "curves": [{"step": 0, "val/prose/ppl": 400.0},
                                                 {"step": 10, "train/ppl": 210.0,
                                                  "val/prose/ppl": ppl + 10}]}}))
    assert report.main([str(tmp_path / "sweep"), "--out", str(tmp_path / "out")]) == 0
    table = (tmp_path / "out" / "lm_table.md").read_text()
    assert table in capsys.readouterr().out and (tmp_path / "out" / "lm_curves.png").is_file()
    rows = [line for line in table.splitlines() if line.startswith("| scale_offset")
            or line.startswith("| beta_gamma")]
    # the paper's order, whatever the run order: scale_offset first
    assert rows == ["| scale_offset | 400.00 | 180.00 | 170.00 | 210.00 |",
                    "| beta_gamma+sigmoid | 400.00 | 160.00 | 150.00 | 210.00 |"]
