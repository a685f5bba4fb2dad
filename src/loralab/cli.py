"""loralab: LoRA fine-tuning of transformer encoders for text classification under a hard budget of
trainable parameters (head included). Commands: train, budget, eval, predict, export, serve, sweep,
search, dashboard, runs, import-hf, plot, report; `loralab COMMAND --help` for each."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import warnings

from . import strictjson
from .config import TASK_METRICS
from .errors import LoralabError
from .options import add_arguments


def _config_arguments(parser: argparse.ArgumentParser, positional: bool) -> None:
    if positional:
        parser.add_argument("config", help="YAML config file")
    else:
        parser.add_argument("--config", "-c", required=True, help="YAML config file")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")


def cmd_train(args) -> int:
    from . import config
    from .training.train import train

    train(config.load(args.config, args.overrides), resume=args.resume)
    return 0


def cmd_budget(args) -> int:
    from . import config
    from .budget.count import (
        breakdown_for,
        format_plan,
        largest_fitting_rank,
        methods_table,
        plan_table,
        planning_shapes,
    )
    from .methods import method_of

    if args.config_file:  # `--config FILE`, as train: a positional word is then the first override
        args.overrides = [args.config, *args.overrides] if args.config else args.overrides
        args.config = args.config_file
    values = {"model.name": args.model} if args.model else {}
    if args.budget:
        values["lora.budget"] = args.budget
    if args.labels:
        values["data.label_names"] = [f"class{i}" for i in range(args.labels)]
    cfg = config.load(args.config, args.overrides, values)
    model = planning_shapes(cfg)
    if args.plan:
        layers = parse_layers(args.layers) if args.layers else None
        print(format_plan(plan_table(cfg, model, layers), cfg.lora.budget))
        print()
        scope = ",".join(cfg.lora.scope)
        title = f"each method at scope {scope}: its largest size within {cfg.lora.budget:,} trainable parameters"
        print(format_plan(methods_table(cfg, model), cfg.lora.budget, title))
        return 0
    breakdown, _ = breakdown_for(cfg, model)
    print(breakdown.format())
    if breakdown.over_budget:  # the same words as train's refusal
        print(f"over budget: {breakdown.total:,} trainable parameters > lora.budget {breakdown.budget:,}")
    field = method_of(cfg).size_field
    if breakdown.budget is not None and field:
        print(f"largest uniform lora.{field} within the budget: {largest_fitting_rank(cfg, model)}")
    return 1 if breakdown.over_budget else 0


def parse_layers(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise LoralabError(
            f"--layers: '{text}' is not a comma-separated list of layer numbers, e.g. 8,9,10,11"
        ) from None


def options_from(cls, args, **given):
    """A command's typed options object (InferenceOptions, ExportOptions, ...): each field from the parsed
    argument of the same name, where there is one, unless given here."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return cls(**(values | given))


def inference_options(args):
    from .options import InferenceOptions

    return options_from(InferenceOptions, args)


def cmd_eval(args) -> int:
    from .hardware import Precision
    from .serving.inference import evaluate_run

    report = evaluate_run(args.run_dir, args.data, args.split, inference_options(args))
    if args.json:
        print(strictjson.dumps(report))
        return 0
    engine = report["engine"]
    print(f"{report['data']}: {report['rows']} rows, adapter {report['adapter']}, {report['task']}")
    print(f"{engine['engine']} on {engine['device']}, {Precision(**engine['precision']).line()}")
    for name in TASK_METRICS[report["task"]]:
        low, high = report[f"{name}_95ci"]
        chosen = "  (picks the peak)" if name == report["metric"] else ""
        if math.isnan(report[name]):
            print(f"{name:<16} undefined ({strictjson.reason(name)}){chosen}")
            continue
        print(f"{name:<16} {report[name]:.4f}  (95% CI {low:.4f}-{high:.4f}){chosen}")
    if "ece" in report:  # how far the probabilities are from meaning what they say
        low, high = report["ece_95ci"]
        print(f"{'ece':<16} {report['ece']:.4f}  (95% CI {low:.4f}-{high:.4f}; 0: calibrated)")
    if "per_class" in report:
        print(f"{'class':<14} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}")
        for name, row in report["per_class"].items():
            print(f"{name:<14} {row['precision']:>9.4f} {row['recall']:>9.4f} {row['f1']:>9.4f} {row['support']:>8}")
    if "per_label" in report:
        print(f"{'label':<14} {'f1':>9} {'support':>8} {'threshold':>9}")
        for name, row in report["per_label"].items():
            print(f"{name:<14} {row['f1']:>9.4f} {row['support']:>8} {row['threshold']:>9.2f}")
    figure = ", confusion.png" if "per_class" in report else ""
    print(f"saved: {report['saved_in']}/ (metrics.json, predictions.json{figure})")
    return 0


