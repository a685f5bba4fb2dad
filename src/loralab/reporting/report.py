"""One self-contained HTML report: configurations, figures (inline SVG), the best run, significance."""

from __future__ import annotations

import html
import tempfile
from pathlib import Path

from ..config import LOWER_IS_BETTER, Config
from ..config import goodness as metric_goodness
from ..runs.files import write_text_atomic
from ..runs.results import RunRecord, compare, configuration_key, seed_groups
from .glue import glue_table
from .plots import plot_runs


def goodness(record: RunRecord) -> float:
    """Higher is better, whatever the metric (MSE is negated); an undefined peak ranks last."""
    return metric_goodness(record.metric, record.peak)


def ranked(records: list[RunRecord]) -> list[RunRecord]:
    return sorted(records, key=lambda r: -goodness(r))


def comparable_sets(records: list[RunRecord]) -> list[tuple[str, list[RunRecord]]]:
    """Runs that may be ranked together: the same model, task, metric and training data. Each set has its
    own best run, tests and table; runs of different sets are never ranked against each other."""
    sets: dict[tuple, list[RunRecord]] = {}
    for record in records:
        cfg = record.config
        key = (Path(cfg.model.name).name, cfg.data.task, record.metric, Path(cfg.data.train).name)
        sets.setdefault(key, []).append(record)
    return [(" · ".join(map(str, key)), members) for key, members in sorted(sets.items())]


def copies(records: list[RunRecord]) -> list[list[RunRecord]]:
    """Runs grouped as copies of one experiment (same configuration and seed: the study filed its best
    run in four folders), best first; each group's first run stands for it."""
    groups: dict[tuple, list[RunRecord]] = {}
    for record in ranked(records):
        groups.setdefault((configuration_key(record), record.config.train.seed), []).append(record)
    return list(groups.values())


def significance(records: list[RunRecord], top: int = 5) -> list[dict]:
    """The best run against the best run of each of the next `top - 1` distinct configurations, paired
    on the same validation rows (a configuration is never tested against a copy of itself)."""
    best_of: dict[str, RunRecord] = {}
    for record in ranked(records):
        best_of.setdefault(configuration_key(record), record)
    leaders = list(best_of.values())[:top]
    return [compare(leaders[0], other) for other in leaders[1:]]


def _cell(value, sort_key=None) -> str:
    key = "" if sort_key is None else f' data-sort="{html.escape(str(sort_key))}"'
    return f"<td{key}>{html.escape(str(value))}</td>"


def _table(headers: list[str], rows: list[list[str]], table_id: str = "") -> str:
    """A table whose rows sort by clicking a header; cells are plain values or ready `<td>` markup."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(c if str(c).startswith("<td") else _cell(c) for c in row) + "</tr>" for row in rows)
    ident = f' id="{table_id}"' if table_id else ""
    table = f'<table class="sortable"{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
    return f'<div class="wide">{table}</div>'


def configuration_rows(records: list[RunRecord]) -> list[list[str]]:
    rows = []
    for group in copies(records):
        row = group[0].row()
        extra = len(group) - 1
        name = row["name"] + (f" (+{extra} {'copy' if extra == 1 else 'copies'})" if extra else "")
        rows.append([
            name, row["group"], row["model"], row["seed"], row["scope"], row["head"] or "-", row["r"] or "-",
            "-" if row["alpha"] is None else f"{row['alpha']:g}", f"{row['lr']:g}",
            row["steps"], _cell("-" if row["trainable"] is None else f"{row['trainable']:,}", row["trainable"] or 0),
            row["metric"], _cell(f"{row['peak']:.4f}", row["peak"]),
            _cell(f"[{row['ci_low']:.4f}, {row['ci_high']:.4f}]", row["ci_low"]), row["peak_step"],
        ])  # fmt: skip
    return rows


def differences_from_defaults(cfg: Config) -> list[list[str]]:
    """(setting, this run, default) for every setting that differs from loralab's defaults (the study's run)."""
    base = Config().flat()
    return [
        [key, _short(value), _short(base[key])]
        for key, value in cfg.flat().items()
        if not key.startswith("output.") and value != base[key]
    ]


def _short(value) -> str:
    return (
        ", ".join(map(str, value))
        if isinstance(value, list)
        else f"{value:g}"
        if isinstance(value, float)
        else str(value)
    )


SORT_SCRIPT = """
document.querySelectorAll("table.sortable th").forEach((th) => th.addEventListener("click", () => {
  const body = th.closest("table").tBodies[0], column = th.cellIndex;
  const ascending = th.dataset.order !== "asc";
  th.dataset.order = ascending ? "asc" : "desc";
  const key = (row) => {
    const cell = row.cells[column], text = cell.dataset.sort ?? cell.textContent, number = Number(text);
    return text !== "" && !Number.isNaN(number) ? number : text.toLowerCase();
  };
  [...body.rows]
    .sort((a, b) => (key(a) > key(b) ? 1 : key(a) < key(b) ? -1 : 0) * (ascending ? 1 : -1))
    .forEach((row) => body.appendChild(row));
}));
"""

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
.wide { max-width: 100%; overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.85em; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; white-space: nowrap; }
td.text { white-space: normal; overflow-wrap: normal; min-width: 8em; }
td:first-child, th:first-child { text-align: left; }
th { background: #f0f0f0; cursor: pointer; user-select: none; }
th[data-order="asc"]::after { content: " \\25B2"; }
th[data-order="desc"]::after { content: " \\25BC"; }
figure { display: inline-block; margin: 1em 0; max-width: 100%; }
figure svg { max-width: 100%; height: auto; }
"""


