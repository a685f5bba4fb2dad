import contextlib
import json
import shutil
import xml.etree.ElementTree as ElementTree

import pytest
from conftest import ROOT, SEED_CONFIG, SEED_STUDY, regression_rows, write_csv

from loralab.cli import main
from loralab.errors import LoralabError
from loralab.reporting.plots import plot_runs
from loralab.runs.hf_import import import_hf
from loralab.runs.results import find_runs
from loralab.runs.rundir import RunDir
from loralab.stats import mcnemar_exact

needs_study = pytest.mark.skipif(not SEED_STUDY.exists(), reason="../shared/data/seed-study is not beside the repo")
ROBERTA_BASE_CONFIG = str(ROOT / "configs" / "models" / "roberta-base")


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    if not SEED_STUDY.exists():
        pytest.skip("../shared/data/seed-study is not beside the repo")
    out = tmp_path_factory.mktemp("imported")
    import_hf([str(SEED_STUDY)], str(out), model_config=ROBERTA_BASE_CONFIG)
    return {r.name: r for r in find_runs([str(out)])}


@needs_study
def test_import_yields_the_study_runs(imported):
    assert len(imported) == 20
    assert (
        sum(
            1
            for r in imported.values()
            if r.config.lora.r == 22
            and r.config.lora.alpha == 44
            and r.config.lora.dropout == 0.1
            and r.config.train.lr == 5e-5
            and r.config.train.steps == 1200
        )
        == 4
    )
    best = imported["dropout/val,.1"]
    assert (best.summary.peak_val_accuracy, best.summary.peak_step) == (0.9140625, 1100)
    qk = imported["modules/query,key"]
    assert (qk.summary.peak_val_accuracy, qk.summary.peak_step) == (0.9015625, 1000)
    assert qk.config.lora.scope == ["query", "key"] and qk.axes == {"lora.scope": ["query", "key"]}
    assert imported["r/val,.1,r*2,6"].summary.trainable["total"] == 704_260
    assert imported["modules/query,key,val"].summary.trainable["total"] == 980_740
    assert imported["additional/val, .1,r*2,22,3e-5,2400"].config.train.steps == 2400


@needs_study
def test_five_figures_plot_the_index_peaks(imported, tmp_path):
    plotted = plot_runs(list(imported.values()), tmp_path)
    for stem in ("fig1_scope", "fig2_dropout", "fig3_alpha", "fig4_r", "fig5_lr"):
        png, svg = tmp_path / f"{stem}.png", tmp_path / f"{stem}.svg"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert ElementTree.parse(svg).getroot().tag.endswith("svg")
    assert plotted["fig2_dropout"] == {
        f"dropout={d:g}": imported[f"dropout/val,{n}"].summary.peak_val_accuracy
        for d, n in ((0.05, ".05"), (0.1, ".1"), (0.15, ".15"))
    }
    assert plotted["fig1_scope"]["query,key"] == imported["modules/query,key"].summary.peak_val_accuracy
    assert plotted["fig4_r"]["r=6 (704,260 params)"] == imported["r/val,.1,r*2,6"].summary.peak_val_accuracy
    assert set(plotted["fig3_alpha"]) == {"alpha=11 (r*0.5)", "alpha=22 (r*1)", "alpha=44 (r*2)"}
    assert set(plotted["fig5_lr"]) == {"lr=2e-05", "lr=3e-05", "lr=5e-05"}
    assert (tmp_path / "loss_dropout.png").exists()


