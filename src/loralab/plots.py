"""The study's figures from an index of runs: scope bar chart, accuracy curves per swept axis, loss curves.

Every accuracy carries its 95% Wilson interval over the validation rows: on 640 rows that is about
+-2.2 points, wider than most differences the seed study drew conclusions from.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from .results import RunRecord

FORMATS = ("png", "svg")

# Figure file stem and title of each axis the study swept; other axes get a generic curve figure.
AXIS_FIGURES = {  # {metric}: the runs' validation metric (accuracy, unless train.metric_for_best says otherwise)
    "lora.scope": ("fig1_scope", "Peak validation {metric} by adapter scope"),
    "lora.dropout": ("fig2_dropout", "Validation {metric} by LoRA dropout"),
    "lora.alpha": ("fig3_alpha", "Validation {metric} by LoRA alpha"),
    "lora.r": ("fig4_r", "Validation {metric} by LoRA rank"),
    "train.lr": ("fig5_lr", "Validation {metric} by learning rate"),
}


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, stem: Path, formats=FORMATS) -> list[Path]:
    """Write each format to a temporary name, then rename: no half-written figure is ever visible."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        path = stem.with_name(f"{stem.name}.{fmt}")
        tmp = stem.with_name(f".{stem.name}.tmp.{fmt}")
        fig.savefig(tmp, dpi=130, bbox_inches="tight")
        tmp.replace(path)
        written.append(path)
    pyplot().close(fig)
    return written


def axis_label(record: RunRecord, axis: str, value) -> str:
    if axis == "lora.r":
        trainable = (record.summary.trainable or {}).get("total")
        return f"r={value}" + (f" ({trainable:,} params)" if trainable else "")
    if axis == "lora.alpha":
        return f"alpha={value:g} (r*{value / record.config.lora.r:g})"
    if axis == "lora.scope":
        return ",".join(value)
    short = axis.split(".")[-1]
    return f"{short}={value:g}" if isinstance(value, float) else f"{short}={value}"


def run_label(record: RunRecord) -> str:
    if not record.axes:
        return record.name
    return ", ".join(axis_label(record, axis, value) for axis, value in record.axes.items())


def groups_of(records: list[RunRecord]) -> dict[str, list[RunRecord]]:
    groups: dict[str, list[RunRecord]] = defaultdict(list)
    for record in records:
        groups[record.group or "runs"].append(record)
    return dict(groups)


def group_axis(records: list[RunRecord]) -> str | None:
    """The axis a group varies along: the first axis its runs declare (seeds excepted)."""
    for record in records:
        for axis in record.axes:
            if axis != "train.seed":
                return axis
    return None


def plot_scope_bars(records: list[RunRecord], stem: Path, title: str) -> dict[str, float]:
    plt = pyplot()
    records = sorted(records, key=lambda r: -r.peak)
    labels = [run_label(r) for r in records]
    peaks = [r.peak for r in records]
    intervals = [r.interval() for r in records]
    fig, (ax, table_ax) = plt.subplots(2, 1, figsize=(9, 7.5), gridspec_kw={"height_ratios": [3, 2]})
    ax.bar(
        range(len(records)),
        peaks,
        color="#4C72B0",
        yerr=[[p - lo for p, (lo, _) in zip(peaks, intervals)], [hi - p for p, (_, hi) in zip(peaks, intervals)]],
        capsize=4,
    )
    top = max(hi for _, hi in intervals)
    for i, (_, hi) in enumerate(intervals):  # above the error bar's cap, not on it
        ax.text(i, hi + 0.004 * max(top, 0.1), f"{peaks[i]:.4f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(records)), labels, rotation=20, ha="right")
    ax.set_ylabel(f"peak validation {records[0].metric} (95% interval)")
    ax.set_ylim(max(0.0, min(lo for lo, _ in intervals) - 0.02), top + 0.03)
    ax.set_title(title)
    rows = []
    for record in records:
        step = record.summary.peak_step
        loss = next((m["loss"] for m in record.metrics if m["split"] == "val" and m["step"] == step), None)
        lora = record.config.lora
        rows.append(
            [run_label(record), str(step), f"{loss:.4f}" if loss is not None else "-", str(lora.r), f"{lora.alpha:g}"]
        )
    table_ax.axis("off")
    table_ax.table(cellText=rows, colLabels=["scope", "peak step", "eval loss", "r", "alpha"], loc="center")
    save_figure(fig, stem)
    return dict(zip(labels, peaks))


def plot_accuracy_curves(records: list[RunRecord], stem: Path, title: str) -> dict[str, float]:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 5.5))
    plotted = {}
    for record in sorted(
        records, key=lambda r: [v if isinstance(v, (int, float)) else str(v) for v in r.axes.values()] or [r.name]
    ):
        steps, accuracy = record.curve("val", record.metric)
        bands = [record.band(a) for a in accuracy]
        label = run_label(record)
        (line,) = ax.plot(steps, accuracy, marker="o", markersize=3, label=label)
        ax.fill_between(steps, [lo for lo, _ in bands], [hi for _, hi in bands], color=line.get_color(), alpha=0.12)
        plotted[label] = max(accuracy)
    ax.set_xlabel("step")
    metric = records[0].metric
    ax.set_ylabel(f"validation {metric}" + (" (band: 95% Wilson interval)" if metric == "accuracy" else ""))
    ax.set_title(title)
    # Every point and band inside the axes, the first evaluation's too.
    lows, highs = zip(*[r.band(a) for r in records for a in r.curve("val", r.metric)[1]])
    ax.set_ylim(max(0.0, min(lows) - 0.01), min(1.0, max(highs) + 0.01))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, stem)
    return plotted


