"""The device check of the GPU issue, in one command: on a bare machine with nothing downloaded,
build roberta-base's shape with random weights (same compute as the real one) and a byte-level BPE
tokenizer trained on the data, then measure, each in a fresh process:

- training samples/s of loralab and of the seed study's recipe (bench/train_speed.py), bf16 and fp32;
- the study's whole run (1,200 steps, an evaluation every 100, adapters saved), wall time;
- inference rows/s on 7,600 rows (precision auto, length-sorted, as `loralab predict` does), and what
  auto chose on the device;
- `loralab serve` of one, then 8 of the pack's runs under 8 clients: rows/s, latency, device, precision, errors;
- a pack of 8 of the study's trials against the same 8 one after another (bench/pack_speed.py), FLOPs
  counted, as a share of the chip's dense bf16 peak;
- training with train.compile on (CUDA graphs over length buckets);
- a sweep's throughput with K workers on the device against one worker;

and print one JSON summary (also written to OUT/summary.json). Without a GPU it runs the same steps
at a few steps each, so the script itself is tested on CPU: the numbers then mean nothing.

    bash bench/gpu_check.sh                  # what the device call runs
    python bench/gpu_check.py --data ../shared/data/ag_news/train.csv --out /tmp/check --quick
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# NVIDIA's dense bf16 figure for the H200 SXM (989.5 TFLOP/s without sparsity): the share-of-peak denominator.
PEAK_BF16_TFLOPS = 989.5


def build_model(folder: Path, texts: list[str], vocab_size: int) -> Path:
    """roberta-base's config with random weights, and a byte-level BPE tokenizer trained on `texts` with
    `tokenizers`, handed to transformers as the trained object itself: built from vocab.json and merges.txt,
    transformers 5 kept only the 5 special tokens, and every row was 2 tokens (the check's figures before this
    fix measured such rows). The texts' token counts are checked here, so that cannot pass unseen again."""
    import torch
    from tokenizers import ByteLevelBPETokenizer, processors
    from transformers import AutoConfig, AutoModel, PreTrainedTokenizerFast

    backend = ByteLevelBPETokenizer()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    backend.train_from_iterator(texts, vocab_size=vocab_size, special_tokens=specials)
    backend._tokenizer.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend._tokenizer, bos_token="<s>", eos_token="</s>",
                                        sep_token="</s>", cls_token="<s>", unk_token="<unk>", pad_token="<pad>",
                                        mask_token="<mask>", model_max_length=512)  # fmt: skip
    lengths = [len(ids) for ids in tokenizer(texts[:200], truncation=True, max_length=512)["input_ids"]]
    if sum(lengths) / len(lengths) < 10:
        raise SystemExit(f"the check's tokenizer gives {sum(lengths) / len(lengths):.1f} tokens a text: broken")
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    AutoModel.from_config(AutoConfig.from_pretrained(ROOT / "configs" / "models" / "roberta-base")).save_pretrained(
        folder
    )
    return folder


def run(command: list[str], log) -> tuple[str, float]:
    """Run a fresh process; its stdout and wall seconds. A failure is recorded, not raised."""
    started = time.perf_counter()
    out = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    log.write(
        f"$ {' '.join(command)}\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}\nexit {out.returncode}, {wall:.1f}s\n\n"
    )
    log.flush()
    if out.returncode != 0:
        raise RuntimeError(f"{command[:4]} failed with exit {out.returncode}: {out.stderr.strip().splitlines()[-1:]}")
    return out.stdout, wall


