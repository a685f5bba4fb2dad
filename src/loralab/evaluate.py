"""Classification metrics on held-out rows: loss, accuracy, macro-F1, and the per-row predictions."""

from __future__ import annotations

import re
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .data import Encoded, eval_batches
from .stats import wilson_interval


@dataclass
class Evaluation:
    loss: float
    accuracy: float
    f1: float
    predictions: list[int]  # in the rows' original order

    def metrics(self) -> dict:
        return {"loss": self.loss, "accuracy": self.accuracy, "f1": self.f1}


def confusion_matrix(labels: list[int], predictions: list[int], n_classes: int) -> list[list[int]]:
    """matrix[true][predicted] = rows."""
    matrix = [[0] * n_classes for _ in range(n_classes)]
    for y, p in zip(labels, predictions):
        matrix[y][p] += 1
    return matrix


def per_class(labels: list[int], predictions: list[int], n_classes: int) -> list[dict]:
    """Precision, recall, F1 and support of each class; 0 where undefined, as scikit-learn does."""
    matrix = confusion_matrix(labels, predictions, n_classes)
    rows = []
    for c in range(n_classes):
        tp = matrix[c][c]
        predicted = sum(matrix[y][c] for y in range(n_classes))
        actual = sum(matrix[c])
        rows.append(
            {
                "precision": tp / predicted if predicted else 0.0,
                "recall": tp / actual if actual else 0.0,
                "f1": 2 * tp / (predicted + actual) if predicted + actual else 0.0,
                "support": actual,
            }
        )
    return rows


def macro_f1(labels: list[int], predictions: list[int], n_classes: int) -> float:
    return sum(row["f1"] for row in per_class(labels, predictions, n_classes)) / n_classes


def evaluation_report(labels: list[int], predictions: list[int], label_names: list[str]) -> dict:
    n = len(label_names)
    correct = sum(p == y for p, y in zip(predictions, labels))
    low, high = wilson_interval(correct, len(labels))
    return {
        "rows": len(labels),
        "accuracy": correct / len(labels),
        "accuracy_95ci": [low, high],
        "macro_f1": macro_f1(labels, predictions, n),
        "per_class": {name: row for name, row in zip(label_names, per_class(labels, predictions, n))},
        "confusion_matrix": confusion_matrix(labels, predictions, n),
    }


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


@torch.no_grad()
def predict_logits(
    model,
    tokenizer,
    input_ids: list[list[int]],
    batch_size: int,
    device,
    autocast=nullcontext,
    pooling: str = "first",
    progress: bool = False,
) -> torch.Tensor:
    """Logits of every row, in the rows' order; batches are length-sorted so padding stays small.

    `progress`: a bar (rows, rows/s, ETA) on a terminal; nothing where stderr is a file or a pipe."""
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    # Kept on the device until the end: one copy to the host, not a wait per batch.
    logits = torch.empty(len(input_ids), model.config.num_labels, device=device)
    # Mean pooling reads every token of the last layer, so nothing can be trimmed.
    bar = tqdm(total=len(input_ids), unit="rows", disable=None if progress else True, dynamic_ncols=True)
    with first_token_after_last_attention(model) if pooling == "first" else nullcontext(), bar:
        for indices in eval_batches([len(ids) for ids in input_ids], batch_size):
            batch = tokenizer.pad({"input_ids": [input_ids[i] for i in indices]}, return_tensors="pt").to(device)
            with autocast():
                logits[torch.tensor(indices, device=device)] = model(**batch).logits.float()
            bar.update(len(indices))
    model.train(was_training)
    return logits.cpu()


def evaluate(
    model,
    tokenizer,
    data: Encoded,
    batch_size: int,
    n_classes: int,
    device,
    autocast=nullcontext,
    pooling: str = "first",
    accelerator=None,
) -> Evaluation:
    """Loss, accuracy, macro-F1 and predictions on `data`.

    With an Accelerator of several processes, each scores every world-th row and the logits are
    gathered: every process gets the whole split, and each row is scored once.
    """
    world, rank = (accelerator.num_processes, accelerator.process_index) if accelerator else (1, 0)
    rows = list(range(rank, len(data), world))
    logits = predict_logits(model, tokenizer, [data.input_ids[i] for i in rows], batch_size, device, autocast, pooling)
    if world > 1:
        from accelerate.utils import gather_object

        whole = torch.empty(len(data), n_classes)
        for part_rows, part in gather_object([(rows, logits)]):
            whole[part_rows] = part
        logits = whole
    labels = torch.tensor(data.labels)
    predictions = logits.argmax(-1)
    return Evaluation(
        loss=F.cross_entropy(logits, labels).item(),
        accuracy=(predictions == labels).sum().item() / len(labels),
        f1=macro_f1(data.labels, predictions.tolist(), n_classes),
        predictions=predictions.tolist(),
    )
