"""Rows as the model reads them: token ids (a pair joined as the model's tokenizer joins two texts), and the
batches they run in (similar lengths together, so padding stays small). data.py reads the rows."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .data import LabelledTexts


@dataclass
class Encoded:
    """Token ids of each row, unpadded, with labels; segment ids where the model reads them (BERT pairs)."""

    input_ids: list[list[int]]
    labels: list
    token_type_ids: list[list[int]] | None = None
    owner: list[int] | None = None  # data.long_texts: chunk: the text each window comes from (labels are per window)

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def row_labels(self) -> list:
        """One label per text, whatever its windows."""
        if self.owner is None:
            return self.labels
        first = {}
        for window, row in enumerate(self.owner):
            first.setdefault(row, window)
        return [self.labels[first[row]] for row in range(len(first))]

    def per_row(self, logits: torch.Tensor, pooling: str) -> torch.Tensor:
        """Each text's logits from its windows' (mean or max); the logits themselves where nothing was chunked."""
        if self.owner is None:
            return logits
        owner = torch.tensor(self.owner)
        rows = int(owner.max()) + 1 if len(owner) else 0
        if pooling == "max":
            out = torch.full((rows, logits.shape[1]), -torch.inf, dtype=logits.dtype)
            return out.scatter_reduce(0, owner[:, None].expand_as(logits), logits, "amax")
        total = torch.zeros(rows, logits.shape[1], dtype=logits.dtype).index_add_(0, owner, logits)
        return total / torch.bincount(owner, minlength=rows)[:, None].to(logits.dtype)

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]

    def features(self, indices: list[int]) -> dict[str, list[list[int]]]:
        """The rows' token features, unpadded, as tokenizer.pad takes them."""
        features = {"input_ids": [self.input_ids[i] for i in indices]}
        if self.token_type_ids is not None:
            features["token_type_ids"] = [self.token_type_ids[i] for i in indices]
        return features


def encode(
    tokenizer, texts: list[str], pairs: list[str] | None, max_length: int, token_types: bool, labels=None,
    stride: int | None = None,
) -> Encoded:  # fmt: skip
    """Tokenize once: a pair as the model's tokenizer joins two texts, the longer one truncated first. With a
    `stride` (data.long_texts: chunk), a text longer than max_length becomes overlapping windows sharing
    `stride` tokens, each window with its text's label."""
    chunk = {} if stride is None else {"stride": stride, "return_overflowing_tokens": True}
    encoding = tokenizer(texts, pairs, truncation=True, max_length=max_length, **chunk)
    types = encoding.get("token_type_ids") if token_types else None
    labels = labels if labels is not None else []
    if stride is None:
        return Encoded(encoding["input_ids"], labels, types)
    owner = list(encoding["overflow_to_sample_mapping"])
    return Encoded(encoding["input_ids"], [labels[row] for row in owner] if labels else [], types, owner)


def encode_for(tokenizer, data_cfg, texts: list[str], pairs: list[str] | None, token_types: bool, labels=None):
    """Rows as a run's data section says: its max_length, truncated or chunked (data.long_texts)."""
    stride = data_cfg.window_stride() if data_cfg.long_texts == "chunk" else None
    return encode(tokenizer, texts, pairs, data_cfg.max_length, token_types, labels, stride)


def encode_rows(tokenizer, rows: LabelledTexts, data_cfg, token_types: bool) -> Encoded:
    return encode_for(tokenizer, data_cfg, rows.texts, rows.pairs, token_types, rows.labels)


def collate(tokenizer, data: Encoded, indices: list[int], buckets: list[int] | None = None) -> dict[str, torch.Tensor]:
    """Pad one batch to its own longest row, or with `buckets` to the shortest bucket that holds it."""
    padding = {}
    if buckets:
        longest = max(data.lengths[i] for i in indices)
        padding = {"padding": "max_length", "max_length": next(b for b in buckets if b >= longest)}
    batch = tokenizer.pad(data.features(indices), return_tensors="pt", **padding)
    batch["labels"] = torch.tensor([data.labels[i] for i in indices])
    return batch


def training_batches(lengths: list[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """One epoch of batches of similar length: rows shuffled, sorted inside mega-batches, batches shuffled.

    A pure function of (seed, epoch), so a resumed run can find its place by step number alone.
    """
    from transformers.trainer_pt_utils import get_length_grouped_indices

    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = get_length_grouped_indices(lengths, batch_size, generator=generator)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    shuffled = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffled]


def length_buckets(lengths: list[int], batch_size: int, seed: int, multiple: int = 8) -> list[int]:
    """The few lengths every training batch is padded up to, so that a compiled step meets a few shapes (one
    capture each) and not one per batch: the quartiles of an epoch's longest-row-per-batch, rounded up to a
    multiple of 8 (never past the longest row of all, which is the last bucket: data.max_length at most)."""
    longest = sorted(max(lengths[i] for i in batch) for batch in training_batches(lengths, batch_size, seed, 0))
    quartiles = [-(-longest[max(0, math.ceil(q * len(longest)) - 1)] // multiple) * multiple for q in (0.25, 0.5, 0.75)]
    return sorted({length for length in quartiles if length < max(lengths)} | {max(lengths)})


def eval_batches(lengths: list[int], batch_size: int, max_tokens: int | None = None) -> list[list[int]]:
    """Batches of rows sorted by length, so no row is padded far past its own length; with `max_tokens`,
    a batch also ends before its rows x its longest row would pass that many (padded) tokens."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    batches: list[list[int]] = [[]]
    for i in order:
        full = len(batches[-1]) == batch_size
        if full or (max_tokens and batches[-1] and (len(batches[-1]) + 1) * lengths[i] > max_tokens):
            batches.append([])
        batches[-1].append(i)
    return batches if order else []
