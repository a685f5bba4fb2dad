"""The index of runs, read from run directories (see rundir.py for what each holds)."""

from __future__ import annotations

import csv
import io
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from ..config import Config, is_local
from ..errors import LoralabError
from ..stats import t_interval, wilson_interval
from ..tasks import task_for
from .rundir import Origin, RunDir, Summary, finished_runs_under


@dataclass
class RunRecord:
    run: RunDir
    config: Config
    summary: Summary
    metrics: list[dict]
    origin: Origin

    @property
    def name(self) -> str:
        return self.summary.name or self.run.path.name

    @property
    def group(self) -> str:
        return self.origin.group

    @property
    def axes(self) -> dict:
        return self.origin.axes

    @property
    def val_rows(self) -> int:
        return self.summary.val_rows

    @property
    def peak(self) -> float:
        """The peak of the run's metric (train.metric_for_best; accuracy for runs before 0.3)."""
        return self.summary.peak_value

    @property
    def metric(self) -> str:
        return self.summary.metric

    def interval(self) -> tuple[float, float]:
        """95% interval of the peak: saved by the run (bootstrap for metrics without a closed form), or
        Wilson's for the accuracy of runs before 0.3 and imports, which needs only the row count."""
        if self.summary.peak_95ci:
            low, high = self.summary.peak_95ci
            return low, high
        return wilson_interval(round(self.peak * self.val_rows), self.val_rows)

    def band(self, value: float) -> tuple[float, float]:
        """95% interval of one evaluation's value, where it has a closed form (accuracy); else the point."""
        return wilson_interval(round(value * self.val_rows), self.val_rows) if self.metric == "accuracy" else (
            value, value
        )  # fmt: skip

    def curve(self, split: str, key: str) -> tuple[list[int], list[float]]:
        rows = [r for r in self.metrics if r["split"] == split and r.get(key) is not None]
        return [r["step"] for r in rows], [r[key] for r in rows]

    def row(self) -> dict:
        cfg, summary = self.config, self.summary
        lora = cfg.model.finetune != "full"  # LoRA settings mean nothing for a full fine-tuning
        low, high = self.interval()
        return {
            "name": self.name,
            "group": self.group,
            "model": Path(cfg.model.name).name,
            "seed": cfg.train.seed,
            "scope": "every weight" if cfg.model.finetune == "full" else ",".join(cfg.lora.scope),
            "head": cfg.model.head if lora else None,
            "pooling": cfg.model.pooling,
            "r": cfg.lora.r if lora else None,
            "alpha": cfg.lora.alpha if lora else None,
            "dropout": cfg.lora.dropout if lora else None,
            "lr": cfg.train.lr,
            "steps": summary.steps_done,
            "trainable": (summary.trainable or {}).get("total"),
            "metric": self.metric,
            "peak": self.peak,
            "ci_low": low,
            "ci_high": high,
            "peak_step": summary.peak_step,
            "final": (summary.final or {}).get(self.metric),
            "wall_s": summary.wall_time_s,
            "path": str(self.run.path),
        }


def read_run(path: Path) -> RunRecord:
    run = RunDir(Path(path))
    return RunRecord(run, run.read_config(), run.read_summary(), run.read_metrics(), run.read_origin())


def find_runs(paths: list[str]) -> list[RunRecord]:
    """Finished runs at or below each path, in path order."""
    records = []
    for path in map(Path, paths or ["runs"]):
        if not path.exists():
            raise LoralabError(f"no such run directory: {path}")
        records += [read_run(run.path) for run in finished_runs_under(path)]
    return records


COLUMNS = [
    "name",
    "group",
    "model",
    "seed",
    "scope",
    "head",
    "pooling",
    "r",
    "alpha",
    "dropout",
    "lr",
    "steps",
    "trainable",
    "metric",
    "peak",
    "ci_low",
    "ci_high",
    "peak_step",
    "final",
    "wall_s",
]


SORT_ALIASES = {"peak_accuracy": "peak", "final_accuracy": "final"}  # the names before 0.3


