"""The `loralab` command: train, budget, eval, predict, export."""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from .errors import LoralabError


def _config_arguments(parser: argparse.ArgumentParser, positional: bool) -> None:
    if positional:
        parser.add_argument("config", help="YAML config file")
    else:
        parser.add_argument("--config", "-c", required=True, help="YAML config file")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")


def cmd_train(args) -> int:
    from . import config
    from .train import train

    train(config.load(args.config, args.overrides), resume=args.resume)
    return 0


def cmd_budget(args) -> int:
    from . import config
    from .budget import breakdown_for, largest_fitting_rank, load_model_config

    cfg = config.load(args.config, args.overrides)
    model_config = load_model_config(cfg)
    breakdown, _ = breakdown_for(cfg, model_config)
    print(breakdown.format())
    print(f"largest uniform lora.r within the budget: {largest_fitting_rank(cfg, model_config)}")
    return 0 if breakdown.headroom >= 0 else 1


def cmd_eval(args) -> int:
    from .inference import evaluate_run

    report = evaluate_run(args.run_dir, args.data, args.split, args.which, args.batch_size, args.precision)
    low, high = report["accuracy_95ci"]
    print(f"{report['data']}: {report['rows']} rows, adapter {report['adapter']}")
    print(f"accuracy  {report['accuracy']:.4f}  (95% CI {low:.4f}-{high:.4f})")
    print(f"macro-F1  {report['macro_f1']:.4f}")
    print(f"{'class':<14} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}")
    for name, row in report["per_class"].items():
        print(f"{name:<14} {row['precision']:>9.4f} {row['recall']:>9.4f} {row['f1']:>9.4f} {row['support']:>8}")
    print(f"saved: {report['saved_in']}/ (metrics.json, predictions.json, confusion.png)")
    return 0


def cmd_predict(args) -> int:
    from .inference import predict_file

    rows = predict_file(
        args.run_dir, args.input, args.out, args.text_column, args.which, args.allow_pickle,
        args.label_names, args.probs, args.batch_size, args.precision,
    )  # fmt: skip
    print(f"wrote {rows} predictions to {args.out}")
    return 0


def cmd_export(args) -> int:
    from .inference import export_run

    out = export_run(args.run_dir, args.out_dir, args.which, args.adapter_only)
    print(f"exported {'adapter' if args.adapter_only else 'merged model'} to {out}")
    return 0


def _inference_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN", help="run directory (runs/NAME)")
    parser.add_argument("--which", choices=["best", "last"], default="best", help="which saved adapter")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loralab", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="fine-tune one configuration")
    _config_arguments(train, positional=False)
    train.add_argument("--resume", action="store_true", help="continue the run directory from its last checkpoint")
    train.set_defaults(run=cmd_train)

    budget = commands.add_parser("budget", help="print the trainable-parameter breakdown (reads config.json only)")
    _config_arguments(budget, positional=True)
    budget.set_defaults(run=cmd_budget)

    evaluate = commands.add_parser("eval", help="accuracy with its 95%% interval, per-class metrics, confusion matrix")
    _inference_arguments(evaluate)
    evaluate.add_argument("--data", help="labelled file or hub id (default: the run's validation rows)")
    evaluate.add_argument("--split", default="test", help="hub split of --data")
    evaluate.set_defaults(run=cmd_eval)

    predict = commands.add_parser("predict", help="classify unlabelled texts into an ID,Label CSV")
    _inference_arguments(predict)
    predict.add_argument("--input", required=True, help="CSV, JSONL, parquet, or a pickled datasets.Dataset")
    predict.add_argument("--out", required=True, help="output CSV")
    predict.add_argument("--text-column", default="text")
    predict.add_argument("--allow-pickle", action="store_true", help="allow unpickling --input (runs code from it)")
    predict.add_argument("--label-names", action="store_true", help="write class names, not indices")
    predict.add_argument("--probs", action="store_true", help="add a probability column per class")
    predict.set_defaults(run=cmd_predict)

    export = commands.add_parser("export", help="write a merged Hugging Face model folder (or --adapter-only)")
    export.add_argument("run_dir", metavar="RUN")
    export.add_argument("out_dir", metavar="OUT_DIR")
    export.add_argument("--which", choices=["best", "last"], default="best")
    export.add_argument("--adapter-only", action="store_true", help="the adapter and head files with a model card")
    export.set_defaults(run=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", category=FutureWarning)
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except LoralabError as err:
        print(f"loralab: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("loralab: interrupted (resume with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
