"""The index of runs, read from run directories (see store.py for what each holds)."""

from __future__ import annotations

import csv
import io
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from .config import SCOPE_WORDS, Config
from .errors import LoralabError
from .evaluate import wilson_interval
from .store import Origin, RunDir, Summary, finished_runs_under


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
        return self.summary.peak_val_accuracy

    def curve(self, split: str, key: str) -> tuple[list[int], list[float]]:
        rows = [r for r in self.metrics if r["split"] == split and r.get(key) is not None]
        return [r["step"] for r in rows], [r[key] for r in rows]

    def row(self) -> dict:
        cfg, summary = self.config, self.summary
        lora = cfg.model.finetune != "full"  # LoRA settings mean nothing for a full fine-tuning
        low, high = wilson_interval(round(self.peak * self.val_rows), self.val_rows)
        return {
            "name": self.name,
            "group": self.group,
            "scope": "every weight" if cfg.model.finetune == "full" else ",".join(cfg.lora.scope),
            "head": cfg.model.head if lora else None,
            "pooling": cfg.model.pooling,
            "r": cfg.lora.r if lora else None,
            "alpha": cfg.lora.alpha if lora else None,
            "dropout": cfg.lora.dropout if lora else None,
            "lr": cfg.train.lr,
            "steps": summary.steps_done,
            "trainable": (summary.trainable or {}).get("total"),
            "peak_accuracy": self.peak,
            "ci_low": low,
            "ci_high": high,
            "peak_step": summary.peak_step,
            "final_accuracy": (summary.final or {}).get("accuracy"),
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


def canonical_scope(modules: list[str]) -> list[str]:
    """Scope words in the vocabulary's order (query before key before value ...), others after."""
    return sorted(modules, key=lambda m: (SCOPE_WORDS.index(m) if m in SCOPE_WORDS else len(SCOPE_WORDS), m))


COLUMNS = [
    "name",
    "group",
    "scope",
    "head",
    "pooling",
    "r",
    "alpha",
    "dropout",
    "lr",
    "steps",
    "trainable",
    "peak_accuracy",
    "ci_low",
    "ci_high",
    "peak_step",
    "final_accuracy",
    "wall_s",
]


def sort_rows(rows: list[dict], key: str) -> list[dict]:
    descending = key.startswith("-")
    key = key.lstrip("-")
    if rows and key not in rows[0]:
        raise LoralabError(f"--sort: unknown column '{key}' (columns: {', '.join(COLUMNS)})")
    present = [r for r in rows if r[key] is not None]
    return sorted(present, key=lambda r: r[key], reverse=descending) + [r for r in rows if r[key] is None]


def format_table(rows: list[dict]) -> str:
    def cell(column: str, value) -> str:
        if value is None:
            return "-"
        if column in ("peak_accuracy", "final_accuracy"):
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

    headers = {"peak_accuracy": "peak", "ci_low": "95% CI", "ci_high": "", "final_accuracy": "final", "wall_s": "wall"}
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
# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (normal beyond).
T_975 = [
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
]


def configuration_key(record: RunRecord) -> str:
    trimmed = record.config.to_dict()
    for section, keys in NOT_THE_CONFIGURATION.items():
        for key in keys:
            trimmed.get(section, {}).pop(key, None)
    return json.dumps(trimmed, sort_keys=True)


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
    summaries = []
    for by_seed in groups.values():
        members = list(by_seed.values())
        peaks = [m.peak for m in members]
        mean = statistics.fmean(peaks)
        sd = statistics.stdev(peaks) if len(peaks) > 1 else None
        half = None if sd is None else T_975[min(len(peaks) - 1, len(T_975)) - 1] * sd / len(peaks) ** 0.5
        first = members[0].row()
        summaries.append(
            {
                "configuration": " ".join(
                    f"{k}={first[k]}" for k in ("scope", "head", "pooling", "r", "alpha", "dropout", "lr", "steps")
                )
                + f" precision={members[0].config.train.precision}",
                "seeds": [m.config.train.seed for m in members],
                "peaks": peaks,
                "mean": mean,
                "sd": sd,
                "ci_low": None if half is None else mean - half,
                "ci_high": None if half is None else mean + half,
            }
        )
    return sorted(summaries, key=lambda g: -g["mean"])


def format_seed_groups(groups: list[dict]) -> str:
    lines = []
    for g in groups:
        spread = (
            "" if g["sd"] is None else f"  sd {g['sd']:.4f}  95% CI over seeds [{g['ci_low']:.4f}, {g['ci_high']:.4f}]"
        )
        peaks = ", ".join(f"{s}: {p:.4f}" for s, p in zip(g["seeds"], g["peaks"]))
        lines.append(f"{g['configuration']}\n  mean {g['mean']:.4f} of {len(g['peaks'])} (seed: peak {peaks}){spread}")
    return "\n".join(lines)