def cmd_predict(args) -> int:
    from .options import PredictOptions
    from .serving.inference import predict_file

    predict = options_from(PredictOptions, args)
    done = predict_file(args.run_dir, predict, inference_options(args))
    print(f"wrote {done['rows']} predictions to {args.out} ({done['engine']}, {done['precision']})")
    return 0


def cmd_export(args) -> int:
    from .options import ExportOptions
    from .serving.export import export_run

    options = options_from(ExportOptions, args)
    out, check = export_run(args.run_dir, args.out_dir, options)
    if "skipped" in check:
        print(f"exported to {out} (not checked: --no-check)")
    else:
        low, high = check["difference_95ci"]
        p = check["p_value"]
        print(
            f"exported to {out}; checked on {check['rows']} rows: {check['same_answer']} answered the same, "
            f"probabilities within {check['max_probability_difference']:.2g}, {check['metric']} "
            f"{check['export']:.4f} (adapter {check['adapter']:.4f}; difference {check['difference']:+.4f}, 95% CI "
            f"{low:+.4f} to {high:+.4f}, p {p:.3g}, on {check['rows']} rows); see export.json"
        )
        speed = check["speed"]
        verdict = "" if speed["ratio"] > 1.05 else ": the export is no faster than the adapter on this machine"
        print(
            f"speed on this machine: {speed['export_rows_per_s']:.1f} rows/s ({speed['export_engine']}) against "
            f"{speed['adapter_rows_per_s']:.1f} ({speed['adapter_engine']}), {speed['ratio']:.2f}x{verdict}"
        )
    return 0


def cmd_serve(args) -> int:
    from .options import ServeOptions
    from .serving.serve import serve

    options = options_from(ServeOptions, args)
    serve(options)
    return 0


def cmd_runs(args) -> int:
    from .runs.results import (
        against_references,
        find_runs,
        format_against,
        format_seed_groups,
        format_table,
        seed_groups,
        sort_rows,
        to_csv,
    )

    records = find_runs(args.paths)
    rows = sort_rows([r.row() for r in records], args.sort)
    if args.against:
        references = find_runs(args.against)
        if not references:
            raise LoralabError(
                f"--against: no finished run under {', '.join(args.against)}; name a run directory or a folder of runs"
            )
        compared = against_references(records, references)
        print(format_against(compared) if compared else "no finished runs to compare (only the reference)")
    elif args.by_seed:
        print(
            format_seed_groups(seed_groups(records))
            if records
            else f"no finished runs under {', '.join(args.paths or ['runs'])}"
        )
    elif args.csv:
        print(to_csv(rows), end="")
    elif args.json:
        print(strictjson.dumps(rows, indent=2))
    else:
        print(format_table(rows) if rows else f"no finished runs under {', '.join(args.paths or ['runs'])}")
    return 0


def cmd_import_hf(args) -> int:
    from .runs.hf_import import import_hf

    written = import_hf(args.paths, args.out, args.val_rows, args.model_config)
    print(f"imported {len(written)} runs into {args.out}")
    return 0


def _finished_runs(paths: list[str]):
    from .runs.results import find_runs

    records = find_runs(paths)
    if not records:
        raise LoralabError(f"no finished runs under {', '.join(paths or ['runs'])}")
    return records


def cmd_plot(args) -> int:
    from .reporting.plots import plot_runs

    plotted = plot_runs(_finished_runs(args.paths), args.out)
    print(f"wrote {len(plotted)} figures (metrics, calibration) and the loss curves (PNG and SVG) to {args.out}")
    return 0


def cmd_report(args) -> int:
    from .reporting.report import write_report

    print(f"wrote {write_report(_finished_runs(args.paths), args.out, args.title)}")
    return 0


def sweep_options(args):
    from .options import SweepOptions

    return options_from(SweepOptions, args)


def cmd_sweep(args) -> int:
    from .sweeps.sweep import run_sweep

    return 0 if run_sweep(sweep_options(args))["unfinished"] == 0 else 1


def cmd_search(args) -> int:
    from .sweeps.sweep import run_search

    run_search(sweep_options(args))
    return 0


