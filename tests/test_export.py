"""quadapter-export: QDQ runtime form equal to the fake-quantized model, ONNX files that onnx's checker
and onnxruntime accept and that score what PyTorch scores, and clear refusals."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from conftest import CONF, SMALL_OVERRIDES, glue_cfg, needs_shared_data
from hydra import compose, initialize_config_dir
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from quadapter.export import ExportError, export_run
from quadapter.export.qdq import QDQLayer, to_qdq
from quadapter.models.sites import quant_sites
from quadapter.quant import QuantizerConfig, QuantSim

onnx = pytest.importorskip("onnx", reason="the export extra is not installed: pip install -e '.[export]'")
pytest.importorskip("onnxruntime", reason="the export extra is not installed: pip install -e '.[export]'")
pytest.importorskip("onnxscript", reason="the export extra is not installed: pip install -e '.[export]'")

from quadapter.export.onnx_file import export_onnx  # noqa: E402
from quadapter.export.runtime import RuntimeModel  # noqa: E402


def tiny(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if family == "gpt2":  # HF Conv1D layers: weight [in, out]
        return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=2, n_positions=64, vocab_size=97,
                                          bos_token_id=0, eos_token_id=0)).eval()
    return LlamaForCausalLM(LlamaConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=128,
                                        num_attention_heads=4, num_key_value_heads=2, vocab_size=97,
                                        max_position_embeddings=64, bos_token_id=0, eos_token_id=0,
                                        pad_token_id=0)).eval()


GRIDS = {  # name: (weight config, act config, extra sites)
    "w8a8": (QuantizerConfig(8, True, "per_channel"), QuantizerConfig(8), ()),
    "w4g32": (QuantizerConfig(4, False, "per_group", group_size=32), None, ()),
    "w4a4 (clip in float)": (QuantizerConfig(4, True, "per_tensor"), QuantizerConfig(4, True), ()),
    "w8a16 (16-bit codes)": (QuantizerConfig(8, False, "per_channel"), QuantizerConfig(16), ()),
    "w6a6 residual and lm_head": (QuantizerConfig(6, True, "per_channel"), QuantizerConfig(6), ("residual", "lm_head")),
}


def quantized(family: str, grid: str) -> tuple[torch.nn.Module, torch.Tensor]:
    model = tiny(family)
    weight, act, extra = GRIDS[grid]
    names = [*(["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"] if family == "gpt2" else
               ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]), *extra]
    sim = QuantSim(model, *quant_sites(model, names), weight=weight, act=act)
    ids = torch.randint(0, 97, (4, 32), generator=torch.Generator().manual_seed(1))
    sim.calibrate([ids], progress=False)
    return model, ids


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("grid", [pytest.param(g, marks=pytest.mark.slow) if g.startswith(("w8a16", "w6a6")) else g
                                  for g in GRIDS])
def test_runtime_form_computes_exactly_what_the_fake_quantized_model_did_and_exports(family, grid, tmp_path):
    import copy

    model, ids = quantized(family, grid)
    with torch.no_grad():
        expected = model(ids).logits
        runtime = copy.deepcopy(model)
        counts = to_qdq(runtime)
        torch.testing.assert_close(runtime(ids).logits, expected, rtol=0, atol=0)  # codes dequantize bit for bit
    written = export_onnx(runtime, {"input_ids": ids[:2, :16]}, tmp_path / "m.onnx", 64)
    assert written["checker"] == "passed"
    # q/k/v (and gate/up) read one input with one calibrated range: the exporter's CSE keeps one pair for them
    assert written["QuantizeLinear"] <= counts["activations"]
    assert (written["QuantizeLinear"] > 0) == (counts["activations"] > 0)
    assert written["DequantizeLinear"] == written["QuantizeLinear"] + counts["weights"]
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    layers = [f"model.{n}." for n, m in runtime.named_modules() if isinstance(m, QDQLayer)]
    shipped = {i.name: i.data_type for i in graph.initializer if i.name.startswith(tuple(layers))}
    assert not [n for n, t in shipped.items() if t == onnx.TensorProto.FLOAT and n.endswith("weight")]
    codes = [n for n in shipped if n.endswith("codes")]  # quantized layers ship integer codes, no float weight
    assert len(codes) == counts["weights"] and all(shipped[n] != onnx.TensorProto.FLOAT for n in codes)
    ort = RuntimeModel(tmp_path / "m.onnx")
    for batch in (ids, ids[:1, :7]):  # dynamic batch and sequence
        with torch.no_grad():
            want = model(batch).logits
        got = ort(batch).logits
        assert got.shape == want.shape
        assert (got - want).abs().mean() < 1e-3 and (got.argmax(-1) == want.argmax(-1)).float().mean() > 0.95


@pytest.mark.parametrize("granularity, reason", [
    ("per_token", r"per_token ranges are dynamic.*DynamicQuantizeLinear is per tensor"),
    ("per_channel", r"per_channel activation ranges run along the matmul's reduction axis")])
def test_activation_ranges_onnx_cannot_express_are_refused_with_the_reason(granularity, reason):
    model = tiny("llama")
    sim = QuantSim(model, *quant_sites(model, None), weight=QuantizerConfig(8, True, "per_channel"),
                   act=QuantizerConfig(8, granularity=granularity))
    sim.calibrate([torch.zeros(1, 4, dtype=torch.long)], progress=False)
    with pytest.raises(ExportError, match=f"{reason}.*quantizer.act.granularity=per_tensor"):
        to_qdq(model)


def make(*overrides: str, model: tuple[str, ...] = tuple(SMALL_OVERRIDES)):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=[*model, "eval.max_tokens=2000", "logger=csv",
                                            "trainer.enable_progress_bar=false", "quantizer.calibration.blocks=8",
                                            *overrides])


QUICK_METHODS = {
    "ptq": ["method=ptq", "method.save_quantized=true"],
    "quadapter": ["method=quadapter", "bits=w8a4", "method.blockwise.steps=5", "method.e2e.steps=2",
                  "method.e2e.batch_size=2", "trainer.val_check_interval=2", "eval.val_max_tokens=256",
                  "quantizer=learned", "method.learn_ranges=true"],
}
SLOW_METHODS = {
    "smoothquant": ["compare=smoothquant", "method.save_quantized=true"],
    "qat": ["method=qat", "bits=w4a8", "method.train.steps=2", "method.train.batch_size=2",
            "method.train.warmup_steps=1", "trainer.val_check_interval=2", "eval.val_max_tokens=256",
            "method.save_quantized=true"],
    "gptq": ["method=gptq", "bits=w3", "quantizer.weight.granularity=per_group", "quantizer.weight.group_size=32",
             "method.save_quantized=true"],
    "blockptq": ["method=blockptq", "bits=w2", "method.steps=2", "method.learn=[rounding]"],
}


def _run_and_export(method, overrides, small_model_dir, tmp_path):
    from quadapter.runner import run

    results = run(make(*overrides, f"paths.cache_dir={small_model_dir.parents[1]}"), tmp_path / method)
    assert results["status"] == "completed"
    report = export_run(tmp_path / method, tokens=2000)  # the run scored these tokens (eval.max_tokens=2000)
    check = json.loads((tmp_path / method / "export" / "check.json").read_text())
    assert check == json.loads(json.dumps(report))
    assert check["passed"] and check["onnx"]["checker"] == "passed"
    scores = check["check"]["scores"]
    assert scores["differences"]["ppl"] <= 1e-3
    assert scores["onnxruntime"]["scored_tokens"] == results["protocol"]["prose"]["scored_tokens"]
    # the model rebuilt from the saved checkpoint and encodings is the one the run scored
    assert scores["pytorch_fake_quant"]["ppl"] == pytest.approx(results["metrics"]["test/prose/ppl"], rel=1e-6)
    assert check["check"]["data"]["set"] == "prose"
    encodings = json.loads((tmp_path / method / "export" / "quantizer_encodings.json").read_text())
    assert check["onnx"]["DequantizeLinear"] == len(encodings)  # a DQ per quantizer: weights and activations
    return results, check


@pytest.mark.parametrize("method", list(QUICK_METHODS))
def test_a_completed_run_exports_and_onnxruntime_scores_what_pytorch_scores(method, small_model_dir, tmp_path):
    results, check = _run_and_export(method, QUICK_METHODS[method], small_model_dir, tmp_path)
    if method == "quadapter":  # the folded model: no scales left, the grids learned
        assert results["quadapter"]["folded"] and check["saved"].endswith("folded")


@pytest.mark.slow
@pytest.mark.parametrize("method", list(SLOW_METHODS))
def test_every_quantizing_method_exports(method, small_model_dir, tmp_path):
    _run_and_export(method, SLOW_METHODS[method], small_model_dir, tmp_path)


def test_exports_of_runs_with_nothing_to_export_are_refused_naming_the_fix(small_model_dir, tmp_path):
    from quadapter.export.cli import main
    from quadapter.runner import run

    cache = f"paths.cache_dir={small_model_dir.parents[1]}"
    with pytest.raises(ExportError, match="is not a directory: pass a run dir"):
        export_run(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match=r"results.json is missing: pass the dir of a quadapter run"):
        export_run(tmp_path / "empty")
    run(make("method=ptq", cache), tmp_path / "unsaved")
    with pytest.raises(ExportError, match=r"saved no quantized model .*re-run its command with "
                                          r"method.save_quantized=true"):
        export_run(tmp_path / "unsaved")
    results = json.loads((tmp_path / "unsaved" / "results.json").read_text())
    (tmp_path / "unsaved" / "results.json").write_text(json.dumps({**results, "status": "interrupted"}))
    with pytest.raises(ExportError, match=r"is a interrupted run, not a completed one: re-run its command"):
        export_run(tmp_path / "unsaved")
    (tmp_path / "unsaved" / "results.json").write_text(json.dumps({**results, "method": "fp", "bits": "fp"}))
    with pytest.raises(ExportError, match=r"method=fp run at full precision: it quantized nothing"):
        export_run(tmp_path / "unsaved")
    run(make("method=ptq", "method.save_quantized=true", cache), tmp_path / "saved")
    encodings = tmp_path / "saved" / "quantized" / "quantizer_encodings.json"
    encodings.write_text("{not json")
    with pytest.raises(ExportError, match=r"quantizer_encodings.json: unreadable encodings"):
        export_run(tmp_path / "saved")
    assert main([str(tmp_path / "saved")]) == 2  # the CLI prints the one-line message, no traceback


def test_the_cli_writes_the_file_and_prints_the_check(small_model_dir, tmp_path, capsys):
    from quadapter.export.cli import main
    from quadapter.runner import run

    run(make("method=ptq", "method.save_quantized=true", "bits=w4a8",
             f"paths.cache_dir={small_model_dir.parents[1]}"), tmp_path / "run")
    assert main([str(tmp_path / "run"), "--tokens", "256", "--set", "code"]) == 0
    out = capsys.readouterr().out
    assert "export/model.onnx" in out and "checker passed" in out and "check passed" in out
    check = json.loads((tmp_path / "run" / "export" / "check.json").read_text())
    assert check["check"]["data"] == {"set": "code", "split": "test", "tokens": 256, "context": 64, "stride": 64,
                                      "batch_size": 8}
    assert main([str(tmp_path / "run"), "--set", "wikitext"]) == 2
    assert "--set wikitext: the run scored prose, code" in capsys.readouterr().err


def test_the_qdq_graph_names_one_operator_pair_per_activation_site(tmp_path):
    model, ids = quantized("gpt2", "w8a8")
    to_qdq(model)
    export_onnx(model, {"input_ids": ids[:1, :8]}, tmp_path / "m.onnx", 64)
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    ops = Counter(n.op_type for n in graph.node)
    assert ops["QuantizeLinear"] == 8 and ops["DequantizeLinear"] == 16  # 2 blocks x 4 layers: input + weight
    types = {i.name: i.data_type for i in graph.initializer}
    assert sum(t == onnx.TensorProto.INT8 for t in types.values()) >= 8  # symmetric per-channel weight codes
    assert any(t == onnx.TensorProto.UINT8 for t in types.values())  # activation zero points (deduplicated)


@pytest.mark.slow
def test_a_real_smollm2_ptq_run_exports_and_onnxruntime_agrees(tmp_path):
    from test_llama_models import GGUF_FILE, SMOLLM2

    from quadapter.models import gguf
    from quadapter.runner import run

    if GGUF_FILE is None:
        pytest.skip(f"the SmolLM2 GGUF package is not installed ({gguf.install_command(SMOLLM2)})")
    # W4 with a range per 64 input channels (weight-only): the per-group codes on a real Llama
    results = run(make("method=ptq", "bits=w4", "quantizer=minmax_g64", "method.save_quantized=true",
                       "eval.context=128", "eval.max_tokens=512", "quantizer.calibration.blocks=4",
                       model=("model=smollm2-135m",)), tmp_path / "ptq")
    report = export_run(tmp_path / "ptq", tokens=512)
    assert report["passed"] and report["onnx"]["DequantizeLinear"] == 210  # 30 blocks x 7 linears
    assert report["check"]["scores"]["pytorch_fake_quant"]["ppl"] == pytest.approx(
        results["metrics"]["test/prose/ppl"], rel=1e-6)
    assert report["check"]["logits"]["argmax_agreement"] > 0.99


def test_the_noise_floor_perturbs_every_activation_quantizer_input_and_only_while_asked():
    from quadapter.export.check import float_noise

    model, ids = quantized("llama", "w8a8")
    with torch.no_grad():
        clean = model(ids).logits
        with float_noise(model, 0.0) as sites:
            assert sites == 14  # 2 blocks x 7 linears' inputs
            torch.testing.assert_close(model(ids).logits, clean, rtol=0, atol=0)
        with float_noise(model, 1e-3):
            assert not torch.equal(model(ids).logits, clean)
        torch.testing.assert_close(model(ids).logits, clean, rtol=0, atol=0)  # hooks gone


@needs_shared_data
def test_a_glue_classifier_exports_with_its_tokenizer_inputs_and_scores_the_same_dev_metrics(tiny_bert_dir, tmp_path):
    from quadapter.runner import run

    results = run(glue_cfg(tiny_bert_dir, "method=ptq", "method.save_quantized=true", "quantizer.calibration.blocks=8"),
                  tmp_path / "glue")
    report = export_run(tmp_path / "glue", examples=64)
    assert report["onnx"]["inputs"] == ["input_ids", "token_type_ids", "attention_mask"]
    check = report["check"]
    assert report["passed"] and check["data"] == {"set": "glue_mrpc", "split": "dev", "examples": 64}
    assert set(check["scores"]["onnxruntime"]) == {"accuracy", "f1"} and check["logits"]["shape"][1] == 2
    assert check["scores"]["differences"]["accuracy"] <= 0.5
    assert results["metrics"]["test/glue_mrpc/accuracy"] > 0  # a scored run
