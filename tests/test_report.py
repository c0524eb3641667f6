"""quadapter-report on small result dirs shaped like real runs: pivots, formats, guard, plots, exit codes."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from quadapter.report import SweepReport, build_report, load_runs, main, make_layout, plot_curves, render
from quadapter.report.load import read_metrics_csv

TOKENS_IN_SPLIT = {"prose": 41747, "code": 235725, "wikitext2": 287644}


def protocol(name: str, **over) -> dict:
    return {"dataset": name, "variant": f"stdlib-{name}", "split": "test", "joiner": "\n\n", "context": 64,
            "stride": 64, "level": "token", "tokenizer": "/home/u/.cache/quadapter/models/embedded-6504b94562cb",
            "tokens": 2000, "tokens_in_split": TOKENS_IN_SPLIT[name], "scored_tokens": 1968} | over


def write_run(root: Path, name: str, method: str = "fp", bits: str = "fp", ppl: dict | None = None,
              adapter: str = "none", quantizer: str = "none", dataset: str = "prose", seed: int = 0,
              status: str = "completed", error: str | None = None, proto: dict | None = None,
              curves: list | None = None, model: str = "tiny", config: dict | None = None) -> Path:
    """A run dir with a results.json like runner.run writes (and config.yaml when given)."""
    ppl = {} if ppl is None else ppl
    res = {"status": status, "error": error, "run_name": f"{method}-{bits}-{model}-{dataset}",
           "method": method, "model": model, "bits": bits, "dataset": dataset, "adapter": adapter,
           "quantizer": quantizer, "eval": "embedded", "seed": seed,
           "metrics": {f"test/{s}/ppl": v for s, v in ppl.items()},
           "protocol": {s: protocol(s, **(proto or {}).get(s, {})) for s in ppl},
           "config_hash": "0123456789abcdef", "timings": {"total_s": 1.0},
           "environment": {"python": "3.12.3", "torch": "2.13.0"}}
    if curves is not None:
        res["training"] = {"phase": "train", "steps": 4, "curves": curves}
    d = root / name
    d.mkdir(parents=True)
    (d / "results.json").write_text(json.dumps(res, indent=2))
    if config is not None:
        (d / "config.yaml").write_text(yaml.safe_dump(config))
    return d


def config(seed: int = 0, lr: float = 1e-4, sets: tuple = ("prose", "code")) -> dict:
    return {"seed": seed, "run_name": "x", "paths": {"cache_dir": "/tmp/c"}, "dataset": {"name": sets[0]},
            "eval": {"sets": {s: {"name": s} for s in sets}}, "method": {"name": "qat", "lr": {"weights": lr}}}


def md_tables(text: str) -> list[list[dict[str, str]]]:
    """The markdown tables in ``text``, as lists of {header: cell}."""
    tables, header = [], None
    for line in text.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if header is None:
            header = cells
            tables.append([])
        elif not set(line) <= set("|-"):
            tables[-1].append(dict(zip(header, cells, strict=True)))
    return tables


def by_first(table: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    return {next(iter(row.values())): row for row in table}


def report_text(paths: list[Path], *args: str, capsys) -> tuple[int, str, str]:
    code = main([*map(str, paths), *args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture()
def sweep(tmp_path: Path) -> Path:
    """The default comparison at two bit-widths; metrics deliberately listed code first."""
    s = tmp_path / "sweep"
    write_run(s, "0_fp-tiny-prose", ppl={"code": 86.63, "prose": 206.74})
    write_run(s, "1_ptq-w8a3-tiny-prose", "ptq", "w8a3", {"prose": 390.82, "code": 134.29}, quantizer="minmax")
    write_run(s, "2_ptq+smoothquant-w8a3-tiny-prose", "ptq", "w8a3", {"prose": 388.84, "code": 133.69},
              adapter="smoothquant", quantizer="minmax")
    write_run(s, "3_quadapter-w4a4-tiny-prose", "quadapter", "w4a4", {"prose": 500.5, "code": 150.25},
              adapter="quadapter", quantizer="minmax")
    write_run(s, "10_qat-w8a3-tiny-prose", "qat", "w8a3", {"prose": 205.45, "code": 97.81}, quantizer="learned")
    return s


def test_default_pivot_one_table_per_bit_width_with_fp_reference_row(sweep, capsys):
    code, out, _ = report_text([sweep], capsys=capsys)
    assert code == 0
    w8a3, w4a4 = md_tables(out)
    assert list(w8a3[0]) == ["method", "bits", "prose (ID)", "code (OOD)"]  # in-distribution set first
    assert [(r["method"], r["bits"]) for r in w8a3] == [("fp", "fp"), ("ptq", "w8a3"), ("ptq+smoothquant", "w8a3"),
                                                          ("qat", "w8a3")]  # fp first, then sweep order (10 after 2)
    rows = by_first(w8a3)
    assert rows["ptq+smoothquant"]["prose (ID)"] == "388.84" and rows["ptq+smoothquant"]["code (OOD)"] == "133.69"
    assert rows["qat"]["prose (ID)"] == "205.45" and rows["fp"]["code (OOD)"] == "86.63"
    assert [(r["method"], r["prose (ID)"]) for r in w4a4] == [("fp", "206.74"), ("quadapter", "500.50")]
    assert "### bits: w8a3" in out and "### bits: w4a4" in out


def test_fp_only_runs_get_their_own_table(tmp_path, capsys):
    write_run(tmp_path / "s", "0", ppl={"prose": 10.0, "code": 20.0})
    code, out, _ = report_text([tmp_path / "s"], capsys=capsys)
    assert code == 0 and md_tables(out) == [[{"method": "fp", "bits": "fp", "prose (ID)": "10.00",
                                              "code (OOD)": "20.00"}]]


def test_runs_in_one_cell_show_mean_std_count_and_what_differs(tmp_path, capsys):
    for seed, v in enumerate([10.0, 12.0, 14.0]):
        write_run(tmp_path, f"{seed}_qat", "qat", "w8a3", {"prose": v, "code": 2 * v}, seed=seed,
                  config=config(seed=seed))
    code, out, _ = report_text([tmp_path], capsys=capsys)
    (table,) = md_tables(out)
    assert table[0]["prose (ID)"] == "12.00 ± 2.00 (n=3)" and table[0]["code (OOD)"] == "24.00 ± 4.00 (n=3)"
    assert "they differ in: seed" in out
    code, out, _ = report_text([tmp_path], "--rows", "method,seed", capsys=capsys)
    assert [r["prose (ID)"] for r in md_tables(out)[0]] == ["10.00", "12.00", "14.00"]


def test_rows_cols_split_options_and_config_keys(tmp_path, capsys):
    for i, (bits, lr, v) in enumerate([("w8a3", 1e-4, 10.0), ("w8a3", 1e-5, 11.0), ("w4a4", 1e-4, 20.0)]):
        write_run(tmp_path, f"{i}_qat", "qat", bits, {"prose": v, "code": v + 100}, config=config(lr=lr))
    _, out, _ = report_text([tmp_path], "--rows", "method.lr.weights", "--cols", "bits", capsys=capsys)
    prose, code = md_tables(out)  # `set` not placed: one table per set
    assert list(prose[0]) == ["method.lr.weights", "set", "w8a3", "w4a4"]
    assert by_first(prose)["0.0001"] == {"method.lr.weights": "0.0001", "set": "prose (ID)", "w8a3": "10.00",
                                         "w4a4": "20.00"}
    assert by_first(prose)["1e-05"]["w4a4"] == "—" and by_first(code)["1e-05"]["w8a3"] == "111.00"
    _, out, _ = report_text([tmp_path], "--rows", "set", "--cols", "bits", "--split-by", "none", capsys=capsys)
    assert by_first(md_tables(out)[0])["code (OOD)"]["w8a3"] == "110.50 ± 0.71 (n=2)"
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path), "--rows", "metohd"])
    assert e.value.code == 2 and "unknown field(s) metohd" in capsys.readouterr().err


def test_formats_csv_parses_back_and_latex_is_booktabs_and_escaped(sweep, tmp_path, capsys):
    ref = tmp_path / "ref.yaml"
    ref.write_text(yaml.safe_dump({"title": "Radford & al. 100% table_3", "numbers": [
        {"method": "fp", "bits": "fp", "model": "tiny", "set": "prose", "ppl": 29.41}]}))
    write_run(sweep, "11_odd", "ptq", "w8a3", {"prose": 1.0, "code": 2.0}, model="my_model%&v2")
    code, out, err = report_text([sweep], "--format", "csv", "--reference", str(ref), "--rows", "method,model",
                                 capsys=capsys)
    rows = list(csv.reader(io.StringIO(out)))
    assert code == 0 and rows[0] == ["method", "model", "bits", "prose (ID)", "code (OOD)"]
    body = {(r[0], r[2]): r for r in rows[1:]}
    assert body[("ptq+smoothquant", "w8a3")][3:] == ["388.84", "133.69"]
    assert body[("fp (ref: Radford & al. 100% table_3)", "fp")][3:] == ["29.41", "missing"]
    assert body[("quadapter", "w4a4")][3] == "500.50" and "ref: Radford" in err  # notes go to stderr
    code, out, _ = report_text([sweep], "--format", "latex", "--reference", str(ref), "--rows", "method,model",
                               capsys=capsys)
    assert code == 0 and out.count(r"\toprule") == 2 and out.count(r"\bottomrule") == 2
    assert r"\begin{tabular}{lllrr}" in out and r"method & model & bits & prose (ID) & code (OOD) \\" in out
    assert r"ptq & my\_model\%\&v2 & w8a3 & 1.00 & 2.00 \\" in out
    assert r"fp (ref: Radford \& al. 100\% table\_3) & tiny & fp & 29.41 & --- \\" in out
    body = "\n".join(line for line in out.splitlines() if not line.startswith("%"))  # comments stay raw
    assert "my_model" not in body and "100% table" not in body and "% ref: Radford & al. 100% table_3" in out


def test_failed_incomplete_missing_and_unreadable_runs_are_marked(tmp_path, capsys):
    write_run(tmp_path, "0_fp", ppl={"prose": 10.0, "code": 20.0})
    write_run(tmp_path, "1_ptq", "ptq", "w8a3", {"prose": 11.0})  # code never scored: missing
    write_run(tmp_path, "2_qat", "qat", "w8a3", status="failed", config=config(),
              error="TrainingError: non-finite loss at step 3;\n  lower method.lr.weights")
    write_run(tmp_path, "3_quadapter", "quadapter", "w8a3", status="running", adapter="quadapter")
    (tmp_path / "4_broken").mkdir()
    (tmp_path / "4_broken" / "results.json").write_text('{"status": "comp')
    (tmp_path / "5_never" / ".hydra").mkdir(parents=True)
    code, out, _ = report_text([tmp_path], capsys=capsys)
    assert code == 0
    rows = by_first(md_tables(out)[0])
    assert rows["ptq"]["code (OOD)"] == "—"
    assert rows["qat"]["prose (ID)"] == rows["qat"]["code (OOD)"] == "failed"  # its sets, from config.yaml
    assert rows["quadapter"]["prose (ID)"] == rows["quadapter"]["code (OOD)"] == "incomplete"
    assert "- failed: 2_qat: TrainingError: non-finite loss at step 3; lower method.lr.weights" in out
    assert "- incomplete: 3_quadapter: status running (killed, or still running)" in out
    assert "unreadable: " in out and "4_broken/results.json: JSONDecodeError" in out
    assert "no results.json: " in out and "5_never" in out and "Traceback" not in out


def test_a_cell_with_completed_and_failed_seeds_says_so(tmp_path, capsys):
    write_run(tmp_path, "0", "qat", "w8a3", {"prose": 10.0, "code": 20.0}, seed=0)
    write_run(tmp_path, "1", "qat", "w8a3", {"prose": 14.0, "code": 30.0}, seed=1)
    write_run(tmp_path, "2", "qat", "w8a3", seed=2, status="failed", error="RuntimeError: boom")
    _, out, _ = report_text([tmp_path], capsys=capsys)
    assert md_tables(out)[0][0]["prose (ID)"] == "12.00 ± 2.83 (n=2, 1 failed)"


def test_protocol_guard_splits_columns_and_names_the_differing_keys(tmp_path, capsys):
    write_run(tmp_path, "0", ppl={"prose": 10.0, "code": 20.0}, proto={"prose": {"stride": 32, "scored_tokens": 1999}})
    write_run(tmp_path, "1", ppl={"prose": 11.0, "code": 21.0})
    write_run(tmp_path, "2", "ptq", "w8a8", {"prose": 12.0, "code": 22.0}, proto={"prose": {"tokens": 1000}})
    _, out, _ = report_text([tmp_path], capsys=capsys)
    (table,) = md_tables(out)
    assert list(table[0])[2:] == ["prose (ID) [stride 32, tokens 2000]", "prose (ID) [stride 64, tokens 2000]",
                                  "prose (ID) [stride 64, tokens 1000]", "code (OOD)"]
    fp, ptq = table
    assert [fp[c] for c in list(fp)[2:]] == ["10.00", "11.00", "—", "20.50 ± 0.71 (n=2)"]
    assert [ptq[c] for c in list(ptq)[2:]] == ["—", "—", "12.00", "22.00"]
    assert "prose: measured under 3 protocols (differing in stride, tokens, scored_tokens)" in out
    _, out, _ = report_text([tmp_path], "--rows", "set", "--cols", "method", "--split-by", "none", capsys=capsys)
    assert [(r["set"], r["fp"], r["ptq"]) for r in md_tables(out)[0]] == [
        ("prose (ID) [stride 32, tokens 2000]", "10.00", "—"), ("prose (ID) [stride 64, tokens 2000]", "11.00", "—"),
        ("prose (ID) [stride 64, tokens 1000]", "—", "12.00"), ("code (OOD)", "20.50 ± 0.71 (n=2)", "22.00")]


def test_tokenizers_compare_by_their_token_count_not_their_name(tmp_path, capsys):
    gpt2 = {"wikitext2": {"tokenizer": "gpt2"}}
    write_run(tmp_path, "0", ppl={"wikitext2": 29.0}, model="gpt2", dataset="wikitext2", proto=gpt2)
    write_run(tmp_path, "1", ppl={"wikitext2": 22.0}, model="gpt2-medium", dataset="wikitext2",
              proto={"wikitext2": {"tokenizer": "/models/gpt2-medium"}})  # same BPE: same count
    _, out, _ = report_text([tmp_path], "--rows", "model", capsys=capsys)
    assert list(md_tables(out)[0][0]) == ["model", "bits", "wikitext2 (ID)"]
    write_run(tmp_path, "2", ppl={"wikitext2": 40.0}, model="other", dataset="wikitext2",
              proto={"wikitext2": {"tokenizer": "/models/other", "tokens_in_split": 300000}})
    _, out, _ = report_text([tmp_path], "--rows", "model", capsys=capsys)
    assert list(md_tables(out)[0][0])[2:] == ["wikitext2 (ID) [tokenizer gpt2]", "wikitext2 (ID) [tokenizer other]"]


def test_reference_rows_sit_beside_ours_and_differing_protocols_are_footnoted(tmp_path, capsys):
    write_run(tmp_path, "0_fp", ppl={"prose": 10.0, "code": 20.0}, proto={"prose": {"stride": 32}})
    write_run(tmp_path, "1_fp", ppl={"prose": 11.0, "code": 21.0}, seed=1)
    write_run(tmp_path, "2_ptq", "ptq", "w8a8", {"prose": 12.0, "code": 22.0})
    ref = tmp_path / "paper.yaml"
    ref.write_text("""\