def measured(name: str, summary: dict, step, out: Path, skip: list[str]) -> None:
    """Record one measurement and rewrite summary.json at once, so that a call stopped at its time limit still
    brings back every figure measured before; a failing one is reported in the summary and the rest still run.
    A name that starts with one of `skip` is left out."""
    if any(name.startswith(prefix) for prefix in skip):
        return
    started = time.perf_counter()
    try:
        summary[name] = step()
    except Exception as err:  # noqa: BLE001 - one device call must bring back everything it can
        summary[name] = {"error": str(err)}
    summary.setdefault("seconds", {})[name] = round(time.perf_counter() - started, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="labelled CSV (label,text)")
    parser.add_argument("--out", required=True, help="folder for summary.json and check.log")
    parser.add_argument("--quick", action="store_true", help="a few steps of everything (CPU: tests the script)")
    parser.add_argument("--workers", type=int, default=6, help="concurrent sweep workers on the device")
    parser.add_argument("--skip", nargs="*", default=[], help="measurements to leave out (names as in the summary)")
    args = parser.parse_args()
    import torch

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    gpu = torch.cuda.is_available()
    quick = args.quick or not gpu
    steps, study_steps, rows = (4, 4, 64) if quick else (300, 1200, 7600)
    from loralab import hardware

    summary = {
        "device": torch.cuda.get_device_name(0) if gpu else "cpu",
        "machine": hardware.machine_line(),
        "precision_auto": hardware.resolve("auto").record(),
        "versions": {"torch": torch.__version__, "cuda": torch.version.cuda},
        "quick": quick,
    }
    log = open(out / "check.log", "w")
    texts = [line.split(",", 1)[1] for line in Path(args.data).read_text().splitlines()[1:]]
    model = build_model(work / "roberta-base-random", texts, 1000 if quick else 30000)
    py = sys.executable

    def train_speed(side: str, precision: str, compiled: str = "auto"):
        script = [py, str(ROOT / "bench" / "train_speed.py"), "--model", str(model), "--data", args.data]
        options = ["--steps", str(steps), "--precision", precision, "--value-module", "value", "--only", side,
                   "--compile", compiled]  # fmt: skip
        stdout, _ = run(script + options, log)
        return json.loads(stdout.strip().splitlines()[-1])[side]

    def pack():
        script = [py, str(ROOT / "bench" / "pack_speed.py"), "--model", str(model), "--data", args.data,
                  "--trials", "8", "--steps", str(max(2, steps // 3)), "--precision", "bf16", "--count-flops",
                  "--peak-tflops", str(PEAK_BF16_TFLOPS), "--runs", str(work / "pack"),
                  "--overrides", "train.compile=off"]  # fmt: skip
        stdout, _ = run(script, log)
        return json.loads(stdout.strip().splitlines()[-1])

    measured("pack", summary, pack, out, args.skip)

    def serving_one_and_eight():
        runs = sorted(str(p) for p in (work / "pack").glob("pack-*"))[:8]
        seconds, warmup = ("5", "2") if quick else ("15", "5")
        script = [py, str(ROOT / "bench" / "serve_load.py"), *runs, "--clients", "8", "--adapters", "8",
                  "--seconds", seconds, "--warmup", warmup, "--max-batch", "64"]  # fmt: skip
        stdout, _ = run(script, log)
        return [json.loads(line) for line in stdout.strip().splitlines() if line.startswith("{")]

    measured("serve_1_and_8_adapters", summary, serving_one_and_eight, out, args.skip)
    measured("train_loralab_bf16_compile_on_samples_per_s", summary, lambda: train_speed("loralab", "bf16", "on"),
             out, args.skip)  # fmt: skip
    for precision in ("bf16", "fp32"):
        for side in ("loralab", "recipe"):
            measured(
                f"train_{side}_{precision}_samples_per_s",
                summary,
                lambda s=side, p=precision: train_speed(s, p),
                out,
                args.skip,
            )
    for precision in ("bf16", "fp32"):
        ours, theirs = (
            summary.get(f"train_loralab_{precision}_samples_per_s"),
            summary.get(f"train_recipe_{precision}_samples_per_s"),
        )
        if isinstance(ours, float) and isinstance(theirs, float):
            summary[f"train_ratio_{precision}"] = ours / theirs

    def study_run():
        overrides = [f"model.name={model}", f"data.train={args.data}", "train.precision=auto", "train.compile=on",
                     f"train.steps={study_steps}", f"train.eval_every={max(1, study_steps // 12)}",
                     f"output.dir={work / 'runs'}", "output.name=study"]  # fmt: skip
        _, wall = run(["loralab", "train", "--config", str(ROOT / "configs" / "seed.yaml"), *overrides], log)
        saved = json.loads((work / "runs" / "study" / "summary.json").read_text())
        return {
            "process_wall_s": wall,
            "train_wall_s": saved["wall_time_s"],
            "peak_val_accuracy": saved["peak_val_accuracy"],
            "precision": saved["precision"],
            "train_samples_per_s": saved["train_samples_per_s"],
        }

    measured("study_run", summary, study_run, out, args.skip)

    def inference():
        script = f"""
import json, time, torch
from loralab.data import load_texts
from loralab.serving.engine import classify, open_engine
texts = load_texts({args.data!r}, "text")[0][:{rows}]
engine = open_engine({str(work / "runs" / "study")!r})  # precision auto, on the GPU where there is one
classify(engine, texts[:256], None, 64)  # warm-up
if torch.cuda.is_available(): torch.cuda.synchronize()
started = time.perf_counter()
classify(engine, texts, None, 64)
rate = len(texts) / (time.perf_counter() - started)
print(json.dumps({{"rows": len(texts), "rows_per_s": rate, **engine.describe()}}))
"""
        stdout, _ = run([py, "-c", script], log)
        return json.loads(stdout.strip().splitlines()[-1])

    measured("inference", summary, inference, out, args.skip)

    def sweep_throughput():
        trials = args.workers
        spec = {"base": str(ROOT / "configs" / "seed.yaml"), "name": "concurrent",
                "overrides": [f"model.name={model}", f"data.train={args.data}", "train.precision=auto",
                              f"train.steps={steps}", f"train.eval_every={steps}"],
                "groups": {"seeds": {"grid": {"train.seed": list(range(trials))}}}}  # fmt: skip
        results = {}
        for name, extra in (
            ("one_worker", ["--workers", "1"]),
            ("concurrent", ["--per-gpu", str(trials)] if gpu else ["--workers", "2"]),
        ):
            spec["name"] = name
            path = work / f"{name}.json"
            path.write_text(json.dumps(spec))  # JSON is YAML
            _, wall = run(["loralab", "sweep", str(path), "--runs", str(work / "sweeps"), *extra], log)
            results[f"{name}_samples_per_s"] = trials * steps * 16 / wall
        results["ratio"] = results["concurrent_samples_per_s"] / results["one_worker_samples_per_s"]
        return results

    measured("sweep", summary, sweep_throughput, out, args.skip)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
