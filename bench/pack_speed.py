"""Packed trials against the same trials one after another: K trials of the study's configuration (seeds 0..K-1),
each S steps, first one by one in this process (`train`), then as one pack (`train_pack`); samples/s of training
(optimizer steps x rows / seconds spent in them) and of the whole (loading and evaluating included).

With --count-flops, the FLOPs of a training step are counted (torch.utils.flop_counter: every matmul and
attention of forward and backward, on the run's real first batches) and each rate is also given in TFLOP/s and,
on a GPU with --peak-tflops, as a share of that peak.

    python bench/pack_speed.py --model $(../shared/tools/offline-models minilm-l6) \
        --data ../shared/data/ag_news/train.csv --trials 4 --steps 60 --precision bf16
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BATCH = 16  # configs/seed.yaml's train.batch_size


def trial_configs(args, out: str, name: str) -> list:
    from loralab import config

    common = [f"model.name={args.model}", f"data.train={args.data}", f"train.steps={args.steps}",
              f"train.eval_every={args.steps}", f"train.precision={args.precision}", f"output.dir={out}",
              *args.overrides]  # fmt: skip
    return [
        config.load(ROOT / "configs" / "seed.yaml", [*common, f"train.seed={seed}", f"output.name={name}-{seed}"])
        for seed in range(args.trials)
    ]


def counted_flops_per_row(cfg, batches: int = 8) -> float:
    """Forward and backward FLOPs per training row, counted over the run's first batches."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from loralab import hardware
    from loralab.encoding import collate, training_batches
    from loralab.training.train import prepare

    prep = prepare(cfg, log=lambda *_: None)
    device = hardware.device()
    model = prep.model.to(device).train()
    order = training_batches(prep.train_set.lengths, cfg.train.batch_size, cfg.train.seed, 0)[:batches]
    rows = 0
    with FlopCounterMode(display=False) as counter:
        for indices in order:
            batch = collate(prep.tokenizer, prep.train_set, indices).to(device)
            labels = batch.pop("labels")
            torch.nn.functional.cross_entropy(model(**batch).logits.float(), labels).backward()
            rows += len(indices)
    return counter.get_total_flops() / rows


def train_seconds(summary) -> float:
    """The seconds a run spent in its optimizer steps (a packed trial: the pack's steps it was in)."""
    return summary.steps_done * BATCH / summary.train_samples_per_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--overrides", nargs="*", default=[], help="config overrides for every trial")
    parser.add_argument("--count-flops", action="store_true")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak, for the share of it")
    parser.add_argument("--only", choices=["alone", "pack"], help="measure one side")
    parser.add_argument("--runs", help="keep the trials' run directories here (default: a temporary folder)")
    args = parser.parse_args()
    from loralab import hardware
    from loralab.training.pack import train_pack
    from loralab.training.train import train

    result = {"machine": hardware.machine_line(), "trials": args.trials, "steps": args.steps}
    rows = args.trials * args.steps * BATCH
    with tempfile.TemporaryDirectory() as temporary:
        out = args.runs or temporary
        if args.only != "pack":
            started = time.perf_counter()
            summaries = [train(cfg) for cfg in trial_configs(args, out, "alone")]
            wall = time.perf_counter() - started
            alone_train_s = sum(train_seconds(s) for s in summaries)
            result["alone"] = {"train_samples_per_s": rows / alone_train_s, "whole_samples_per_s": rows / wall,
                               "wall_s": wall}  # fmt: skip
        if args.only != "alone":
            started = time.perf_counter()
            summaries = train_pack(trial_configs(args, out, "pack"), [False] * args.trials, log=lambda *_: None)
            wall = time.perf_counter() - started
            failed = [str(s) for s in summaries if isinstance(s, Exception)]
            if failed:
                raise SystemExit(f"pack trials failed: {failed}")
            pack_train_s = max(train_seconds(s) for s in summaries)  # every trial ran the pack's every step
            result["pack"] = {"train_samples_per_s": rows / pack_train_s, "whole_samples_per_s": rows / wall,
                              "wall_s": wall}  # fmt: skip
        if "alone" in result and "pack" in result:
            result["ratio_train"] = result["pack"]["train_samples_per_s"] / result["alone"]["train_samples_per_s"]
            result["ratio_whole"] = result["pack"]["whole_samples_per_s"] / result["alone"]["whole_samples_per_s"]
        if args.count_flops:
            per_row = counted_flops_per_row(trial_configs(args, out, "flops")[0])
            result["gflop_per_row"] = per_row / 1e9
            for side in ("alone", "pack"):
                if side in result:
                    tflops = result[side]["train_samples_per_s"] * per_row / 1e12
                    result[side]["tflop_per_s"] = tflops
                    if args.peak_tflops:
                        result[side]["share_of_peak"] = tflops / args.peak_tflops
    print(json.dumps(result))


if __name__ == "__main__":
    main()