title: Paper T3   # shown as the source
source: https://example.org/paper.pdf
protocol: {context: 64, stride: 64, level: word}
numbers:
  - {method: fp, bits: fp, model: tiny, set: prose, ppl: 9.5}
  - {method: fp, bits: fp, model: tiny, set: code, ppl: 19.5, protocol: {level: token}}
  - {method: ptq, bits: w8a8, model: tiny, set: code, ppl: 25.0, protocol: {level: token, context: 1024}}
  - {method: fp, bits: fp, model: gpt2-xl, set: prose, ppl: 1.0}
  - {method: fp, bits: fp, model: tiny, set: lambada, ppl: 1.0}
""")
    code, out, _ = report_text([tmp_path / "0_fp", tmp_path / "1_fp", tmp_path / "2_ptq"], "--reference", str(ref),
                               capsys=capsys)
    assert code == 0
    (table,) = md_tables(out)
    assert [r["method"] for r in table] == ["fp", "fp (ref: Paper T3)", "ptq", "ptq (ref: Paper T3)"]
    ref_fp, ref_ptq = table[1], table[3]
    # stride 64 like the reference: its prose number goes there, flagged only for level
    assert ref_fp["prose (ID) [stride 64]"] == "9.50 [1]" and ref_fp["prose (ID) [stride 32]"] == "—"
    assert ref_fp["code (OOD)"] == "19.50" and ref_ptq["code (OOD)"] == "25.00 [2]"
    assert "- [1] Paper T3: protocol differs from ours: level word (ours token)" in out
    assert "- [2] Paper T3: protocol differs from ours: ctx 1024 (ours 64)" in out
    assert "ref: Paper T3 <https://example.org/paper.pdf>; their protocol: context 64, stride 64, level word" in out
    assert "Paper T3: 2 of 5 numbers match no table" in out


def test_bad_reference_file_is_a_usage_error(tmp_path, capsys):
    write_run(tmp_path, "0", ppl={"prose": 10.0})
    ref = tmp_path / "r.yaml"
    ref.write_text("title: x\nnumbers:\n  - {method: fp, set: prose, ppl: high}\n")
    code, _, err = report_text([tmp_path], "--reference", str(ref), capsys=capsys)
    assert code == 2 and "numbers[0]: 'ppl' must be a number, got 'high'" in err


def test_cli_exit_codes(tmp_path, capsys):
    code, out, err = report_text([tmp_path / "nope"], capsys=capsys)
    assert code == 2 and "no such file or directory" in err and str(tmp_path / "nope") in err and not out
    (tmp_path / "empty").mkdir()
    code, _, err = report_text([tmp_path / "empty"], capsys=capsys)
    assert code == 1 and "no results.json under" in err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.json").write_text("[1, 2]")
    code, out, err = report_text([tmp_path / "bad"], capsys=capsys)
    assert code == 1 and "unreadable" in out and "not a quadapter results.json" in out and "no table" in err
    d = write_run(tmp_path / "ok", "run", ppl={"prose": 10.0})
    code, out, _ = report_text([d / "results.json"], capsys=capsys)  # a results.json file as the path
    assert code == 0 and md_tables(out)[0][0]["prose (ID)"] == "10.00"
    code, out, err = report_text([d], "--metric", "acc", capsys=capsys)
    assert code == 1 and "no run has a test/<set>/acc value" in err
    code, out, _ = report_text([d], "--precision", "4", capsys=capsys)
    assert md_tables(out)[0][0]["prose (ID)"] == "10.0000"



def test_a_reader_that_stops_early_is_not_an_error(sweep, tmp_path):
    # `quadapter-report SWEEP | head -1`: the pipe closes before the table is written
    read_end, write_end = os.pipe()
    os.close(read_end)
    proc = subprocess.run([sys.executable, "-m", "quadapter.report", str(sweep)], stdout=write_end,
                          stderr=subprocess.PIPE, text=True, timeout=120)
    os.close(write_end)
    assert proc.returncode == 0 and "Error" not in proc.stderr, proc.stderr

def curve(steps, train, prose, code):
    return [{"step": s} | ({"train/ppl": t} if t else {}) | {"val/prose/ppl": p, "val/code/ppl": c}
            for s, t, p, c in zip(steps, train, prose, code, strict=True)]


def test_plot_has_a_panel_per_set_and_train_and_heldout_lines_per_method(tmp_path, capsys):
    write_run(tmp_path, "0_fp", ppl={"prose": 10.0, "code": 20.0})
    write_run(tmp_path, "1_qat", "qat", "w8a3", {"prose": 12.0, "code": 22.0},
              curves=curve([0, 2, 4], [None, 50.0, 40.0], [60.0, 55.0, 52.0], [30.0, 29.0, 31.0]))
    run = write_run(tmp_path, "2_quadapter", "quadapter", "w8a3", status="running", adapter="quadapter")
    (run / "csv").mkdir()  # interrupted: no curves in results.json, only the CSV log
    (run / "csv" / "metrics.csv").write_text(
        "phase1/block0/l2_after,step,train/ppl,val/code/ppl,val/prose/ppl\n0.1,0,,,\n,0,,33.0,61.0\n"
        ",2,58.0,32.5,59.0\n")
    fig = plot_curves(load_runs([tmp_path]).runs, tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [ax.get_title() for ax in fig.axes] == ["prose (in-distribution)", "code (out-of-distribution)"]
    for ax, s in zip(fig.axes, ["prose", "code"], strict=True):
        lines = {line.get_label(): line for line in ax.get_lines()}
        assert set(lines) == {"qat held-out", "qat train", "quadapter (running) held-out",
                              "quadapter (running) train"}
        assert lines["qat held-out"].get_color() == lines["qat train"].get_color() != \
            lines["quadapter (running) held-out"].get_color()
        assert lines["qat train"].get_linestyle() == "--" and lines["qat held-out"].get_linestyle() == "-"
        assert list(lines["qat train"].get_xdata()) == [2, 4]
        assert list(lines["quadapter (running) held-out"].get_ydata()) == ([61.0, 59.0] if s == "prose"
                                                                           else [33.0, 32.5])
    code, _, err = report_text([tmp_path], "--plot", str(tmp_path / "out" / "p.png"), capsys=capsys)
    assert code == 0 and (tmp_path / "out" / "p.png").stat().st_size > 10_000 and "curves:" in err


def test_plot_labels_rows_of_one_method_by_run_name_and_marks_stage_boundaries(tmp_path):
    """Two schedules of method=progressive at the same bits are two curves, each with its stages."""
    for name, starts in (("direct", [0]), ("progressive_stage1", [0, 2, 4])):
        run = write_run(tmp_path, name, "progressive", "wbin", {"prose": 10.0, "code": 20.0},
                        curves=curve([0, 2, 4, 6], [None, 5.0, 4.0, 3.0], [6.0, 5.5, 5.2, 5.0], [3, 2, 2, 2]))
        res = json.loads((run / "results.json").read_text())
        res["run_name"] = f"{name}-wbin-tiny-prose"
        res["training"]["stages"] = [{"stage": k, "start_step": s} for k, s in enumerate(starts)]
        (run / "results.json").write_text(json.dumps(res))
    fig = plot_curves(load_runs([tmp_path]).runs)
    for ax in fig.axes:
        labelled = {line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")}
        assert labelled == {f"{n}-wbin-tiny-prose {k}" for n in ("direct", "progressive_stage1")
                            for k in ("held-out", "train")}
        vertical = [line for line in ax.get_lines() if line.get_linestyle() == ":"]
        assert sorted(line.get_xdata()[0] for line in vertical) == [2, 4]  # stage starts after step 0
        legend = {t.get_text() for t in ax.get_legend().get_texts()}
        assert legend == labelled


def test_plot_without_any_curves_writes_nothing(tmp_path):
    write_run(tmp_path, "0_fp", ppl={"prose": 10.0})
    assert plot_curves(load_runs([tmp_path]).runs, tmp_path / "c.png") is None
    assert not (tmp_path / "c.png").exists()


def test_metrics_csv_merges_rows_per_step_later_rows_win(tmp_path):
    f = tmp_path / "m.csv"
    f.write_text("step,train/ppl,val/prose/ppl,test/prose/ppl\n2,5.0,,\n2,,7.0,\n2,4.0,,\n4,,,9.0\n")
    assert read_metrics_csv(f) == [{"step": 2, "train/ppl": 4.0, "val/prose/ppl": 7.0}]
    assert read_metrics_csv(tmp_path / "absent.csv") == []


def test_sweep_callback_writes_the_default_table_and_curves_even_with_failed_runs(tmp_path, capsys):
    write_run(tmp_path, "0_fp", ppl={"prose": 10.0, "code": 20.0})
    write_run(tmp_path, "1_qat", "qat", "w8a3", {"prose": 12.0, "code": 22.0},
              curves=curve([0, 2], [None, 50.0], [60.0, 55.0], [30.0, 29.0]))
    write_run(tmp_path, "2_quadapter", "quadapter", "w8a3", status="failed", error="ModelError: x",
              adapter="quadapter")
    SweepReport().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    out = capsys.readouterr().out
    table = (tmp_path / "comparison.md").read_text()
    assert table.strip() in out and f"table: {tmp_path / 'comparison.md'}" in out
    assert "| qat | w8a3 | 12.00 | 22.00 |" in table and "| quadapter | w8a3 | failed | failed |" in table
    assert "- failed: 2_quadapter: ModelError: x" in table
    assert (tmp_path / "curves.png").stat().st_size > 10_000


def test_report_api_matches_the_cli(sweep):
    report = build_report(load_runs([sweep]), lay=make_layout(["method"], ["set"], ["bits"]))
    assert [t.split for t in report.tables] == [[("bits", "w8a3")], [("bits", "w4a4")]]
    assert render(report).startswith("### bits: w8a3\n\n| method | bits | prose (ID) | code (OOD) |")


def test_a_sweep_where_every_run_failed_still_gets_one_table_per_bit_width(tmp_path, capsys):
    write_run(tmp_path, "0_fp", status="failed", error="ConfigError: a", config=config())
    write_run(tmp_path, "1_ptq", "ptq", "w8a3", status="failed", error="ConfigError: b", config=config())
    code, out, _ = report_text([tmp_path], capsys=capsys)
    assert code == 0 and md_tables(out) == [[
        {"method": "fp", "bits": "fp", "prose (ID)": "failed", "code (OOD)": "failed"},
        {"method": "ptq", "bits": "w8a3", "prose (ID)": "failed", "code (OOD)": "failed"}]]


def test_rows_group_by_their_first_field_in_run_order(tmp_path, capsys):
    write_run(tmp_path, "0", "qat", "w8a3", {"prose": 1.0}, seed=0)
    write_run(tmp_path, "1", "ptq", "w8a3", {"prose": 2.0}, seed=0)
    write_run(tmp_path, "2", "qat", "w8a3", {"prose": 3.0}, seed=1)
    write_run(tmp_path, "3", ppl={"prose": 4.0}, seed=1)
    _, out, _ = report_text([tmp_path], "--rows", "method,seed", capsys=capsys)
    assert [(r["method"], r["seed"], r["prose (ID)"]) for r in md_tables(out)[0]] == [
        ("fp", "1", "4.00"), ("qat", "0", "1.00"), ("qat", "1", "3.00"), ("ptq", "0", "2.00")]


def test_a_report_bug_is_logged_and_does_not_fail_the_finished_sweep(tmp_path, monkeypatch, caplog):
    import quadapter.report.callback as callback

    write_run(tmp_path, "0_fp", ppl={"prose": 10.0})
    monkeypatch.setattr(callback, "build_report", lambda loaded: 1 / 0)
    SweepReport().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    assert "could not write the report of sweep" in caplog.text and "ZeroDivisionError" in caplog.text


def test_runs_of_a_row_that_differ_in_model_or_quantizer_get_rows_of_their_own(tmp_path, capsys):
    write_run(tmp_path, "0", "ptq", "w8a3", {"prose": 300.0}, model="proxy", quantizer="minmax")
    write_run(tmp_path, "1", "ptq", "w8a3", {"prose": 9000.0}, model="proxy+outliers", quantizer="minmax")
    write_run(tmp_path, "2", "qat", "w8a3", {"prose": 200.0}, model="proxy", quantizer="learned")
    write_run(tmp_path, "3", "qat", "w8a3", {"prose": 210.0}, model="proxy", quantizer="learned", seed=1)
    code, out, _ = report_text([tmp_path], capsys=capsys)
    rows = [(r["method"], r["model"], r["prose (ID)"]) for r in md_tables(out)[0]]
    # a model with and without outlier channels is never averaged; seeds are (n=2); quantizer is
    # constant within each method here, so it gets no column
    assert code == 0 and "quantizer" not in md_tables(out)[0][0]
    assert rows == [("ptq", "proxy", "300.00"), ("ptq", "proxy+outliers", "9000.00"),
                    ("qat", "proxy", "205.00 ± 7.07 (n=2)")]
