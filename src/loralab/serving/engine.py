"""How a trained model answers, prepared in one place for eval, predict, serve and export's check.

An engine holds what turns texts into logits: the run's configuration and decision, the tokenizer, and
either a PyTorch model (on the CUDA device where there is one, in the precision the run trained in where that
device computes it natively unless told otherwise, its adapter beside the base as training evaluated it, or
several adapters beside one base) or an ONNX Runtime session over an export. Everything that answers calls
`engine.logits(engine.encode(texts, pairs))`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .. import hardware
from ..config import Config
from ..encoding import Encoded, encode_for
from ..errors import LoralabError
from ..modeling.forward import batched_logits, predict_logits
from ..modeling.model import cast_frozen_linears, load_trained, uses_token_types
from ..runs.rundir import DECISION, RunDir, read_config_file, read_decision_file
from ..tasks import Decision, task_for

# What an ONNX export folder holds beside the tokenizer (export.py writes them).
ONNX_FILE = "model.onnx"
RUN_CONFIG = "loralab.yaml"  # the run's configuration: task, labels, columns, max length
EXPORT_RECORD = "export.json"


def set_threads(threads: int | None) -> None:
    """Intra-op threads for this process (None: torch's default, one per core), for one replica per core group."""
    if threads is not None:
        if threads < 1:
            raise LoralabError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)


