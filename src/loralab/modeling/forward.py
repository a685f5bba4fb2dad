"""Classification metrics on held-out rows: loss, accuracy, macro-F1, and the per-row predictions."""

from __future__ import annotations

import re
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch

from ..config import Config, metric_for_best
from ..encoding import Encoded, eval_batches
from ..stats import calibration
from ..tasks import Decision, metrics, task_for


@dataclass
class Evaluation:
    loss: float
    values: dict[str, float]  # every metric of the task
    metric: str  # the one that picks the peak (train.metric_for_best)
    predictions: list  # in the rows' original order
    decision: Decision  # what turned logits into the predictions (tuned thresholds included)
    scores: list | None = None  # the probabilities behind them, where the task has any
    ece: float | None = None  # their expected calibration error

    @property
    def score(self) -> float:
        return self.values[self.metric]

    def metrics(self) -> dict:
        calibration = {} if self.ece is None else {"ece": self.ece}
        return {"loss": self.loss, **self.values, **calibration}


def evaluation_report(
    task, labels: list, predictions: list, label_names: list[str], decision: Decision, scores: list | None = None
) -> dict:
    """Every metric of the task with its 95% interval (Wilson for accuracy, bootstrap for the others), what the
    task shows beyond them (per class and the confusion matrix, or per label), and the calibration of its
    probabilities where `scores` gives them."""
    report = {"rows": len(labels), "task": task.name}
    for name, value in metrics(task, labels, predictions).items():
        report[name] = value
        report[f"{name}_95ci"] = list(task.interval(name, labels, predictions))
    report |= task.report(labels, predictions, label_names, decision)
    return report | (calibration(task, labels, scores) if scores is not None else {})


# BERT-style blocks (the families whose layers are `encoder.layer.N`) add the attention residual
# inside `attention`, so what it returns is the whole input of the block's feed-forward.
BLOCK_ATTENTION = re.compile(r"encoder\.layer\.(\d+)\.attention$")


@contextmanager
def first_token_after_last_attention(model):
    """Run the last block's feed-forward for the first token only; yields whether it applies.

    Every classification head here reads only the first token of the last layer, and the
    feed-forward is two thirds of a block's work: like `logits_to_keep` in Hugging Face language
    models, the rest of the sequence is dropped where nothing reads it. Other layouts run whole.
    """
    blocks = {
        int(found.group(1)): module for name, module in model.named_modules() if (found := BLOCK_ATTENTION.search(name))
    }

    def keep_first_token(module, args, output):
        if isinstance(output, tuple):
            return (output[0][:, :1], *output[1:])
        return output[:, :1]

    handle = blocks[max(blocks)].register_forward_hook(keep_first_token) if blocks else None
    try:
        yield handle is not None
    finally:
        if handle is not None:
            handle.remove()


# Answering batches are padded to a multiple of this many tokens, so their shapes fall into a few buckets: oneDNN
# keeps a compiled primitive (and half-precision reordered weights) per shape it meets. MiniLM-L6 in bf16, 8
# adapters, 16 clients, 3 minutes (bench/serve_soak.py): free lengths held 2.40x the idle server's memory at 80.5
# rows/s; buckets of 16, 1.54x at 90.2; of 32, 1.42x at 88.3. The pads are masked: the same answers up to the
# kernels' rounding, and training's evaluation pads alike, so eval still gives back its numbers exactly.
PAD_MULTIPLE = 32