def cmd_dashboard(args) -> int:
    from .sweeps.storage import serve_dashboard

    serve_dashboard(args.file, args.storage, args.runs, args.host, args.port)
    return 0


def _inference_arguments(parser: argparse.ArgumentParser, run_help: str = "run directory (runs/NAME)") -> None:
    from .options import InferenceOptions

    parser.add_argument("run_dir", metavar="RUN", help=run_help)
    add_arguments(parser, InferenceOptions)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .options import ExportOptions, PredictOptions, ServeOptions, SweepOptions

    parser = argparse.ArgumentParser(prog="loralab", description=__doc__)
    parser.add_argument("--version", action="version", version=f"loralab {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="fine-tune one configuration")
    _config_arguments(train, positional=False)
    train.add_argument("--resume", action="store_true", help="continue the run directory from its last checkpoint")
    train.set_defaults(run=cmd_train)

    budget = commands.add_parser("budget", help="print the trainable-parameter breakdown (reads config.json only)")
    budget.add_argument("config", nargs="?", help="YAML config file (default: the built-in defaults)")
    budget.add_argument("--config", "-c", dest="config_file", help="the YAML config file, as train takes it")
    budget.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    budget.add_argument("--plan", action="store_true", help="table of the largest rank per scope and head mode")
    budget.add_argument("--model", help="hub id or folder (overrides model.name)")
    budget.add_argument("--budget", type=int, help="trainable-parameter budget (overrides lora.budget)")
    budget.add_argument("--labels", type=int, help="number of classes")
    budget.add_argument("--layers", help="with --plan: adapt only these layers, e.g. 8,9,10,11")
    budget.set_defaults(run=cmd_budget)

    evaluate = commands.add_parser("eval", help="accuracy with its 95%% interval, per-class metrics, confusion matrix")
    _inference_arguments(evaluate)
    evaluate.add_argument("--data", help="labelled file or hub id (default: the run's validation rows)")
    evaluate.add_argument("--split", default="test", help="hub split of --data")
    evaluate.add_argument("--json", action="store_true", help="print the metrics as one JSON object (for scripts)")
    evaluate.set_defaults(run=cmd_eval)

    predict = commands.add_parser(
        "predict", help="answer for unlabelled texts: an ID,Label (ID,Labels; ID,Score) CSV in input order"
    )
    _inference_arguments(predict, "run directory (runs/NAME), or an ONNX export (loralab export RUN OUT --format onnx)")
    add_arguments(predict, PredictOptions)
    predict.set_defaults(run=cmd_predict)

    export = commands.add_parser(
        "export", help="a merged Hugging Face folder, the adapter alone, or ONNX (int8): checked against the adapter"
    )
    export.add_argument("run_dir", metavar="RUN", help="run directory (runs/NAME)")
    export.add_argument("out_dir", metavar="OUT_DIR", help="a new folder to write the export into")
    add_arguments(export, ExportOptions)
    export.set_defaults(run=cmd_export)

    server = commands.add_parser(
        "serve", help="an HTTP server for runs (one copy of their base, their adapters beside it) and ONNX exports"
    )
    add_arguments(server, ServeOptions)
    server.set_defaults(run=cmd_serve)

    sweep = commands.add_parser("sweep", help="run a sweep file's trials (skips finished ones, resumes interrupted)")
    add_arguments(sweep, SweepOptions, skip=("trials",))
    sweep.set_defaults(run=cmd_sweep)

    search = commands.add_parser("search", help="budget-constrained TPE search with pruning over a declared space")
    add_arguments(search, SweepOptions, skip=("trials", "pack"))  # a search trains its trials one by one
    search.add_argument("--trials", type=int, required=True, help="trials to complete or prune, all workers together")
    search.set_defaults(run=cmd_search)

    dashboard = commands.add_parser("dashboard", help="optuna-dashboard on a sweep's study: watch trials live")
    dashboard.add_argument("file", nargs="?", help="the sweep or search file (its study is beside its runs)")
    dashboard.add_argument("--storage", help="Optuna storage URL instead (e.g. postgresql://...)")
    dashboard.add_argument("--runs", default="runs", help="folder of run directories")
    dashboard.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: every interface)")
    dashboard.add_argument("--port", type=int, default=8080, help="port to serve on")
    dashboard.set_defaults(run=cmd_dashboard)

    runs = commands.add_parser("runs", help="table of finished runs (peak accuracy with its 95%% interval)")
    runs.add_argument("paths", nargs="*", metavar="DIR", help="run directories or folders of them (default: runs)")
    runs.add_argument("--sort", default="-peak", help="column to sort by; '-' for descending (default: -peak)")
    runs.add_argument("--csv", action="store_true", help="the table as CSV, for spreadsheets and scripts")
    runs.add_argument("--json", action="store_true", help="the table as a JSON list of rows")
    runs.add_argument(
        "--by-seed",
        action="store_true",
        help="one line per configuration: mean peak over its seeds, spread, 95%% interval",
    )
    runs.add_argument(
        "--against",
        metavar="REF",
        action="append",
        help="compare each run with the reference run of its seed (a run directory or a folder of one "
        "configuration's seeds; repeat for seeds kept apart): difference, exact McNemar test on the same rows",
    )
    runs.set_defaults(run=cmd_runs)

    importer = commands.add_parser(
        "import-hf", help="import Hugging Face trainer_state.json + adapter_config.json results"
    )
    importer.add_argument("paths", nargs="+", metavar="PATH", help="files or folders to search")
    importer.add_argument("--out", default="runs/imported", help="where the run directories go")
    importer.add_argument("--val-rows", type=int, default=640, help="validation rows the accuracies were measured on")
    importer.add_argument("--model-config", help="folder or hub id of the base model's config (for trainable counts)")
    importer.set_defaults(run=cmd_import_hf)

    plot = commands.add_parser("plot", help="the study's figures (PNG and SVG) from runs")
    plot.add_argument("paths", nargs="*", metavar="RUNS", help="run directories or folders of them (default: runs)")
    plot.add_argument("--out", default="figures", help="folder for the figures (default: figures)")
    plot.set_defaults(run=cmd_plot)

    report = commands.add_parser("report", help="one self-contained HTML report of runs")
    report.add_argument("paths", nargs="*", metavar="RUNS", help="run directories or folders of them (default: runs)")
    report.add_argument("--out", default="report.html", help="the HTML file to write (default: report.html)")
    report.add_argument("--title", default="loralab report", help="the page's title")
    report.set_defaults(run=cmd_report)
    return parser