def sort_rows(rows: list[dict], key: str) -> list[dict]:
    descending = key.startswith("-")
    key = key.lstrip("-")
    key = SORT_ALIASES.get(key, key)
    if rows and key not in rows[0]:
        raise LoralabError(f"--sort: unknown column '{key}' (columns: {', '.join(COLUMNS)})")
    present = [r for r in rows if r[key] is not None]
    return sorted(present, key=lambda r: r[key], reverse=descending) + [r for r in rows if r[key] is None]


def format_table(rows: list[dict]) -> str:
    def cell(column: str, value) -> str:
        if value is None:
            return "-"
        if column in ("peak", "final"):
            return f"{value:.4f}"
        if column == "ci_low":
            return f"[{value:.4f}"
        if column == "ci_high":
            return f"{value:.4f}]"
        if column == "trainable":
            return f"{value:,}"
        if column == "wall_s":
            return f"{value / 60:.1f}m"
        if isinstance(value, float):
            return f"{value:g}"
        return str(value)

    headers = {"ci_low": "95% CI", "ci_high": "", "wall_s": "wall"}
    table = [[headers.get(c, c) for c in COLUMNS]] + [[cell(c, r[c]) for c in COLUMNS] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in table)


def to_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS + ["path"])
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


# Settings that change neither what is trained nor how: runs differing only in these and the seed
# repeat one configuration.
NOT_THE_CONFIGURATION = {"train": ("seed", "eval_batch_size", "log_every", "report_to"), "output": ("dir", "name")}


def defines_configuration(key: str) -> bool:
    """Whether a `section.key` setting is part of what a configuration is (the report's groups, the figures' axes)."""
    section, _, name = key.partition(".")
    return name not in NOT_THE_CONFIGURATION.get(section, ())


def _configuration(record: RunRecord) -> dict[str, object]:
    """The settings that make the configuration, as `section.key`: value."""
    return {key: value for key, value in record.config.flat().items() if defines_configuration(key)}


def configuration_key(record: RunRecord) -> str:
    return json.dumps(_configuration(record), sort_keys=True)


# What a configuration line of `runs --by-seed` always shows (row column: its setting).
DESCRIBED = {
    "scope": "lora.scope",
    "head": "model.head",
    "pooling": "model.pooling",
    "r": "lora.r",
    "alpha": "lora.alpha",
    "dropout": "lora.dropout",
    "lr": "train.lr",
    "steps": "train.steps",
}


def seed_groups(records: list[RunRecord]) -> list[dict]:
    """Runs of one configuration under different seeds: mean peak, its spread and a 95% t-interval.

    The interval is over seeds (training randomness); every seed is scored on the same validation
    rows, so their own sampling error (the Wilson interval of each run) comes on top.
    """
    groups: dict[str, dict[int, RunRecord]] = {}
    for record in records:
        # The same configuration and seed twice is one experiment copied (the study filed its best run
        # under four folders), not two draws.
        groups.setdefault(configuration_key(record), {}).setdefault(record.config.train.seed, record)
    # Beyond the usual columns, a line names every other setting in which the configurations differ
    # (a layer-wise decay or label smoothing would otherwise leave two lines looking the same).
    settings = [_configuration(next(iter(by_seed.values()))) for by_seed in groups.values()]
    varying = sorted(
        k for k in set().union(*settings) if k not in DESCRIBED.values() and len({repr(c.get(k)) for c in settings}) > 1
    )
    summaries = []
    for by_seed, setting in zip(groups.values(), settings):
        members = list(by_seed.values())
        peaks = [m.peak for m in members]
        mean = statistics.fmean(peaks)
        sd = statistics.stdev(peaks) if len(peaks) > 1 else None
        interval = t_interval(peaks)
        first = members[0].row()
        summaries.append(
            {
                "configuration": " ".join(
                    [f"{k}={first[k]}" for k in DESCRIBED]
                    + [f"precision={members[0].config.train.precision}"]
                    + [f"{k}={_text(setting.get(k))}" for k in varying if k != "train.precision"]
                ),
                "seeds": [m.config.train.seed for m in members],
                "peaks": peaks,
                "mean": mean,
                "sd": sd,
                "ci_low": None if interval is None else interval[0],
                "ci_high": None if interval is None else interval[1],
            }
        )
    return sorted(summaries, key=lambda g: -g["mean"])