def set_section(index: int, label: str, records: list[RunRecord]) -> str:
    """One comparable set: its best run, whether it is really better, seeds, and its configurations."""
    best = ranked(records)[0]
    row = best.row()
    tests = [
        [t["a"], t["b"], _cell(f"{t['difference'] * 100:+.2f}", t["difference"]),
         "-" if t["p_value"] is None else _cell(f"{t['p_value']:.4f}", t["p_value"]),
         "-" if t["p_value"] is None else "yes" if t["p_value"] < 0.05 else "no", _text(t["note"])]
        for t in significance(records)
    ]  # fmt: skip
    seeded = [g for g in seed_groups(records) if len(g["seeds"]) > 1]
    seed_rows = [
        [_text(g["configuration"]), ", ".join(map(str, g["seeds"])), _cell(f"{g['mean']:.4f}", g["mean"]),
         _cell(f"{g['sd']:.4f}", g["sd"]), _cell(f"[{g['ci_low']:.4f}, {g['ci_high']:.4f}]", g["ci_low"])]
        for g in seeded
    ]  # fmt: skip
    settings = differences_from_defaults(best.config)
    trainable = "-" if row["trainable"] is None else f"{row['trainable']:,}"
    direction = " (lower is better)" if best.metric in LOWER_IS_BETTER else ""
    headers = ["name", "group", "model", "seed", "scope", "head", "r", "alpha", "lr", "steps", "trainable",
               "metric", "peak", "95% CI", "peak step"]  # fmt: skip
    return f"""<section>
<h2>{html.escape(label)}</h2>
<p>{len(records)} runs ({len(copies(records))} distinct) of one model, task, metric and data, ranked by
{html.escape(best.metric)}{direction}; runs of other sets are never ranked with these.</p>
<h3>Best run</h3>
<p><b>{html.escape(row["name"])}</b>: peak {html.escape(best.metric)} {row["peak"]:.4f} [{row["ci_low"]:.4f},
{row["ci_high"]:.4f}] at step {row["peak_step"]}, {trainable} trainable parameters. Its settings that differ from
loralab's defaults (the seed study's run):</p>
{_table(["setting", "this run", "default"], settings) if settings else "<p>none: it is the study's configuration.</p>"}
<h3>Is the best run really better?</h3>
<p>Exact McNemar test (a paired bootstrap for other metrics than accuracy) against the best run of each next
configuration, paired on the same validation rows (predictions at each run's peak). p &lt; 0.05 marks a
difference unlikely to be noise.</p>
{
        _table(["best", "other", "difference (points)", "p-value", "significant", "note"], tests)
        if tests
        else "<p>Only one configuration.</p>"
    }
<h3>Across seeds</h3>
{
        _table(["configuration", "seeds", "mean peak", "sd", "95% CI over seeds"], seed_rows)
        if seed_rows
        else "<p>No configuration was run with more than one seed.</p>"
    }
<h3>Configurations</h3>
{_table(headers, configuration_rows(records), f"configurations-{index}")}
</section>"""


def _text(value) -> str:
    """A cell of prose (notes, configurations): it may wrap between words, numbers never do."""
    return f'<td class="text">{html.escape(str(value))}</td>'


def build_report(records: list[RunRecord], title: str = "loralab report") -> str:
    with tempfile.TemporaryDirectory() as tmp:
        captions: dict[str, str] = {}
        plotted = plot_runs(records, tmp, captions)
        figures = []
        for stem in sorted(plotted) + sorted(p.stem for p in Path(tmp).glob("loss_*.svg")):
            svg = (Path(tmp) / f"{stem}.svg").read_text()
            caption = html.escape(captions.get(stem, stem))
            figures.append(f"<figure>{svg[svg.index('<svg') :]}<figcaption>{caption}</figcaption></figure>")
    glue = [
        [r["task"], r["metric"], "-" if r["seeds"] is None else str(r["seeds"]), _cell(f"{r['ours']:.1f}", r["ours"]),
         "-" if r["ci"] is None else f"[{r['ci'][0]:.1f}, {r['ci'][1]:.1f}]", _cell(f"{r['paper']:.1f}", r["paper"]),
         _cell(f"{r['difference']:+.1f}", r["difference"])]
        for r in glue_table(records)
    ]  # fmt: skip
    glue_section = (
        "<h2>GLUE</h2><p>Dev-set results beside the LoRA paper's roberta-base row (Hu et al. 2021, Table 2), in "
        "points; intervals over seeds where there are several, else the run's own 95% interval.</p>"
        + _table(["task", "metric", "seeds", "ours", "95% CI", "paper (LoRA, 0.3M)", "difference"], glue)
        if glue
        else ""
    )
    sets = comparable_sets(records)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{len(records)} runs in {len(sets)} comparable {"set" if len(sets) == 1 else "sets"} (one model, task, metric and
training data each). Peaks are of each run's validation metric (train.metric_for_best); intervals are 95%
intervals over the validation rows (Wilson's for accuracy, bootstrap for the others). Click a column header to
sort a table.</p>
{glue_section}
{"".join(set_section(i, label, members) for i, (label, members) in enumerate(sets))}
<h2>Figures</h2>
{"".join(figures)}
<script>{SORT_SCRIPT}</script>
</body></html>
"""


def write_report(records: list[RunRecord], out: str | Path, title: str = "loralab report") -> Path:
    write_text_atomic(Path(out), build_report(records, title))
    return Path(out)