def attach_dash_values(argv: list[str]) -> list[str]:
    """`--sort -peak_accuracy` as `--sort=-peak_accuracy`: argparse would take the value for an option."""
    out = []
    for arg in argv:
        if out and out[-1] == "--sort" and arg.startswith("-") and not arg.startswith("--"):
            out[-1] = f"--sort={arg}"
        else:
            out.append(arg)
    return out


def parse_intermixed(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Options and positionals in any order: argparse fills a command's list positional (overrides, paths,
    runs) from the words before the first option only, so the words after one are added to it here.
    (argparse's own parse_intermixed_args does not take sub-commands.)"""
    args, extra = parser.parse_known_args(argv)
    options = [word for word in extra if word.startswith("-")]
    lists = [name for name in ("overrides", "paths", "runs") if isinstance(getattr(args, name, None), list)]
    if options or (extra and not lists):
        parser.parse_args(argv)  # argparse's own one-line error and exit 2, naming what it did not recognise
    if extra:
        getattr(args, lists[0]).extend(extra)
    return args


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", category=FutureWarning)
    args = parse_intermixed(build_parser(), attach_dash_values(sys.argv[1:] if argv is None else argv))
    if args.command in LOADS_MODELS:  # transformers (and torch) only for the commands that need them: not --help
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # a "Loading weights" bar per load; ours is the one that matters
    try:
        return args.run(args)
    except LoralabError as err:
        print(f"loralab: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `loralab runs | head`
        return 0
    except OSError as err:  # a path the writers above did not meet first: still one line naming it
        if not err.filename:
            raise
        print(f"loralab: error: {err.strerror}: {err.filename}: choose a path you can use", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # one line below the progress bar, saying how to go on
        print(f"\nloralab: interrupted; {RESUME.get(args.command, 'nothing was left half-written')}", file=sys.stderr)
        return 130


LOADS_MODELS = ("train", "eval", "predict", "export", "serve", "sweep", "search")
RESUME = {
    "train": "continue with the same command and --resume",
    "sweep": "run the same command again: finished trials are kept, interrupted ones resume from their checkpoints",
    "search": "run the same command again: finished trials are kept, interrupted ones resume from their checkpoints",
}


if __name__ == "__main__":
    sys.exit(main())
