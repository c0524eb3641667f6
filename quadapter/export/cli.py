"""``quadapter-export RUN_DIR``: the run's quantized model as ONNX (QDQ), checked with onnxruntime."""

from __future__ import annotations

import argparse
import logging
import sys

from quadapter.errors import UserError
from quadapter.export import CHECK_EXAMPLES, CHECK_TOKENS, EXPORT_DIR, export_run


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="quadapter-export",
        description="Export a completed run's quantized model to <run dir>/export/model.onnx (QuantizeLinear/"
                    "DequantizeLinear at every quantizer site, integer weight codes), copy its encodings beside "
                    "it, and check it with onnxruntime against the fake-quantized PyTorch model "
                    "(<run dir>/export/check.json). Exit status 1 when the check fails.")
    p.add_argument("run_dir", help="a completed run's dir (results.json, config.yaml and its saved model: "
                                   "folded/ for quadapter, quantized/ with method.save_quantized=true)")
    p.add_argument("--tokens", type=int, default=CHECK_TOKENS,
                   help=f"causal LMs: tokens of the held-out slice the check scores (default {CHECK_TOKENS})")
    p.add_argument("--examples", type=int, default=CHECK_EXAMPLES,
                   help=f"GLUE: dev examples the check scores (default {CHECK_EXAMPLES})")
    p.add_argument("--set", dest="eval_set", default=None,
                   help="held-out set of the run to check on (default: its first, the fine-tuning dataset's)")
    p.add_argument("--no-check", action="store_true", help="write the file without running onnxruntime")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="[%(asctime)s][%(name)s] %(message)s")
    logging.getLogger("quadapter").setLevel(logging.INFO)
    try:
        report = export_run(args.run_dir, args.tokens, args.eval_set, not args.no_check, args.examples)
    except UserError as e:
        print(f"quadapter-export: {e}", file=sys.stderr)
        return 2
    onnx = report["onnx"]
    print(f"{report['run_name']}: {EXPORT_DIR}/{onnx['file']} ({onnx['bytes'] / 2**20:.1f} MiB, opset {onnx['opset']}, "
          f"{onnx['QuantizeLinear']} QuantizeLinear, {onnx['DequantizeLinear']} DequantizeLinear; checker passed)")
    if "check" not in report:
        return 0
    check = report["check"]
    scores, logits, tol = check["scores"], check["logits"], check["tolerance"]
    print(f"on {', '.join(f'{k} {v}' for k, v in check['data'].items())}:")
    for name, (kind, allowed) in ((k, *v.items()) for k, v in tol["scores"].items()):
        print(f"  {name}: PyTorch fake-quant {scores['pytorch_fake_quant'][name]:.4f}, onnxruntime "
              f"{scores['onnxruntime'][name]:.4f} ({kind} difference {scores['differences'][name]:.2e}, "
              f"tolerance {allowed:g})")
    print(f"  logits of the first batch: mean |diff| {logits['mean_abs_diff']:.2e} (tolerance "
          f"{tol['logits_mean_atol']:g}), max |diff| {logits['max_abs_diff']:.2e}, argmax agreement "
          f"{logits['argmax_agreement']:.4f}")
    floor = check["noise_floor"]
    print(f"  noise floor (PyTorch with {floor['relative_noise']:.1e} relative noise at its {floor['sites']} "
          f"activation quantizer inputs): logits mean |diff| {floor['logits_mean_abs_diff']:.2e}, "
          + ", ".join(f"{k} difference {v:.2e}" for k, v in floor["differences"].items()))
    print(f"check {'passed' if check['passed'] else 'FAILED'}: {EXPORT_DIR}/check.json")
    if not check["passed"] and check["within_noise_floor"]:
        print(f"... but within {tol['floor_factor']:g}x the model's noise floor: the quantized network amplifies "
              "float rounding itself, so any two correct implementations of it differ this much (README, "
              "'Exporting to ONNX')")
    return 0 if check["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
