"""Peak resident memory of a training run, as `/usr/bin/time -v` reports it for the whole process.

    python bench/memory.py --model $(../shared/tools/offline-models mpnet-base)             # the study's run
    python bench/memory.py --model ... --set "lora.scope=[query,key,value,attention_output,ffn_in,ffn_out]" \
        --set lora.r=6 --set model.head=out_proj                                                  # six scopes

The allocator is part of the figure: run it under another one as the training would run, e.g.
`LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 python bench/memory.py ...` (the environment is
passed to the training process).

Each configuration trains in a fresh process (60 steps of 16 in bf16 and one evaluation of the 640
validation rows, as the issue measured) and prints one JSON line: the configuration, the peak RSS in GiB,
the wall time, and the peak accuracy (the same settings must give the same numbers with or without a
memory change: compare them across commits).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measure(model: str, data: str, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as out:
        command = [
            "/usr/bin/time", "-v", sys.executable, "-m", "loralab.cli", "train", "--config",
            str(ROOT / "configs" / "seed.yaml"), f"model.name={model}", f"data.train={data}", "train.steps=60",
            "train.eval_every=60", "train.precision=bf16", "train.warmup_steps=6", f"output.dir={out}",
            "output.name=memory", *extra,
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(done.stderr[-3000:])
        peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
        wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", done.stderr).group(1)
        summary = json.loads((Path(out) / "memory" / "summary.json").read_text())
    return {"settings": extra, "peak_rss_gib": round(peak_kb / 2**20, 3), "wall": wall, "peak": summary["peak"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder (../shared/tools/offline-models mpnet-base)")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "ag_news" / "train.csv"))
    parser.add_argument("--set", action="append", default=[], help="a config override (repeat)")
    args = parser.parse_args()
    print(json.dumps(measure(args.model, args.data, args.set)))


if __name__ == "__main__":
    main()
