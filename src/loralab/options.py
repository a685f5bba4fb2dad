"""The typed options of the commands that take more than a configuration: one dataclass per command, each field
with its help, shared by the CLI (which builds its flags from them: `add_arguments`) and the code (which takes
the object). One source for each flag's name, type, default, choices and help, as litgpt's argument objects.

Kept light (no torch): `loralab --help` builds every command's flags from here.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any

WHICH = ("best", "last")
WHICH_HELP = "the adapter at the validation peak (best) or after the final evaluation (last)"
PRECISION_HELP = (
    "trained: the precision the run trained in, where this device computes it natively (so a run gives back its "
    "own validation predictions), else auto; auto: bf16 where the device computes it natively (CUDA, CPUs with "
    "AVX512-BF16 or AMX), else fp32; an ONNX export runs in its own precision"
)
PRECISIONS = ("trained", "auto", "fp32", "bf16")
BASE_MODEL_HELP = "the pretrained model's folder or hub id, where the run's is not on this machine"


def option(help: str, default: Any = dataclasses.MISSING, *, choices=None, positional: bool = False, **extra):
    """A field of an options object: its default and its flag's help (and choices, or a positional argument)."""
    metadata = {"help": help, "choices": choices, "positional": positional, **extra}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def add_arguments(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    """One argparse argument per field of `cls`: `--max-batch` for max_batch, typed by the annotation, with
    the field's default, choices and help. A bool that defaults to true is turned off by `--no-NAME`."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or "help" not in f.metadata:
            continue
        meta, kind = f.metadata, hints[f.name]
        flag = "--" + f.name.replace("_", "-")
        shown = meta["help"]
        if kind is bool:
            if f.default is True:
                parser.add_argument(f"--no-{f.name.replace('_', '-')}", dest=f.name, action="store_false", help=shown)
            else:
                parser.add_argument(flag, action="store_true", help=shown)
            continue
        optional = typing.get_origin(kind) in (typing.Union, types.UnionType)
        base = next(a for a in typing.get_args(kind) if a is not type(None)) if optional else kind  # X | None -> X
        listed = typing.get_origin(base) is list
        element = typing.get_args(base)[0] if listed else base
        keywords: dict[str, Any] = {"help": shown, "type": element}
        if meta["choices"]:
            keywords["choices"] = meta["choices"]
        if meta.get("metavar"):
            keywords["metavar"] = meta["metavar"]
        if meta["positional"]:
            if listed:
                keywords["nargs"] = meta.get("nargs", "+")
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
                keywords["default"] = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            parser.add_argument(f.name, **keywords)
            continue
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            keywords["required"] = True
        elif f.default is not None:
            keywords["default"] = f.default
            keywords["help"] = f"{shown} (default {f.default})"
        parser.add_argument(flag, **keywords)


@dataclass
class InferenceOptions:
    """How `eval` and `predict` run a trained run."""

    which: str = option(WHICH_HELP, "best", choices=WHICH)
    batch_size: int | None = option(
        "rows per forward pass (default: the run's train.eval_batch_size, the batches its own evaluations ran in, "
        "so that eval gives back their numbers exactly; 16 ran faster than 64 on 2 CPU cores)",
        None,
    )
    precision: str = option(PRECISION_HELP, "trained", choices=PRECISIONS)
    base_model: str | None = option(BASE_MODEL_HELP, None)
    threads: int | None = option("intra-op threads (default: one per core)", None)


@dataclass
class PredictOptions:
    """What `predict` reads and writes (how the model runs: InferenceOptions)."""

    input: str = option("CSV, JSONL, parquet, or a pickled datasets.Dataset (with --allow-pickle)")
    out: str = option("the CSV to write")
    text_column: str | None = option("column of --input holding the texts (default: the run's)", None)
    text_pair_column: str | None = option(
        "column of --input holding the second texts (default: the run's, if it reads pairs)", None
    )
    allow_pickle: bool = option("allow unpickling --input (runs code from it)", False)
    label_names: bool = option("write class names, not indices", False)
    probs: bool = option("add a probability column per class", False)


@dataclass
class ExportOptions:
    """What `loralab export` is given."""

    which: str = option(WHICH_HELP, "best", choices=WHICH)
    format: str = option("hf: a merged transformers folder; onnx: an ONNX graph for ONNX Runtime", "hf",
                         choices=("hf", "onnx"))  # fmt: skip
    adapter_only: bool = option("the adapter and head files with a model card (hf only)", False)
    quantize: str | None = option("with --format onnx: int8 weights (ONNX Runtime's dynamic quantization)", None,
                                  choices=("int8",))  # fmt: skip
    check_data: str | None = option("labelled rows to check the export on (default: the run's validation rows)", None)
    check: bool = option("skip the check (export.json says so)", True)
    base_model: str | None = option(BASE_MODEL_HELP, None)


@dataclass
class ServeOptions:
    """What `loralab serve` is given."""

    runs: list[str] = option(
        "run directories or ONNX exports, or NAME=RUN to serve one under another name", positional=True, metavar="RUN"
    )
    host: str = option("address to listen on (0.0.0.0: all)", "127.0.0.1")
    port: int = option("port (0: any free one, printed)", 8000)
    which: str = option(WHICH_HELP, "best", choices=WHICH)
    precision: str = option(PRECISION_HELP, "trained", choices=PRECISIONS)
    base_model: str | None = option(BASE_MODEL_HELP, None)
    threads: int | None = option("intra-op threads (default: one per core); for one replica per core group", None)
    max_batch: int = option("rows classified together, from any requests", 32)
    max_tokens: int = option("padded tokens in one forward pass: a batch of mixed lengths runs in several", 2048)
    max_wait_ms: float = option("how long the first waiting row waits for others to share its batch", 5.0)
    max_texts: int = option("texts in one request, at most (more: 413)", 256)
    max_chars: int = option("characters in one text, at most (more: 413; the tokenizer reads a text whole)", 65_536)
    max_queue: int = option("rows waiting for a batch, at most (more: 503 with Retry-After)", 1024)
    read_timeout: float = option("seconds for a request to arrive whole (stalled: 408, closed)", 10.0)
    admin_token: str | None = option(
        "turns on POST /v1/adapters and DELETE /v1/adapters/NAME (add and remove adapters while serving) for "
        "requests with 'Authorization: Bearer TOKEN'; with it, even one run stays unmerged so others can join it",
        None,
    )
    runs_dir: str | None = option("the folder whose runs and exports POST /v1/adapters may add (with --admin-token)",
                                  None)  # fmt: skip


@dataclass
class SweepOptions:
    """What `loralab sweep` and `loralab search` are given: one object from the CLI to each worker."""

    file: str = option("sweep or search YAML file", positional=True)
    overrides: list[str] = option(
        "config overrides applied to every trial (after the file's own)", [], positional=True, nargs="*",
        metavar="section.key=value",
    )  # fmt: skip
    storage: str | None = option(
        "Optuna storage URL (default: sqlite:///RUNS/NAME/optuna.db); postgresql://... lets workers on many machines "
        "share one study",
        None,
    )
    workers: int = option("trials run in parallel on this machine", 1)
    per_gpu: int | None = option("instead of --workers: this many workers on each visible GPU", None)
    pack: str = option(
        "trials each worker trains together, one forward and backward pass per step through the shared base: a "
        "number, or auto (8 on a CUDA GPU; 1 on a CPU, where packing a real model is not yet measured)",
        "auto",
    )
    runs: str = option("folder of run directories", "runs")
    heartbeat: int = option("seconds between worker heartbeats; a trial silent for twice this is taken as dead", 30)
    trials: int = option("a search's trials to complete or prune, all workers together", 0)
