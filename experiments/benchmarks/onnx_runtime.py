"""Latency of an exported quantized model in onnxruntime, side by side with what it came from.

For one completed run (``quadapter-export``'s input: its saved quantized model), four forwards on the
same random ``--batch``×``--seq`` token ids, timed interleaved in one process (median of
``--repeats``): the QDQ ONNX file in onnxruntime (CPU, every graph optimization on), the fp32 ONNX file
of the same saved weights without quantizers, the fake-quantized PyTorch model the check compares
against, and that model in fp32 (PyTorch). Ratios: ORT QDQ / ORT fp32 (what quantized deployment costs
or saves in this runtime) and ORT QDQ / PyTorch fake-quant. Both runtimes get the same threads.

    python experiments/benchmarks/onnx_runtime.py RUN_DIR [--batch 1] [--seq 128] [--repeats 10]
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import tempfile
from pathlib import Path

import torch
from common import interleaved_times  # benchmarks run as scripts, from this folder

from quadapter.export.onnx_file import export_onnx
from quadapter.export.qdq import to_qdq
from quadapter.export.runtime import RuntimeModel
from quadapter.export.saved_run import load_quantized_run
from quadapter.models.arch import for_model
from quadapter.models.loading import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a completed run that saved its quantized model")
    parser.add_argument("--batch", type=int, default=1, help="sequences per forward")
    parser.add_argument("--seq", type=int, default=128, help="tokens per sequence")
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds (the median is printed)")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    threads = torch.get_num_threads()
    run = load_quantized_run(args.run_dir)
    fp32, _ = load_model(str(run.saved_dir), None, "float32", arch=run.cfg.model.get("arch"))
    context = for_model(fp32).context_length(fp32.config)
    ids = torch.randint(0, fp32.config.vocab_size, (args.batch, args.seq), generator=torch.Generator().manual_seed(0))
    example = {"input_ids": ids[:, :16]}
    with tempfile.TemporaryDirectory() as tmp:
        qdq = copy.deepcopy(run.model)
        to_qdq(qdq)
        export_onnx(qdq, example, Path(tmp) / "qdq.onnx", context)
        export_onnx(fp32, example, Path(tmp) / "fp32.onnx", context)
        del qdq
        ort_qdq, ort_fp32 = RuntimeModel(Path(tmp) / "qdq.onnx", threads), RuntimeModel(Path(tmp) / "fp32.onnx", threads)

        def torch_forward(model):
            with torch.inference_mode():
                return model(ids).logits

        steps = {"onnxruntime QDQ": lambda: ort_qdq(ids), "onnxruntime fp32": lambda: ort_fp32(ids),
                 "PyTorch fake-quant": lambda: torch_forward(run.model), "PyTorch fp32": lambda: torch_forward(fp32)}
        times = {name: statistics.median(t) for name, t in interleaved_times(steps, args.repeats).items()}
    tokens = args.batch * args.seq
    print(f"{run.results['run_name']} ({run.results['method']}, {run.results['bits']}), {args.batch}x{args.seq} tokens, "
          f"{threads} threads, median of {args.repeats}:")
    for name, seconds in times.items():
        print(f"  {name:<20} {seconds * 1e3:9.1f} ms  {tokens / seconds:9.0f} tok/s")
    print(f"ratio onnxruntime QDQ / onnxruntime fp32: {times['onnxruntime QDQ'] / times['onnxruntime fp32']:.3f}")
    print(f"ratio onnxruntime QDQ / PyTorch fake-quant: {times['onnxruntime QDQ'] / times['PyTorch fake-quant']:.3f}")


if __name__ == "__main__":
    main()
