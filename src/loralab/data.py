"""Loading labelled text (hub or local files), the validation split, tokenising once, length-grouped batches."""

from __future__ import annotations

import csv
import random
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import DataConfig
from .errors import LoralabError

LOCAL_SUFFIXES = {".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


@dataclass
class LabelledTexts:
    texts: list[str]
    labels: list[int]


def _is_local(source: str) -> bool:
    return Path(source).exists() or Path(source).suffix.lower() in LOCAL_SUFFIXES or source.startswith((".", "/"))


def _original_ag_news_layout(path: Path, text_column: str, label_column: str) -> bool:
    """The published AG News CSV: no header; class index 1-4, title, description."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            first = next(csv.reader(handle), [])
    except UnicodeDecodeError as err:
        raise LoralabError(
            f"{path} is not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start}): save it as UTF-8"
        ) from None
    return text_column not in first and len(first) == 3 and first[0].strip().isdigit()


@contextmanager
def quiet_datasets():
    """No "Generating train split" bars for a local file: it is read in a moment (hub downloads keep theirs)."""
    from datasets.utils import disable_progress_bars, enable_progress_bars, is_progress_bar_enabled

    was_enabled = is_progress_bar_enabled()
    disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            enable_progress_bars()


def _load_table(source: str, cfg: DataConfig, split: str):
    from datasets import load_dataset

    if not _is_local(source):
        try:
            return load_dataset(source, split=split)
        except Exception as err:  # the hub raises many types; the user needs the one line
            raise LoralabError(f"cannot load dataset '{source}' from the hub: {str(err).splitlines()[0]}") from err
    path = Path(source)
    if not path.is_file():
        raise LoralabError(f"data file not found: {path}")
    builder = LOCAL_SUFFIXES.get(path.suffix.lower())
    if builder is None:
        raise LoralabError(f"{path}: unsupported file type (use {', '.join(LOCAL_SUFFIXES)})")
    options = {}
    if builder == "csv" and _original_ag_news_layout(path, cfg.text_column, cfg.label_column):
        options = {"column_names": ["class_index", "title", "description"], "header": None}
    try:
        with quiet_datasets():
            table = load_dataset(builder, data_files=str(path), split="train", **options)
    except Exception as err:  # pandas/arrow parse errors of many types
        cause = err.__cause__ or err
        if "corresponds to no data" in str(err):
            raise LoralabError(f"{path}: no rows (only a header, or empty): the file needs one row per text") from None
        if isinstance(cause, UnicodeDecodeError):
            raise LoralabError(
                f"{path} is not UTF-8 text (at byte offset {cause.start} of a chunk): save it as UTF-8"
            ) from None
        raise LoralabError(f"{path}: cannot parse as {builder}: {str(cause).splitlines()[0]}") from err
    if "class_index" in table.column_names:
        with quiet_datasets():
            table = table.map(
                lambda row: {
                    cfg.text_column: f"{row['title']} {row['description']}",
                    cfg.label_column: int(row["class_index"]) - 1,
                },
                remove_columns=table.column_names,
            )
    return table


def load_labelled(source: str, cfg: DataConfig, split: str = "train") -> LabelledTexts:
    """Rows of text and integer label, checked: both columns present, labels in range, no empty text."""
    table = _load_table(source, cfg, split)
    texts = _column_texts(table, cfg.text_column, source)
    if cfg.label_column not in table.column_names:
        raise LoralabError(f"{source}: no '{cfg.label_column}' column (columns: {', '.join(table.column_names)})")
    return LabelledTexts(
        texts, [class_index(label, row, source, cfg) for row, label in enumerate(table[cfg.label_column])]
    )


def class_index(label, row: int, source: str, cfg: DataConfig) -> int:
    """A label as a class index: an integer in range, an integer written as text, or a class name."""
    names, last = cfg.label_names, len(cfg.label_names) - 1
    if isinstance(label, str) and label.strip().lstrip("-").isdigit():
        label = int(label)
    elif isinstance(label, str) and label in names:
        return names.index(label)
    if isinstance(label, int) and not isinstance(label, bool):
        if 0 <= label <= last:
            return label
        raise LoralabError(
            f"{source}: row {row} has label {label}, outside 0..{last} (data.label_names has {last + 1} classes)"
        )
    raise LoralabError(
        f"{source}: row {row} has label {label!r} in '{cfg.label_column}': use a class index 0..{last} "
        f"or one of data.label_names ({', '.join(names)})"
    )


def _column_texts(table, column: str, source: str) -> list[str]:
    if column not in table.column_names:
        raise LoralabError(f"{source}: no '{column}' column (columns: {', '.join(table.column_names)})")
    texts = table[column]
    if not texts:
        raise LoralabError(f"{source}: no rows")
    for row, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise LoralabError(f"{source}: row {row} has an empty '{column}'")
    return list(texts)


ID_COLUMNS = ("id", "ID", "Id")


def load_texts(source: str, text_column: str, allow_pickle: bool = False) -> tuple[list[str], list | None]:
    """Unlabelled texts to classify, and the input's own row IDs where it has an id column (as Kaggle
    files do): a data file, or a pickled `datasets.Dataset` if the user allows it."""
    if Path(source).suffix.lower() in (".pkl", ".pickle"):
        if not allow_pickle:
            raise LoralabError(
                f"{source} is a pickle; unpickling runs code from the file: pass --allow-pickle if you trust it"
            )
        if not Path(source).is_file():
            raise LoralabError(f"data file not found: {source}")
        import pickle

        try:
            with open(source, "rb") as handle:
                table = pickle.load(handle)
        except Exception as err:  # a damaged pickle raises many types
            raise LoralabError(
                f"cannot unpickle {source} ({type(err).__name__}: {err}): is it a saved datasets.Dataset?"
            ) from None
        if not hasattr(table, "column_names"):
            raise LoralabError(f"{source}: the pickle holds a {type(table).__name__}, not a datasets.Dataset")
    else:
        table = _load_table(source, DataConfig(text_column=text_column), "test")
    id_column = next((c for c in ID_COLUMNS if c in table.column_names), None)
    return _column_texts(table, text_column, source), (list(table[id_column]) if id_column else None)


def split_validation(rows: LabelledTexts, val_size: int, seed: int) -> tuple[LabelledTexts, LabelledTexts]:
    """Hold `val_size` rows out of training, chosen by a seeded shuffle."""
    if val_size >= len(rows.texts):
        raise LoralabError(f"data.val_size {val_size} leaves no training rows (the data has {len(rows.texts)})")
    order = list(range(len(rows.texts)))
    random.Random(seed).shuffle(order)
    pick = lambda idx: LabelledTexts([rows.texts[i] for i in idx], [rows.labels[i] for i in idx])  # noqa: E731
    return pick(order[val_size:]), pick(order[:val_size])


@dataclass
class Encoded:
    """Token ids of each row, unpadded, with labels."""

    input_ids: list[list[int]]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]


def encode(tokenizer, rows: LabelledTexts, max_length: int) -> Encoded:
    ids = tokenizer(rows.texts, truncation=True, max_length=max_length)["input_ids"]
    return Encoded(ids, rows.labels)


def collate(tokenizer, data: Encoded, indices: list[int]) -> dict[str, torch.Tensor]:
    """Pad one batch to its own longest row."""
    batch = tokenizer.pad({"input_ids": [data.input_ids[i] for i in indices]}, return_tensors="pt")
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


def eval_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Batches of rows sorted by length, so no row is padded far past its own length."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
