"""The `loralab` command: train, budget."""

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
