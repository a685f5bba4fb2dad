"""The study's figures from an index of runs: scope bar chart, curves of each run's metric per swept axis, loss
curves. Every value carries its 95% interval over the validation rows (Wilson's for accuracy, a bootstrap for
the other metrics): on 640 rows an accuracy's is about +-2.2 points, wider than most differences the seed
study drew conclusions from.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from ..config import goodness
from ..methods import method_of
from ..runs.files import make_dir
from ..runs.results import RunRecord, defines_configuration
from ..runs.rundir import safe_dirname
from ..stats import calibration, ece_of_bins, t_interval
from ..tasks import task_for

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
    make_dir(stem.parent)
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
    """A run's value on one axis, as it trained: a sweep's `max_fit` and `r*2` are read back from its config."""
    if axis == "lora.r":
        method = method_of(record.config)
        trainable = (record.summary.trainable or {}).get("total")
        size = f"{method.size_field}={method.size(record.config)}" if method.size_field else method.name
        return size + (f" ({trainable:,} params)" if trainable else "")
    if axis == "lora.alpha":
        value = record.config.lora.alpha
        return f"alpha={value:g} (r*{value / record.config.lora.r:g})"
    if axis == "lora.scope":
        return ",".join(value)
    short = axis.split(".")[-1]
    return f"{short}={value:g}" if isinstance(value, float) else f"{short}={value}"


def run_label(record: RunRecord, keys: list[str] | None = None) -> str:
    """A run by the settings its figure varies: its declared sweep axes, or `keys` read from its config."""
    if keys:
        flat = record.config.flat()
        return ", ".join(axis_label(record, key, flat[key]) for key in keys)
    axes = {axis: value for axis, value in record.axes.items() if axis != "train.seed"}  # seeds: averaged or told
    if not axes:
        return record.name
    return ", ".join(axis_label(record, axis, value) for axis, value in axes.items())


def comparable(record: RunRecord) -> tuple:
    """What runs must share to be drawn in one figure: the model, the data and validation rows, the task's
    metric and the compute (steps of the same global batch). Runs that differ here are not compared."""
    c = record.config
    return (c.model.name, c.data.train, c.data.subset, c.data.validation, c.data.val_size, record.metric,
            c.train.steps, c.train.epochs, c.train.batch_size * c.train.grad_accum)  # fmt: skip


def groups_of(records: list[RunRecord]) -> dict[str, list[RunRecord]]:
    """Runs of one sweep group (or, outside sweeps, one folder) that are comparable, under a name that says
    what tells same-named groups apart (their model and steps)."""
    keyed: dict[tuple, list[RunRecord]] = defaultdict(list)
    for record in records:
        keyed[(record.group or record.run.path.parent.name, comparable(record))].append(record)
    names = [name for name, _ in keyed]
    groups = {}
    for (name, _), members in keyed.items():
        config = members[0].config
        if names.count(name) > 1:
            name = f"{name}: {Path(config.model.name).name}, {config.train.steps} steps"
        groups[name] = members
    return groups


def varied(records: list[RunRecord]) -> list[str]:
    """The settings whose values differ among the runs, in config order."""
    flats = [r.config.flat() for r in records]
    return [
        key for key in flats[0]
        if defines_configuration(key) and len({repr(f.get(key)) for f in flats}) > 1
    ]  # fmt: skip


def group_axis(records: list[RunRecord]) -> str | None:
    """What a group varies along: its sweep's declared axis (seeds excepted; a zip of two, as scope with rank,
    goes by the first), or, outside sweeps, the one setting its runs differ in; "several" where more vary
    (a search samples five at once: no single axis explains its runs)."""
    declared = [axis for axis in records[0].axes if axis != "train.seed"]
    if 0 < len(declared) <= 2 and all(r.axes.keys() == records[0].axes.keys() for r in records):
        return declared[0]
    keys = varied(records)
    if len(declared) > 2 or len(keys) > 1:
        return "several"
    return keys[0] if keys else None


def plot_scope_bars(
    records: list[RunRecord], stem: Path, title: str, keys: list[str] | None = None
) -> dict[str, float]:
    """One bar per configuration: its peak (the mean over seeds, with the t-interval over them where there
    are several, else the run's own 95% interval), and a table of their settings below."""
    plt = pyplot()
    by_label: dict[str, list[RunRecord]] = defaultdict(list)
    for record in records:
        by_label[run_label(record, keys)].append(record)
    labels = sorted(by_label, key=lambda label: -sum(r.peak for r in by_label[label]) / len(by_label[label]))
    peaks, intervals = [], []
    for label in labels:
        runs = by_label[label]
        values = [r.peak for r in runs]
        peaks.append(sum(values) / len(values))
        intervals.append(t_interval(values) if len(runs) > 1 else runs[0].interval())
    fig, (ax, table_ax) = plt.subplots(
        2, 1, figsize=(10, 5 + 0.35 * len(labels)), gridspec_kw={"height_ratios": [3, 0.4 + 0.25 * len(labels)]}
    )
    ax.bar(
        range(len(labels)),
        peaks,
        color="#4C72B0",
        yerr=[[p - lo for p, (lo, _) in zip(peaks, intervals)], [hi - p for p, (_, hi) in zip(peaks, intervals)]],
        capsize=4,
    )
    top = max(hi for _, hi in intervals)
    for i, (_, hi) in enumerate(intervals):  # above the error bar's cap, not on it
        ax.text(i, hi + 0.004 * max(top, 0.1), f"{peaks[i]:.4f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    seeds = max(len(runs) for runs in by_label.values())
    spread = "mean over seeds, 95% t-interval" if seeds > 1 else "95% interval"
    ax.set_ylabel(f"peak validation {records[0].metric}\n({spread})")
    ax.set_ylim(max(0.0, min(lo for lo, _ in intervals) - 0.02), top + 0.03)
    ax.set_title(title)
    rows = []
    for label in labels:
        runs = by_label[label]
        lora = runs[0].config.lora
        steps = sorted({r.summary.peak_step for r in runs})
        rows.append([label, str(len(runs)), ", ".join(map(str, steps)), str(lora.r), f"{lora.alpha:g}"])
    table_ax.axis("off")
    table = table_ax.table(cellText=rows, colLabels=["scope", "seeds", "peak step", "r", "alpha"], loc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    fig.tight_layout()
    save_figure(fig, stem)
    return dict(zip(labels, peaks))


def plot_accuracy_curves(
    records: list[RunRecord], stem: Path, title: str, keys: list[str] | None = None
) -> dict[str, float]:
    """Validation curves: the whole run on a small panel, and beside it the region that matters (the later
    evaluations, where the differences the figure exists to show are), with the legend outside both."""
    plt = pyplot()
    fig, (whole, ax) = plt.subplots(1, 2, figsize=(12, 5.5), gridspec_kw={"width_ratios": [1, 3]})
    plotted = {}
    seeded = len({r.config.train.seed for r in records}) > 1
    for record in sorted(
        records, key=lambda r: [v if isinstance(v, (int, float)) else str(v) for v in r.axes.values()] or [r.name]
    ):
        steps, values = record.curve("val", record.metric)
        bands = [record.band(a) for a in values]
        label = run_label(record, keys) + (f", seed {record.config.train.seed}" if seeded else "")
        (line,) = ax.plot(steps, values, marker="o", markersize=3, label=label)
        ax.fill_between(steps, [lo for lo, _ in bands], [hi for _, hi in bands], color=line.get_color(), alpha=0.12)
        whole.plot(steps, values, color=line.get_color(), linewidth=1)
        plotted[label] = max(values)
    metric = records[0].metric
    ax.set_xlabel("step")
    whole.set_xlabel("step")
    whole.set_title("all evaluations", fontsize=9)
    whole.set_ylabel(f"validation {metric}")
    ax.set_ylabel(f"validation {metric}" + (" (band: 95% Wilson interval)" if metric == "accuracy" else ""))
    ax.set_title(title)
    # Zoomed on the later half of the run: every later point and band inside, the early climb on the left.
    last = max(step for r in records for step in r.curve("val", r.metric)[0])
    later = [r.band(v) for r in records for step, v in zip(*r.curve("val", r.metric)) if step >= last / 2]
    lows, highs = zip(*later)
    margin = 0.1 * (max(highs) - min(lows)) + 1e-3
    ax.set_ylim(min(lows) - margin, max(highs) + margin)
    for panel in (whole, ax):
        panel.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    save_figure(fig, stem)
    return plotted


def plot_losses(records: list[RunRecord], stem: Path, title: str, keys: list[str] | None = None) -> None:
    plt = pyplot()
    fig, (train_ax, val_ax) = plt.subplots(1, 2, figsize=(13, 4.5), sharey=True)
    for record in records:
        label = run_label(record, keys)
        train_ax.plot(*record.curve("train", "loss"), label=label)
        val_ax.plot(*record.curve("val", "loss"), marker="o", markersize=3, label=label)
    train_ax.set_ylabel("loss (the task's: cross-entropy, binary cross-entropy or MSE)")
    for ax, name in ((train_ax, "training loss"), (val_ax, "validation loss")):
        ax.set_xlabel("step")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    val_ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the lines, not over them
    fig.tight_layout()
    save_figure(fig, stem)


def plot_runs(
    records: list[RunRecord], out_dir: str | Path, captions: dict[str, str] | None = None
) -> dict[str, dict[str, float]]:
    """Draw every figure the runs support into out_dir; returns {figure: {line or bar: peak}} and fills
    `captions` with each figure's title."""
    out = Path(out_dir)
    captions = {} if captions is None else captions
    plotted: dict[str, dict[str, float]] = {}
    groups = groups_of(records)
    axis_groups = defaultdict(list)
    for group, members in sorted(groups.items(), key=lambda item: -len(item[1])):
        axis_groups[group_axis(members)].append(group)
    for group, members in groups.items():
        axis, metric = group_axis(members), members[0].metric
        # Labels from the declared sweep axes, or else from what really differs among the runs.
        keys = None if members[0].axes and axis != "several" else varied(members) or None
        if axis in AXIS_FIGURES:
            stem, title = AXIS_FIGURES[axis]
            title = f"{title.format(metric=metric)} ({group})"
            if axis_groups[axis][0] != group:  # more groups swept this axis: the largest keeps the plain name
                stem = f"{stem}_{safe_dirname(group)}"
        else:
            stem = f"acc_{safe_dirname(group)}"
            shown = ", ".join(key.split(".")[-1] for key in keys or [])
            title = f"Validation {metric}: {group}" + (f" (varying {shown})" if axis == "several" and shown else "")
        draw = plot_scope_bars if axis == "lora.scope" else plot_accuracy_curves
        plotted[stem] = draw(members, out / stem, title, keys)
        captions[stem] = title
        loss_stem = f"loss_{safe_dirname(group)}"
        plot_losses(members, out / loss_stem, group, keys)
        captions[loss_stem] = f"Training and validation loss: {group}"
    reliability = best_calibrations(groups)
    if reliability:
        plot_reliability(reliability, out / "fig_reliability", "Reliability of each group's best run (validation rows)")
        plotted["fig_reliability"] = {name: ece_of_bins(bins) for name, bins in reliability.items()}
        captions["fig_reliability"] = "Calibration: observed frequency against stated probability, ECE in the legend"
    on_curve = [r for r in records if "lora.budget" in r.axes or r.config.model.finetune == "full"]
    if any("lora.budget" in r.axes for r in on_curve):
        plotted["fig_budget"] = plot_budget_curve(on_curve, out / "fig_budget")
        captions["fig_budget"] = "Peak validation metric against the trainable-parameter budget"
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


def best_calibrations(groups: dict[str, list[RunRecord]]) -> dict[str, list[dict]]:
    """Each group's best run's reliability bins on its validation rows (runs whose saved predictions carry
    their probabilities), by "group: run (ECE)"."""
    out = {}
    for group, members in groups.items():
        best = max(members, key=lambda r: goodness(r.metric, r.peak))
        saved = best.run.read_predictions("best")
        if saved is None or saved.scores is None:
            continue
        bins = calibration(task_for(best.config), saved.labels, saved.scores).get("reliability")
        if bins:
            out[f"{group}: {best.name} (ECE {ece_of_bins(bins):.3f})"] = bins
    return out


def plot_reliability(bins_by_run: dict[str, list[dict]], stem: Path, title: str) -> None:
    """Reliability diagram: in each confidence bin, how often the event happened against the confidence stated
    (on the diagonal: probabilities that mean what they say); a marker's area is its bin's rows."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="calibrated")
    for name, bins in bins_by_run.items():
        total = sum(b["rows"] for b in bins) or 1
        confidence, frequency = [b["confidence"] for b in bins], [b["frequency"] for b in bins]
        ax.plot(confidence, frequency, marker=None, linewidth=1)
        ax.scatter(confidence, frequency, s=[8 + 400 * b["rows"] / total for b in bins], alpha=0.6, label=name)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("stated probability")
    ax.set_ylabel("observed frequency")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    save_figure(fig, stem)