def batched_logits(
    forward, tokenizer, data: Encoded, batch_size: int, n_outputs: int, device="cpu", progress=False, max_tokens=None
):
    """Logits of every row, in the rows' order, from `forward(padded batch, its row indices)`; batches are
    length-sorted so padding stays small. Kept on the device until the end: one copy to the host, not a
    wait per batch.

    `progress`: a bar (rows, rows/s, ETA) on a terminal; nothing where stderr is a file or a pipe.
    `max_tokens`: batches also end at that many padded tokens (see eval_batches)."""
    from tqdm.auto import tqdm

    logits = torch.empty(len(data), n_outputs, device=device)
    bar = tqdm(total=len(data), unit="rows", disable=None if progress else True, dynamic_ncols=True)
    with bar:
        for indices in eval_batches(data.lengths, batch_size, max_tokens):
            batch = tokenizer.pad(data.features(indices), return_tensors="pt", pad_to_multiple_of=PAD_MULTIPLE)
            batch = batch.to(device)
            logits[torch.tensor(indices, device=device)] = forward(batch, indices)
            bar.update(len(indices))
    return logits.cpu()


@torch.no_grad()
def predict_logits(
    model,
    tokenizer,
    data: Encoded,
    batch_size: int,
    device,
    autocast=nullcontext,
    pooling: str = "first",
    progress: bool = False,
    adapter_names: list[str] | None = None,
    max_tokens: int | None = None,
) -> torch.Tensor:
    """A PyTorch model's logits of every row (batched_logits), the last block trimmed to the first token
    where the head reads only that. `adapter_names`: each row's adapter of a PEFT model holding several
    (PEFT's mixed-adapter batches: LoRA layers and trained heads alike follow each row's name)."""

    def forward(batch, indices):
        mixed = {} if adapter_names is None else {"adapter_names": [adapter_names[i] for i in indices]}
        with autocast():
            return model(**batch, **mixed).logits.float()

    was_training = model.training
    model.eval()
    # Weights that train are frozen for the pass: torch's matmul takes another kernel path (and rounds otherwise)
    # for a weight that requires grad, so training's evaluation would not be what eval and predict compute later.
    training = [p for p in model.parameters() if p.requires_grad]
    for p in training:
        p.requires_grad_(False)
    try:
        # Mean pooling reads every token of the last layer, so nothing can be trimmed.
        with first_token_after_last_attention(model) if pooling == "first" else nullcontext():
            logits = batched_logits(
                forward, tokenizer, data, batch_size, model.config.num_labels, device, progress, max_tokens
            )
    finally:
        for p in training:
            p.requires_grad_(True)
        model.train(was_training)
    return logits


def evaluate(
    model,
    tokenizer,
    data: Encoded,
    cfg: Config,
    decision: Decision,
    device,
    autocast=nullcontext,
    accelerator=None,
) -> Evaluation:
    """Loss, the task's metrics and the predictions on `data` (a multi-label run with
    train.tune_thresholds chooses its thresholds on these rows first).

    With an Accelerator of several processes, each scores every world-th row and the logits are
    gathered: every process gets the whole split, and each row is scored once.
    """
    task = task_for(cfg)
    world, rank = (accelerator.num_processes, accelerator.process_index) if accelerator else (1, 0)
    rows = list(range(rank, len(data), world))
    part = Encoded([data.input_ids[i] for i in rows], [], None if data.token_type_ids is None else
                   [data.token_type_ids[i] for i in rows])  # fmt: skip
    logits = predict_logits(model, tokenizer, part, cfg.train.eval_batch_size, device, autocast, cfg.model.pooling)
    if world > 1:
        from accelerate.utils import gather_object

        whole = torch.empty(len(data), logits.shape[-1])
        for part_rows, part_logits in gather_object([(rows, logits)]):
            whole[part_rows] = part_logits
        logits = whole
    logits, labels = data.per_row(logits, task.window_pooling), data.row_labels  # chunked texts: once each
    decision = task.fit_decision(logits, labels, decision, cfg.train.tune_thresholds, cfg.train.calibrate)
    scored = task.score(logits, decision)
    return Evaluation(
        loss=task.loss(logits, torch.tensor(labels), decision).item(),
        values=metrics(task, labels, scored.predictions),
        metric=metric_for_best(cfg),
        predictions=scored.predictions,
        decision=decision,
        scores=scored.scores if task.probabilities else None,
        ece=calibration(task, labels, scored.scores).get("ece"),
    )
