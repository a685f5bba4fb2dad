"""Inference throughput: `loralab predict` against the seed study's recipe, same adapter and rows, one run.

The study's recipe: the PEFT model (adapter not merged) under `Trainer.predict`, over a dataset
tokenised with `padding=True` inside `datasets.map` (each 1,000-row map batch padded to its longest
row), batch 64.

    python bench/eval_speed.py RUN --data ../shared/data/ag_news/train.csv --rows 1000 [--bf16]

RUN is a loralab run directory (its best adapter is used). Both timings run end to end: load the
model, tokenise, classify. Prints rows/s of each and the ratio.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="loralab run directory")
    parser.add_argument("--data", required=True, help="CSV with a text column")
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--bf16", action="store_true", help="also time loralab predict with bf16 autocast")
    args = parser.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

    import torch
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    from loralab.data import load_texts
    from loralab.modeling.model import load_trained
    from loralab.serving.inference import InferenceOptions, PredictOptions, predict_file

    texts = load_texts(args.data, "text")[0][: args.rows]
    with tempfile.TemporaryDirectory() as workdir:
        subset = Path(workdir) / "rows.csv"
        Dataset.from_dict({"text": texts}).to_csv(subset, index=False)

        def time_predict(precision: str) -> float:
            started = time.perf_counter()
            out = str(Path(workdir) / f"{precision}.csv")
            predict_file(args.run, PredictOptions(str(subset), out), InferenceOptions(precision=precision))
            return len(texts) / (time.perf_counter() - started)

        ours = time_predict("fp32")
        ours_bf16 = time_predict("bf16") if args.bf16 else None

        started = time.perf_counter()
        cfg, tokenizer, model = load_trained(args.run)  # PEFT model, adapter not merged
        dataset = Dataset.from_dict({"text": texts}).map(
            lambda b: tokenizer(b["text"], truncation=True, padding=True), batched=True, remove_columns=["text"]
        )
        trainer = Trainer(
            model=model,
            args=TrainingArguments(
                output_dir=workdir,
                per_device_eval_batch_size=64,
                report_to="none",
                use_cpu=not torch.cuda.is_available(),
            ),
        )
        trainer.predict(dataset)
        theirs = len(texts) / (time.perf_counter() - started)

    print(f"{len(texts)} rows, run {args.run}", file=sys.stderr)
    print(f"loralab predict (fp32)   {ours:8.2f} rows/s")
    if ours_bf16:
        print(f"loralab predict (bf16)   {ours_bf16:8.2f} rows/s")
    print(f"study recipe (fp32)      {theirs:8.2f} rows/s")
    print(f"ratio (fp32)             {ours / theirs:8.2f}x")


if __name__ == "__main__":
    main()
