"""Long texts, truncated against chunked, on a task derived from the shared AG News rows: each story behind a
boilerplate header of about 200 tokens (as e-mails, filings and scraped pages carry), so that at max_length 128
the words that decide the topic sit only past the first window. Trains the quickstart configuration on it
twice (data.long_texts: truncate, then chunk) and prints each peak validation accuracy and the difference;
then counts the AG News rows longer than max_length, where chunking could change anything at all, and trains
AG News itself both ways: the two runs' validation answers compared row for row, with the exact McNemar p.

    python bench/long_texts.py OUT [--model FOLDER] [--steps 300]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

HEADER = (
    "This message and any attachments are confidential and intended solely for the addressee. If you have "
    "received it in error, please notify the sender immediately and delete it from your system. Any views or "
    "opinions expressed are solely those of the author and do not necessarily represent those of the company. "
    "The company accepts no liability for any damage caused by any virus transmitted by this message. "
    "Unauthorised use, disclosure, copying or distribution of this message or any part of it is prohibited. "
    "Please consider the environment before printing this message. Registered office as shown on our website. "
    "Messages sent to or from this address may be monitored and recorded for compliance, security and training "
    "purposes, as the law permits. Nothing in this message constitutes an offer, an acceptance or a binding "
    "commitment unless it is confirmed in writing by an authorised signatory. The recipient should check this "
    "message and any attachments for viruses before opening them."
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--model", default=str(Path.home() / ".cache/offline-models/minilm-l6"))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--data", default="../shared/data/ag_news/train.csv")
    args = parser.parse_args()

    from loralab import config, hardware
    from loralab.modeling.model import load_tokenizer
    from loralab.runs.rundir import RunDir
    from loralab.tasks.base import mcnemar
    from loralab.training.train import train

    print(hardware.machine_line(), file=sys.stderr)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(args.data, newline="") as handle:
        rows = [(row["label"], row["text"]) for row in csv.DictReader(handle)]
    derived = out / "header-first.csv"
    with open(derived, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("label", "text"))
        writer.writerows((label, f"{HEADER} {text}") for label, text in rows)
    tokenizer = load_tokenizer(args.model)
    header_tokens = len(tokenizer(HEADER)["input_ids"])
    if header_tokens <= 128:
        raise SystemExit(f"the header is {header_tokens} tokens: it must fill the first window of 128")
    peaks, plain = {}, {}
    for mode in ("truncate", "chunk"):
        runs = out / "runs"
        overrides = [f"model.name={args.model}", f"data.train={derived}", f"data.long_texts={mode}",
                     f"train.steps={args.steps}", f"output.dir={runs}", f"output.name=header-{mode}"]  # fmt: skip
        peaks[mode] = train(config.load("configs/quickstart.yaml", overrides)).peak_val_accuracy
        # The same on AG News as it is: the same seed and rows, so the two runs differ only where chunking reads
        # a text differently (the few rows over max_length) and in what that changes downstream.
        overrides = [f"model.name={args.model}", f"data.train={args.data}", f"data.long_texts={mode}",
                     f"train.steps={args.steps}", f"output.dir={runs}", f"output.name=ag-news-{mode}"]  # fmt: skip
        train(config.load("configs/quickstart.yaml", overrides))
        plain[mode] = RunDir(runs / f"ag-news-{mode}").read_predictions("last")  # the same step in both
    truncated, chunked = plain["truncate"], plain["chunk"]
    test = mcnemar(truncated.labels, truncated.predictions, chunked.predictions)
    accuracy = {mode: sum(p == y for p, y in zip(r.predictions, r.labels)) / len(r.labels) for mode, r in plain.items()}
    max_length = config.load("configs/quickstart.yaml", [f"model.name={args.model}"]).data.max_length
    lengths = [len(ids) for ids in tokenizer([text for _, text in rows])["input_ids"]]
    print(json.dumps({
        "header_tokens": header_tokens, "max_length": max_length, "truncate": peaks["truncate"],
        "chunk": peaks["chunk"], "chunk_minus_truncate_points": round(100 * (peaks["chunk"] - peaks["truncate"]), 1),
        "ag_news_rows_over_max_length": sum(n > max_length for n in lengths), "ag_news_rows": len(lengths),
        "ag_news_truncate": accuracy["truncate"], "ag_news_chunk": accuracy["chunk"],
        "ag_news_val_rows": len(truncated.labels),
        "ag_news_answers_changed": sum(a != b for a, b in zip(truncated.predictions, chunked.predictions)),
        "ag_news_mcnemar_p": test["p_value"],
    }))  # fmt: skip


if __name__ == "__main__":
    main()
