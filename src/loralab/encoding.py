"""Rows as the model reads them: token ids (a pair joined as the model's tokenizer joins two texts), and the
batches they run in (similar lengths together, so padding stays small). data.py reads the rows."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .data import LabelledTexts


@dataclass
class Encoded:
    """Token ids of each row, unpadded, with labels; segment ids where the model reads them (BERT pairs)."""

    input_ids: list[list[int]]
    labels: list
    token_type_ids: list[list[int]] | None = None

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]

    def features(self, indices: list[int]) -> dict[str, list[list[int]]]:
        """The rows' token features, unpadded, as tokenizer.pad takes them."""
        features = {"input_ids": [self.input_ids[i] for i in indices]}
        if self.token_type_ids is not None:
            features["token_type_ids"] = [self.token_type_ids[i] for i in indices]
        return features


def encode(tokenizer, texts: list[str], pairs: list[str] | None, max_length: int, token_types: bool, labels=None):
    """Tokenize once: a pair as the model's tokenizer joins two texts, the longer one truncated first."""
    encoding = tokenizer(texts, pairs, truncation=True, max_length=max_length)
    types = encoding.get("token_type_ids") if token_types else None
    return Encoded(encoding["input_ids"], labels if labels is not None else [], types)


def encode_rows(tokenizer, rows: LabelledTexts, max_length: int, token_types: bool) -> Encoded:
    return encode(tokenizer, rows.texts, rows.pairs, max_length, token_types, rows.labels)


def collate(tokenizer, data: Encoded, indices: list[int]) -> dict[str, torch.Tensor]:
    """Pad one batch to its own longest row."""
    batch = tokenizer.pad(data.features(indices), return_tensors="pt")
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
