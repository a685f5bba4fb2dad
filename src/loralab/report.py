"""One self-contained HTML report: configurations, figures (inline SVG), the best run, significance."""

from __future__ import annotations

import html
import json
import math
import tempfile
from pathlib import Path

from .plots import plot_runs
from .results import RunRecord, format_seed_groups, format_table, seed_groups, sort_rows
from .store import write_text_atomic


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: of the rows exactly one run gets right, is the split 50/50?"""
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1)) / 2**n
    return min(1.0, 2 * tail)


def compare(a: RunRecord, b: RunRecord) -> dict:
    # Per-row validation predictions saved at each run's peak (our runs have them; imported ones do not).
    pa, pb = a.run.read_predictions("best"), b.run.read_predictions("best")
    result = {"a": a.name, "b": b.name, "difference": a.peak - b.peak}
    if pa is None or pb is None:
        return result | {"p_value": None, "note": "no per-row predictions (imported run)"}
    if pa.labels != pb.labels:
        return result | {"p_value": None, "note": "different validation rows: not paired"}
    right_a = [p == y for p, y in zip(pa.predictions, pa.labels)]
    right_b = [p == y for p, y in zip(pb.predictions, pb.labels)]
    only_a = sum(x and not y for x, y in zip(right_a, right_b))
    only_b = sum(y and not x for x, y in zip(right_a, right_b))
    return result | {"p_value": mcnemar_exact(only_a, only_b), "only_a": only_a, "only_b": only_b, "note": ""}


def significance(records: list[RunRecord], top: int = 5) -> list[dict]:
    """The best run against each of the next `top - 1`, paired on the same validation rows."""
    ranked = sorted(records, key=lambda r: -r.peak)[:top]
    return [compare(ranked[0], other) for other in ranked[1:]]


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def build_report(records: list[RunRecord], title: str = "loralab report") -> str:
    rows = sort_rows([r.row() for r in records], "-peak_accuracy")
    best = rows[0]
    with tempfile.TemporaryDirectory() as tmp:
        plotted = plot_runs(records, tmp)
        figures = []
        for stem in sorted(plotted) + sorted(p.stem for p in Path(tmp).glob("loss_*.svg")):
            svg = (Path(tmp) / f"{stem}.svg").read_text()
            figures.append(f"<figure>{svg[svg.index('<svg') :]}<figcaption>{html.escape(stem)}</figcaption></figure>")
    tests = significance(records)
    test_rows = [
        [
            t["a"],
            t["b"],
            f"{t['difference'] * 100:+.2f}",
            "-" if t["p_value"] is None else f"{t['p_value']:.4f}",
            "yes" if t["p_value"] is not None and t["p_value"] < 0.05 else "no" if t["p_value"] is not None else "-",
            t["note"],
        ]
        for t in tests
    ]
    best_config = next(r for r in records if str(r.run.path) == best["path"]).config
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.85em; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }}
th {{ background: #f0f0f0; }}
figure {{ display: inline-block; margin: 1em; max-width: 100%; }}
figure svg {{ max-width: 100%; height: auto; }}
pre {{ background: #f7f7f7; padding: 1em; overflow-x: auto; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{len(records)} runs. Accuracies are peak validation accuracy; intervals are 95% Wilson intervals over
the validation rows ({best["ci_high"] - best["ci_low"]:.4f} wide for the best run).</p>
<h2>Best run</h2>
<p><b>{html.escape(best["name"])}</b>: peak {best["peak_accuracy"]:.4f}
[{best["ci_low"]:.4f}, {best["ci_high"]:.4f}] at step {best["peak_step"]},
{best["trainable"] if best["trainable"] is None else f"{best['trainable']:,}"} trainable parameters.</p>
<pre>{html.escape(json.dumps(best_config.to_dict(), indent=2))}</pre>
<h2>Is the best run really better?</h2>
<p>Exact McNemar test on the rows where exactly one of the two runs is right (paired on the same
validation rows, predictions at each run's peak). p &lt; 0.05 marks a difference unlikely to be noise.</p>
{_table(["best", "other", "difference (points)", "p-value", "significant", "note"], test_rows)}
<h2>Across seeds</h2>
<p>Runs that differ only in their seed, as one configuration: the mean of their peaks and a 95%
t-interval over seeds (each seed is scored on the same validation rows).</p>
<pre>{html.escape(format_seed_groups(seed_groups(records)))}</pre>
<h2>Configurations</h2>
<pre>{html.escape(format_table(rows))}</pre>
<h2>Figures</h2>
{"".join(figures)}
</body></html>
"""


def write_report(records: list[RunRecord], out: str | Path, title: str = "loralab report") -> Path:
    write_text_atomic(Path(out), build_report(records, title))
    return Path(out)