def _text(value) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    # A model or data folder by its own name: a full path would take the table's width.
    return Path(value).name if isinstance(value, str) and "/" in value and is_local(value) else str(value)


def format_seed_groups(groups: list[dict]) -> str:
    lines = []
    for g in groups:
        spread = (
            "" if g["sd"] is None else f"  sd {g['sd']:.4f}  95% CI over seeds [{g['ci_low']:.4f}, {g['ci_high']:.4f}]"
        )
        peaks = ", ".join(f"{s}: {p:.4f}" for s, p in zip(g["seeds"], g["peaks"]))
        lines.append(f"{g['configuration']}\n  mean {g['mean']:.4f} of {len(g['peaks'])} (seed: peak {peaks}){spread}")
    return "\n".join(lines)


def compare(a: RunRecord, b: RunRecord) -> dict:
    """Run a against run b on the validation rows both scored: the difference of their peaks, and the
    exact McNemar test on the rows exactly one of them gets right (predictions at each run's peak)."""
    # Per-row validation predictions saved at each run's peak (our runs have them; imported ones do not).
    pa, pb = a.run.read_predictions("best"), b.run.read_predictions("best")
    result = {"a": a.name, "b": b.name, "difference": a.peak - b.peak}
    if pa is None or pb is None:
        return result | {"p_value": None, "note": "no per-row predictions (imported run)"}
    if pa.labels != pb.labels:
        return result | {"p_value": None, "note": "different validation rows: not paired"}
    if a.metric != b.metric:
        return result | {"p_value": None, "note": f"different metrics ({a.metric}, {b.metric}): not comparable"}
    test = task_for(a.config).paired_test(a.metric, pa.labels, pa.predictions, pb.predictions)
    return result | test


def against_references(records: list[RunRecord], references: list[RunRecord]) -> list[dict]:
    """Each run compared with the reference run of its own seed (`loralab runs DIRS --against REF`).

    Pairing by seed keeps the training randomness out of the comparison as far as it can be: a
    configuration on seed 43 meets the reference on seed 43, on the same validation rows.
    """
    by_seed: dict[int, RunRecord] = {}
    for ref in references:
        seed = ref.config.train.seed
        if seed in by_seed and configuration_key(by_seed[seed]) != configuration_key(ref):
            raise LoralabError(
                f"--against: {by_seed[seed].run.path} and {ref.run.path} are two configurations with seed {seed}; "
                "name one run directory, or a folder holding one configuration"
            )
        by_seed.setdefault(seed, ref)
    reference_paths = {ref.run.path.resolve() for ref in references}
    rows = []
    for record in records:
        if record.run.path.resolve() in reference_paths:
            continue
        seed = record.config.train.seed
        if seed not in by_seed:
            rows.append({"a": _label(record), "b": "-", "seed": seed, "difference": None, "p_value": None,
                         "note": f"no reference run with seed {seed}"})  # fmt: skip
            continue
        ref = by_seed[seed]
        rows.append(
            compare(record, ref)
            | {"a": _label(record), "b": _label(ref), "seed": seed, "peak": record.peak, "reference": ref.peak}
        )
    return rows


def _label(record: RunRecord) -> str:
    # Sweeps name trials by their axis values (lr_0.001), which repeat across groups.
    return f"{record.group}/{record.name}" if record.group else record.name


def format_against(rows: list[dict]) -> str:
    """One line per run: its peak, the reference's, the difference, who alone was right how often, p."""
    table = [["run", "seed", "peak", "reference", "ref peak", "diff (points)", "only run / only ref right", "p", ""]]
    for row in rows:
        if row["difference"] is None:
            table.append([row["a"], str(row["seed"]), "-", "-", "-", "-", "-", "-", row["note"]])
            continue
        paired = row["p_value"] is not None
        table.append([
            row["a"], str(row["seed"]), f"{row['peak']:.4f}", row["b"], f"{row['reference']:.4f}",
            f"{row['difference'] * 100:+.2f}", f"{row['only_a']} / {row['only_b']}" if row.get("only_a") is not None
            else "-",
            f"{row['p_value']:.3f}" if paired else "-",
            row["note"] or ("significant at 0.05" if row["p_value"] < 0.05 else ""),
        ])  # fmt: skip
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in table)