class TorchEngine:
    """A PyTorch model of a run, ready to answer: frozen, on the device, its frozen Linear weights cast
    once to the precision in use (autocast would cast them again for every batch)."""

    kind = "pytorch"

    def __init__(
        self, cfg: Config, decision: Decision, tokenizer, model, precision: str = "auto", trained: str | None = None
    ):
        """`trained`: the precision the run trained in, which `precision: trained` keeps where it is native."""
        self.cfg, self.decision, self.tokenizer, self.model = cfg, decision, tokenizer, model
        self.device = hardware.device()
        self.precision = hardware.resolve(precision, self.device, model.config.hidden_size, trained)
        model.requires_grad_(False)
        cast_frozen_linears(model, self.precision.used)
        model.to(self.device).eval()
        self.token_types = uses_token_types(tokenizer, model.config)

    def encode(self, texts: list[str], pairs: list[str] | None, data_cfg=None) -> Encoded:
        """As `data_cfg` (a run's data section; default this engine's run) reads them: max_length, chunking."""
        return encode_for(self.tokenizer, data_cfg or self.cfg.data, texts, pairs, self.token_types)

    def logits(
        self,
        data: Encoded,
        batch_size: int = 16,
        adapter_names: list[str] | None = None,
        max_tokens: int | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """One row of logits per row of `data`; `adapter_names`: each row's adapter, where several share the base."""
        return predict_logits(
            self.model,
            self.tokenizer,
            data,
            batch_size,
            self.device,
            hardware.autocast_for(self.precision.used, self.device),
            self.cfg.model.pooling,
            progress=progress,
            adapter_names=adapter_names,
            max_tokens=max_tokens,
        )

    def describe(self) -> dict:
        return {"engine": self.kind, "device": str(self.device), "precision": self.precision.record()}


class OnnxEngine:
    """An ONNX export (fp32 or int8) in an ONNX Runtime session on the CPU: the fastest CPU path."""

    kind = "onnx"

    def __init__(self, folder: str | Path, threads: int | None = None, kind: str | None = None):
        """`kind`: onnx or onnx-int8, where the folder's export.json does not say it yet (export's check)."""
        import onnxruntime as ort
        from transformers import AutoTokenizer

        self.folder = Path(folder)
        self.cfg = config_of(self.folder)
        self.decision = read_decision_file(self.folder / DECISION)
        self.tokenizer = AutoTokenizer.from_pretrained(self.folder)
        record = self.folder / EXPORT_RECORD
        self.format = kind or (json.loads(record.read_text()).get("format", "onnx") if record.exists() else "onnx")
        settings = ort.SessionOptions()
        if threads is not None:
            settings.intra_op_num_threads = threads
        graph = self.folder / ONNX_FILE
        try:
            self.session = ort.InferenceSession(str(graph), settings, providers=["CPUExecutionProvider"])
        except Exception as err:  # ONNX Runtime raises its own types (InvalidProtobuf, Fail, ...) for a bad file
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise LoralabError(
                f"{graph} cannot be read by ONNX Runtime ({reason[:200]}): the file is damaged or incomplete; "
                "export the run again (loralab export RUN OUT --format onnx)"
            ) from err
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.precision = hardware.Precision(
            "auto", "int8" if self.format == "onnx-int8" else "fp32", "the export's own weights"
        )

    def encode(self, texts: list[str], pairs: list[str] | None, data_cfg=None) -> Encoded:
        types = "token_type_ids" in self.inputs
        return encode_for(self.tokenizer, data_cfg or self.cfg.data, texts, pairs, types)

    def logits(
        self,
        data: Encoded,
        batch_size: int = 16,
        adapter_names: list[str] | None = None,
        max_tokens: int | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        if adapter_names is not None and len(set(adapter_names)) > 1:
            raise ValueError("an ONNX export holds one adapter: rows of several cannot share its session")

        def forward(batch, _indices) -> torch.Tensor:
            feed = {name: value.numpy().astype(np.int64) for name, value in batch.items() if name in self.inputs}
            return torch.from_numpy(self.session.run(["logits"], feed)[0])

        n_outputs = len(self.cfg.data.label_names)
        return batched_logits(forward, self.tokenizer, data, batch_size, n_outputs, "cpu", progress, max_tokens)

    def describe(self) -> dict:
        return {"engine": self.kind, "device": "cpu", "precision": self.precision.record(), "format": self.format}


def is_onnx_export(path: str | Path) -> bool:
    return (Path(path) / ONNX_FILE).is_file()


def config_of(path: str | Path) -> Config:
    """The configuration of a run or of an ONNX export, read before any weight: bad input is said at once."""
    if is_onnx_export(path):
        return read_config_file(Path(path) / RUN_CONFIG)
    return RunDir(Path(path)).read_config()


def open_engine(
    path: str | Path,
    which: str = "best",
    precision: str = "trained",
    base_model: str | None = None,
    threads: int | None = None,
    merged: bool = False,
) -> TorchEngine | OnnxEngine:
    """The engine for a run directory (its `which` adapter) or for an ONNX export folder: predict, eval, serve
    and export's check open models only here.

    A run's adapter stays beside its base, as training evaluated it: merged weights round differently in half
    precision (bf16(W + BA) is not bf16(W) plus the adapter's own product), and a merged model answered up to
    1.5e-3 away in probability, and another label on near ties, from the run's own validation predictions.
    Unmerged, in the precision it trained in, a run gives back its validation predictions bit for bit.
    `merged` is for what must be plain weights (exports and their check)."""
    set_threads(threads)
    if is_onnx_export(path):
        return OnnxEngine(path, threads)
    run = RunDir(Path(path))
    cfg, tokenizer, model = load_trained(path, which, merged=merged, base_model=base_model)
    return TorchEngine(cfg, run.read_decision(which), tokenizer, model, precision, run.trained_precision())


def classify(
    engine: TorchEngine | OnnxEngine, texts: list[str], pairs: list[str] | None, batch_size: int | None = None
):
    """The head's logits for each text (or pair), in input order, truncated and pooled as the run was trained.

    `batch_size` None: the run's train.eval_batch_size, the batches its own evaluations ran in. Kernels round a row
    differently in batches of other shapes (MiniLM-L6: probabilities up to 4.7e-3 apart in bf16, 5e-7 in fp32, at
    16 rows a batch against training's 64); in the same batches eval gives back training's numbers bit for bit."""
    batch_size = batch_size or engine.cfg.train.eval_batch_size
    data = engine.encode(texts, pairs)
    return data.per_row(engine.logits(data, batch_size, progress=True), task_for(engine.cfg).window_pooling)
