"""Runs of one base with four tasks and three label counts, for `serve_load.py --adapters 32`: what a server of
every classifier of a base meets. Each task is derived from the shared AG News rows (written outside the repo,
beside the runs):

    topic    single-label, 4 classes: AG News itself
    world    single-label, 2 classes: is the story World news?
    mixed    multi-label, 3 labels: two stories of World, Business or Sci/Tech joined; which topics it holds
    same     text pairs, 2 classes: are the two stories of one topic?
    length   regression: the story's length in words (what a model reads off its tokens)

    python bench/unlike_runs.py OUT [--model FOLDER] [--steps 100]

Short runs (--steps): the serving benchmark measures what the adapters cost, not how well they learned.
"""

from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path

TOPICS = ["World", "Sports", "Business", "Sci/Tech"]


def write(path: Path, header: tuple[str, ...], rows) -> str:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def derived(rows: list[tuple[int, str]], out: Path) -> dict[str, tuple[str, list[str]]]:
    """Each task's CSV and its overrides."""
    rng = random.Random(0)
    by_topic = {t: [text for label, text in rows if label == t] for t in range(4)}
    mixed = []
    for _ in range(len(rows) // 2):
        first, second = rng.choice([0, 2, 3]), rng.choice([0, 2, 3])
        topics = sorted({first, second})
        text = f"{rng.choice(by_topic[first])} {rng.choice(by_topic[second])}"
        mixed.append((",".join(TOPICS[t] for t in topics), text))
    pairs = []
    for label, text in rows[: len(rows) // 2]:
        other = label if rng.random() < 0.5 else rng.choice([t for t in range(4) if t != label])
        pairs.append((int(other == label), text, rng.choice(by_topic[other])))
    return {
        "world": (write(out / "world.csv", ("label", "text"), [(int(y == 0), x) for y, x in rows]),
                  ["data.label_names=[other, world]"]),
        "mixed": (write(out / "mixed.csv", ("label", "text"), mixed),
                  ["data.task=multi_label", "data.label_names=[World, Business, Sci/Tech]"]),
        "same": (write(out / "same.csv", ("label", "first", "second"), pairs),
                 ["data.text_column=first", "data.text_pair_column=second", "data.label_names=[different, same]"]),
        "length": (write(out / "length.csv", ("label", "text"), [(len(x.split()), x) for _, x in rows]),
                   ["data.task=regression", "data.label_names=[]", "data.scale_targets=true"]),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="folder for the derived CSVs and the runs")
    parser.add_argument("--model", default=str(Path.home() / ".cache/offline-models/minilm-l6"))
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--data", default="../shared/data/ag_news/train.csv")
    args = parser.parse_args()

    from loralab import config
    from loralab.training.train import train

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(args.data, newline="") as handle:
        rows = [(int(row["label"]), row["text"]) for row in csv.DictReader(handle)]
    tasks = {"topic": (args.data, [])} | derived(rows, out)
    for name, (data, extra) in tasks.items():
        common = [f"model.name={args.model}", f"data.train={data}", f"train.steps={args.steps}",
                  f"train.eval_every={args.steps}", "data.val_size=256", f"output.dir={out / 'runs'}",
                  f"output.name={name}"]  # fmt: skip
        train(config.load("configs/quickstart.yaml", common + extra))


if __name__ == "__main__":
    main()
