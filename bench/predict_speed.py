"""`loralab predict` of the same rows five ways: PyTorch with the default precision (auto), fp32 and bf16,
ONNX fp32, ONNX int8; and how close PyTorch fp32 comes to this machine's measured fp32 GEMM rate.

    python bench/predict_speed.py RUN [--rows 2000]

RUN is a finished run whose training data is on this machine; its validation rows (the first --rows of
them) are the rows, so every accuracy is held out. The ONNX exports are written first (not timed, not
checked: this script measures agreement itself). Each way then runs as users run it, the whole
`loralab predict` command in a fresh process, and the script prints one JSON line per way: rows/s,
accuracy, rows answered as PyTorch fp32 answered them, and the exact McNemar p against PyTorch fp32;
then the ratios of rows/s, all measured in this one run. First it names the machine and measures its fp32
GEMM rate (a feed-forward-shaped product of the model's width); last, the roofline: the FLOPs of PyTorch
fp32's forward passes over the rows (counted by torch's FlopCounterMode) per second of those passes alone
(in this process, the model loaded), as a fraction of that GEMM rate.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def predict(source: str, rows_csv: Path, out: Path, extra: list[str]) -> float:
    """Seconds of one whole `loralab predict` command, in a fresh process."""
    command = [sys.executable, "-m", "loralab.cli", "predict", source, "--input", str(rows_csv), "--out", str(out)]
    start = time.perf_counter()
    done = subprocess.run(command + extra, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a finished loralab run directory")
    parser.add_argument("--rows", type=int, default=2000, help="how many of its validation rows (default 2000)")
    args = parser.parse_args()

    from loralab import hardware

    print(hardware.machine_line(), file=sys.stderr)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # the exports load the base: no load report
    from loralab.runs.rundir import RunDir
    from loralab.serving.export import ExportOptions, export_run
    from loralab.serving.inference import validation_rows
    from loralab.stats import mcnemar_exact

    run = RunDir(Path(args.run))
    rows = validation_rows(run, run.read_config())
    texts, labels = rows.texts[: args.rows], rows.labels[: args.rows]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows_csv = tmp / "rows.csv"
        with open(rows_csv, "w", newline="") as handle:
            csv.writer(handle).writerows([["text"], *([t] for t in texts)])
        for quantize in (None, "int8"):
            options = ExportOptions(format="onnx", quantize=quantize, check=False)
            export_run(args.run, str(tmp / f"onnx-{quantize or 'fp32'}"), options)
        ways = {
            "pytorch_auto": (args.run, []),
            "pytorch_fp32": (args.run, ["--precision", "fp32"]),
            "pytorch_bf16": (args.run, ["--precision", "bf16"]),
            "onnx_fp32": (str(tmp / "onnx-fp32"), []),
            "onnx_int8": (str(tmp / "onnx-int8"), []),
        }
        answers = {}
        for way, (source, extra) in ways.items():
            out = tmp / f"{way}.csv"
            seconds = predict(source, rows_csv, out, extra)
            with open(out) as handle:
                answers[way] = [int(row["Label"]) for row in csv.DictReader(handle)]
            results[way] = {"seconds": round(seconds, 1), "rows_per_s": round(len(texts) / seconds, 1)}
    reference = answers["pytorch_fp32"]
    for way, predicted in answers.items():
        right = [p == y for p, y in zip(predicted, labels)]
        right_ref = [p == y for p, y in zip(reference, labels)]
        only_ref = sum(a and not b for a, b in zip(right_ref, right))
        only_this = sum(b and not a for a, b in zip(right_ref, right))
        results[way] |= {
            "accuracy": round(sum(right) / len(right), 4),
            "same_as_pytorch_fp32": sum(a == b for a, b in zip(predicted, reference)),
            "mcnemar_p_vs_pytorch_fp32": round(mcnemar_exact(only_ref, only_this), 4),
        }
        print(json.dumps({"way": way, "rows": len(texts), **results[way]}))
    speed = {way: r["rows_per_s"] for way, r in results.items()}
    print(
        json.dumps(
            {
                "onnx_int8_vs_pytorch_fp32": round(speed["onnx_int8"] / speed["pytorch_fp32"], 2),
                "onnx_int8_vs_pytorch_bf16": round(speed["onnx_int8"] / speed["pytorch_bf16"], 2),
                "onnx_fp32_vs_pytorch_fp32": round(speed["onnx_fp32"] / speed["pytorch_fp32"], 2),
                "pytorch_bf16_vs_pytorch_fp32": round(speed["pytorch_bf16"] / speed["pytorch_fp32"], 2),
                "pytorch_auto_vs_pytorch_fp32": round(speed["pytorch_auto"] / speed["pytorch_fp32"], 2),
            }
        )
    )
    print(json.dumps(roofline(args.run, texts)))


def roofline(run: str, texts: list[str]) -> dict:
    """PyTorch fp32's forward passes over the rows: their FLOPs per second against the fp32 GEMM rate."""
    from torch.utils.flop_counter import FlopCounterMode

    from loralab import hardware
    from loralab.serving.engine import open_engine

    engine = open_engine(run, precision="fp32")
    data = engine.encode(texts, None)
    with FlopCounterMode(display=False) as counter:  # a pass of its own: counting slows it
        engine.logits(data)
    flops = counter.get_total_flops()
    start = time.perf_counter()
    engine.logits(data)
    seconds = time.perf_counter() - start
    peak = hardware.fp32_gemm_peak(engine.model.config.hidden_size)
    return {
        "forward_rows_per_s": round(len(texts) / seconds, 1),
        "gflop_per_s": round(flops / seconds / 1e9, 1),
        "gemm_peak_gflop_per_s": round(peak, 1),
        "fraction_of_peak": round(flops / seconds / 1e9 / peak, 3),
    }


if __name__ == "__main__":
    main()