@needs_study
def test_runs_table_csv_and_json(imported, capsys):
    folder = str(next(iter(imported.values())).run.path.parent.parent)
    assert main(["runs", folder, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 20 and rows[0]["peak"] == 0.9140625
    assert round(rows[0]["ci_low"], 4) == 0.8898 and round(rows[0]["ci_high"], 4) == 0.9334
    assert main(["runs", folder, "--csv", "--sort", "peak_step"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("name,group,model,seed,scope") and len(lines) == 21
    assert main(["runs", folder, "--sort", "nope"]) == 2


@needs_study
def test_report_is_self_contained(imported, tmp_path):
    folder = str(next(iter(imported.values())).run.path.parent.parent)
    out = tmp_path / "report.html"
    assert main(["report", folder, "--out", str(out)]) == 0
    page = out.read_text()
    assert page.count("<svg") >= 5 and 'src="http' not in page and "dropout/val,.1" in page
    assert "no per-row predictions" in page
    # The best run is filed in four folders: one configurations row, never tested against itself.
    assert page.count("(+3 copies)") == 1 and "No configuration was run with more than one seed" in page
    from loralab.reporting.report import copies, significance

    best_copies = {r.name for r in copies(list(imported.values()))[0]}
    assert len(best_copies) == 4 and "dropout/val,.1" in best_copies
    tests = significance(list(imported.values()))
    assert tests and not any(t["b"] in best_copies for t in tests)
    assert "<td>train.lr</td>" not in page  # the best run has the default learning rate


@contextlib.contextmanager
def report_in_chromium(page_file):
    """The report opened in headless Chromium at 1280 px: no console error, nothing wider than the window."""
    playwright = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium on this machine (.ci/run installs Debian's)")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors = []
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(page_file.as_uri())
        assert errors == []
        assert page.evaluate("document.documentElement.scrollWidth") <= 1280
        yield page
        browser.close()


@needs_study
def test_report_in_a_real_browser(imported, tmp_path):
    """Headless Chromium: no console errors, no horizontal overflow at 1280 px, every figure drawn, a
    header click sorts its table."""
    folder = str(next(iter(imported.values())).run.path.parent.parent)
    out = tmp_path / "report.html"
    assert main(["report", folder, "--out", str(out)]) == 0
    with report_in_chromium(out) as page:
        sizes = page.evaluate("[...document.querySelectorAll('figure svg')].map(s => s.getBoundingClientRect().width)")
        assert len(sizes) >= 5 and all(width > 100 for width in sizes)
        table = "#configurations-0"
        peaks = lambda: page.evaluate(  # noqa: E731
            f'[...document.querySelector("{table}").tBodies[0].rows].map(r => Number(r.cells[12].dataset.sort))'
        )
        page.click(f"{table} th:text-is('peak') >> nth=0")
        ascending = peaks()
        assert ascending == sorted(ascending) and len(ascending) > 5
        page.click(f"{table} th:text-is('peak') >> nth=0")
        assert peaks() == sorted(ascending, reverse=True)


def test_import_errors(tmp_path):
    (tmp_path / "x_trainer.json").write_text("{}")
    with pytest.raises(LoralabError, match="no adapter config beside it"):
        import_hf([str(tmp_path)], str(tmp_path / "out"))
    (tmp_path / "x_adapter.json").write_text("{}")
    with pytest.raises(LoralabError, match="no log_history"):
        import_hf([str(tmp_path)], str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_mcnemar_exact():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 5) == 1.0
    assert mcnemar_exact(10, 0) == pytest.approx(2 / 1024)
    assert mcnemar_exact(7, 2) == pytest.approx(2 * (1 + 9 + 36) / 512)


def test_report_tests_our_runs_on_the_same_rows(tmp_path, model_dirs, tiny_data):
    """Runs trained here save per-row predictions at their peak, so the report can pair them."""
    from conftest import train_tiny

    from loralab.reporting.report import significance

    for lr in ("2e-2", "1e-9"):
        train_tiny(model_dirs["roberta"], tiny_data, tmp_path, f"lr{lr}", f"train.lr={lr}")
    first = significance(find_runs([str(tmp_path)]))[0]
    assert (first["a"], first["b"], first["note"]) == ("lr2e-2", "lr1e-9", "")
    a, b = (RunDir(tmp_path / name).read_predictions("best") for name in ("lr2e-2", "lr1e-9"))
    assert a.labels == b.labels
    only_a = sum(p == y != q for p, q, y in zip(a.predictions, b.predictions, a.labels))
    only_b = sum(q == y != p for p, q, y in zip(a.predictions, b.predictions, a.labels))
    assert only_a > only_b  # the run that learned is right where the untrained one is not
    assert (first["only_a"], first["only_b"], first["p_value"]) == (only_a, only_b, mcnemar_exact(only_a, only_b))


def test_seed_groups_mean_spread_and_interval(tmp_path):
    from loralab import config as config_io
    from loralab.runs.results import RunRecord, seed_groups
    from loralab.runs.rundir import Origin, Summary

    def record(name, seed, peak, **train):
        cfg = config_io.from_dict({"train": {"seed": seed, **train}})
        summary = Summary(
            name=name, peak_val_accuracy=peak, peak_step=100, final=None, steps_done=1200, val_rows=640, trainable=None
        )
        return RunRecord(RunDir(tmp_path / name), cfg, summary, [], Origin())

    groups = seed_groups(
        [
            record("a42", 42, 0.90),
            record("a43", 43, 0.91),
            record("a44", 44, 0.92, eval_batch_size=4),
            record("a42-copy", 42, 0.95),  # the same seed filed twice: one experiment, not a fourth draw
            record("b42", 42, 0.80, lr=1e-3),
        ]
    )
    a, b = groups
    assert a["seeds"] == [42, 43, 44] and a["peaks"] == [0.90, 0.91, 0.92]
    assert a["mean"] == pytest.approx(0.91) and a["sd"] == pytest.approx(0.01)
    assert a["ci_high"] - a["mean"] == pytest.approx(4.3027 * 0.01 / 3**0.5, rel=1e-4)  # t(0.975, 2 df)
    assert b["peaks"] == [0.80] and b["sd"] is None and b["ci_low"] is None


def test_seed_groups_name_the_settings_that_tell_configurations_apart(tmp_path):
    from loralab import config as config_io
    from loralab.runs.results import RunRecord, seed_groups
    from loralab.runs.rundir import Origin, Summary

    def record(name, peak, **train):
        cfg = config_io.from_dict({"train": {"lr": 1e-3, **train}})
        summary = Summary(
            name=name, peak_val_accuracy=peak, peak_step=100, final=None, steps_done=1200, val_rows=640, trainable=None
        )
        return RunRecord(RunDir(tmp_path / name), cfg, summary, [], Origin())

    decayed, plain = seed_groups([record("decay", 0.92, layer_lr_decay=0.9), record("plain", 0.91)])
    assert decayed["configuration"].endswith("lr=0.001 steps=1200 precision=auto train.layer_lr_decay=0.9")
    assert plain["configuration"].endswith("train.layer_lr_decay=1.0")
    # Settings every configuration shares stay out of the line.
    assert "label_smoothing" not in decayed["configuration"]


def test_runs_against_pairs_each_run_with_the_reference_of_its_seed(tmp_path, model_dirs, tiny_data, capsys):
    """`loralab runs DIRS --against REF`: each run meets the reference run of its own seed, on the same rows."""
    from conftest import train_tiny

    from loralab.runs.results import against_references

    for seed in (1, 2):
        train_tiny(
            model_dirs["roberta"], tiny_data, tmp_path / "ref", f"seed{seed}", f"train.seed={seed}", "train.lr=1e-9"
        )
        train_tiny(model_dirs["roberta"], tiny_data, tmp_path / "new", f"seed{seed}", f"train.seed={seed}")
    train_tiny(model_dirs["roberta"], tiny_data, tmp_path / "new", "seed3", "train.seed=3")

    rows = {
        r["a"]: r for r in against_references(find_runs([str(tmp_path / "new")]), find_runs([str(tmp_path / "ref")]))
    }
    assert rows["seed3"]["p_value"] is None and rows["seed3"]["note"] == "no reference run with seed 3"
    for seed in (1, 2):
        row = rows[f"seed{seed}"]
        new, ref = (RunDir(tmp_path / side / f"seed{seed}").read_predictions("best") for side in ("new", "ref"))
        only_new = sum(p == y != q for p, q, y in zip(new.predictions, ref.predictions, new.labels))
        only_ref = sum(q == y != p for p, q, y in zip(new.predictions, ref.predictions, new.labels))
        assert (row["seed"], row["only_a"], row["only_b"]) == (seed, only_new, only_ref)
        assert row["p_value"] == mcnemar_exact(only_new, only_ref)
        assert only_new > only_ref  # lr 2e-2 learned the task, lr 1e-9 did not

    capsys.readouterr()  # what training printed
    assert main(["runs", str(tmp_path / "new"), "--against", str(tmp_path / "ref")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["run", "seed", "peak"] and len(lines) == 4
    assert "no reference run with seed 3" in lines[3]
    # References kept in several folders: --against once for each.
    train_tiny(model_dirs["roberta"], tiny_data, tmp_path / "ref3", "seed3", "train.seed=3", "train.lr=1e-9")
    capsys.readouterr()
    assert (
        main(["runs", str(tmp_path / "new"), "--against", str(tmp_path / "ref"), "--against", str(tmp_path / "ref3")])
        == 0
    )
    assert "no reference" not in capsys.readouterr().out

    # A reference folder holding two configurations of one seed is ambiguous: one line, exit 2.
    train_tiny(model_dirs["roberta"], tiny_data, tmp_path / "ref", "other", "train.seed=1", "train.lr=1e-3")
    capsys.readouterr()
    assert main(["runs", str(tmp_path / "new"), "--against", str(tmp_path / "ref")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("loralab: error: --against:") and "two configurations with seed 1" in err
    assert main(["runs", str(tmp_path / "new"), "--against", str(tmp_path / "new" / "missing")]) == 2
    assert "no such run directory" in capsys.readouterr().err


@needs_study
def test_report_of_a_mixed_folder_in_a_real_browser(tmp_path, model_dirs, tiny_data):
    """The imported roberta-base study, a run of our own, a seeded sweep and a search in one folder: no
    figure mixes runs of another model or compute, a search is drawn by the settings it varied, numbers
    never wrap, nothing overflows 1280 px, no console error."""
    import yaml
    from conftest import train_tiny

    from loralab.reporting.plots import plot_runs
    from loralab.sweeps.sweep import SweepOptions, run_search, run_sweep

    folder = tmp_path / "runs"
    import_hf([str(SEED_STUDY)], str(folder / "imported"), model_config=ROBERTA_BASE_CONFIG)
    train_tiny(model_dirs["roberta"], tiny_data, folder / "mine", "own-run")
    scores = write_csv(tmp_path / "scores.csv", regression_rows(200))
    train_tiny(model_dirs["roberta"], scores, folder / "mine", "scores", "data.task=regression", "data.label_names=[]")
    base = {
        "base": str(SEED_CONFIG),
        "overrides": [f"model.name={model_dirs['roberta']}", f"data.train={tiny_data}", "data.val_size=64",
                      "data.max_length=32", "train.steps=8", "train.eval_every=4", "train.batch_size=16"],
    }  # fmt: skip
    sweep = tmp_path / "seeded.yaml"
    sweep.write_text(yaml.safe_dump(base | {"name": "seeded", "seeds": [1, 2], "groups": {"scope": {"zip": {
        "lora.scope": [["value"], ["query", "value"]], "lora.r": [4, 2]}}}}, sort_keys=False))  # fmt: skip
    run_sweep(SweepOptions(str(sweep), runs=str(folder)), log=lambda *_: None)
    search = tmp_path / "search.yaml"
    search.write_text(yaml.safe_dump(base | {"name": "search", "space": {
        "train.lr": {"low": 1e-3, "high": 3e-2, "log": True}, "lora.r": {"low": 1, "high": 8},
        "lora.dropout": {"low": 0.0, "high": 0.2}}}))  # fmt: skip
    run_search(SweepOptions(str(search), runs=str(folder), trials=3), log=lambda *_: None)
    records = find_runs([str(folder)])
    captions: dict[str, str] = {}
    plotted = plot_runs(records, tmp_path / "figures", captions)
    # The search's trials varied three settings at once: drawn by all three, not "by learning rate".
    assert any("varying r, dropout, lr" in captions[stem] for stem in plotted if "search" in stem), captions
    # The study's scope figure holds the study's scopes only; the sweep's its own two, averaged over seeds.
    assert set(plotted["fig1_scope"]) >= {"query,key", "value"} and len(plotted["fig1_scope"]) == 6
    seeded = [stem for stem in plotted if stem.startswith("fig1_scope_")]
    scopes = [{label.split(", r=")[0] for label in plotted[stem]} for stem in seeded]
    assert {"value", "query,value"} in scopes and all(len(plotted[stem]) == 2 for stem in seeded[-1:]), captions
    out = tmp_path / "report.html"
    assert main(["report", str(folder), "--out", str(out)]) == 0
    with report_in_chromium(out) as page:
        # No number or header wraps onto a second line, in any table: only prose cells may.
        wrapped = page.evaluate(  # a text on one line has one line box
            "[...document.querySelectorAll('td:not(.text), th')].filter(td => { const r = document.createRange(); "
            "r.selectNodeContents(td); return r.getClientRects().length > 1; }).map(td => td.textContent)"
        )
        assert wrapped == []
        # Unlike runs are never ranked together: each configurations table holds one metric, and the
        # regression run has a table (and a best run) of its own.
        metrics = page.evaluate(
            "[...document.querySelectorAll('table[id^=configurations]')].map(t => "
            "[...t.tBodies[0].rows].map(r => r.cells[11].textContent))"
        )
        assert all(len(set(column)) == 1 for column in metrics) and [["pearson"]] == [
            sorted(set(column)) for column in metrics if "pearson" in column
        ]
        assert len(metrics) == page.evaluate("document.querySelectorAll('section h3:first-of-type').length") >= 3
        captions_shown = page.evaluate("[...document.querySelectorAll('figcaption')].map(c => c.textContent)")
        assert all(" " in caption for caption in captions_shown)  # titles, not file names such as fig1_scope
        assert len(captions_shown) == len(set(captions_shown))