def plot_losses(records: list[RunRecord], stem: Path, title: str) -> None:
    plt = pyplot()
    fig, (train_ax, val_ax) = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for record in records:
        label = run_label(record)
        train_ax.plot(*record.curve("train", "loss"), label=label)
        val_ax.plot(*record.curve("val", "loss"), marker="o", markersize=3, label=label)
    train_ax.set_ylabel("training loss (the task's: cross-entropy, binary cross-entropy or MSE)")
    for ax, name in ((train_ax, "training loss"), (val_ax, "validation loss")):
        ax.set_xlabel("step")
        ax.set_title(f"{title}: {name}")
        ax.grid(alpha=0.3)
    val_ax.legend(fontsize=8)
    save_figure(fig, stem)


def plot_runs(records: list[RunRecord], out_dir: str | Path) -> dict[str, dict[str, float]]:
    """Draw every figure the runs support into out_dir; returns {figure: {line or bar: peak accuracy}}."""
    out = Path(out_dir)
    plotted: dict[str, dict[str, float]] = {}
    groups = groups_of(records)
    axis_groups = defaultdict(list)
    for group, members in groups.items():
        axis_groups[group_axis(members)].append(group)
    for group, members in groups.items():
        axis = group_axis(members)
        stem, title = AXIS_FIGURES.get(axis, (f"acc_{group}", f"Validation {{metric}}: {group}"))
        title = title.format(metric=members[0].metric)
        if len(axis_groups[axis]) > 1 and axis in AXIS_FIGURES:
            stem = f"{stem}_{group}"  # two groups swept the same axis: one figure each
        draw = plot_scope_bars if axis == "lora.scope" else plot_accuracy_curves
        plotted[stem] = draw(members, out / stem, f"{title} ({group})")
        plot_losses(members, out / f"loss_{group}", group)
    on_curve = [r for r in records if "lora.budget" in r.axes or r.config.model.finetune == "full"]
    if any("lora.budget" in r.axes for r in on_curve):
        plotted["fig_budget"] = plot_budget_curve(on_curve, out / "fig_budget")
    return plotted


def plot_budget_curve(records: list[RunRecord], stem: Path) -> dict[str, float]:
    """Peak accuracy against trainable parameters (log scale), with 95% Wilson bars: what the budget costs.
    Full fine-tuning, where present, is the reference line."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 5.5))
    budgeted = sorted(
        (r for r in records if r.config.model.finetune != "full"), key=lambda r: r.summary.trainable["total"]
    )
    xs = [r.summary.trainable["total"] for r in budgeted]
    peaks = [r.peak for r in budgeted]
    bands = [r.interval() for r in budgeted]
    lows, highs = [p - lo for p, (lo, _) in zip(peaks, bands)], [hi - p for p, (_, hi) in zip(peaks, bands)]
    ax.errorbar(
        xs, peaks, yerr=[lows, highs], marker="o", capsize=4, label="LoRA at the largest rank the budget allows"
    )
    plotted = {f"{x:,} params": p for x, p in zip(xs, peaks)}
    for r in (r for r in records if r.config.model.finetune == "full"):
        total = r.summary.trainable["total"]
        low, high = r.interval()
        ax.axhspan(low, high, color="grey", alpha=0.15)
        ax.axhline(r.peak, color="grey", linestyle="--", label=f"full fine-tuning ({total:,} params): {r.peak:.4f}")
        plotted[f"full fine-tuning ({total:,} params)"] = r.peak
        bands.append((low, high))
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel(f"peak validation {budgeted[0].metric if budgeted else 'accuracy'} (95% interval)")
    ax.set_ylim(max(0.0, min(lo for lo, _ in bands) - 0.01), min(1.0, max(hi for _, hi in bands) + 0.01))
    ax.set_title("Accuracy against the parameter budget")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    save_figure(fig, stem)
    return plotted


def plot_confusion(matrix: list[list[int]], label_names: list[str], stem: Path, title: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.2 * len(label_names) + 2, 1.2 * len(label_names) + 1.5))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(label_names)), label_names, rotation=30, ha="right")
    ax.set_yticks(range(len(label_names)), label_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    peak = max(max(row) for row in matrix) or 1
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            ax.text(j, i, str(value), ha="center", va="center", color="white" if value > peak / 2 else "black")
    fig.tight_layout()
    save_figure(fig, stem, formats=("png",))
