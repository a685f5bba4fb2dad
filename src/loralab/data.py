"""Loading labelled text (hub or local files), the validation split, tokenising once, length-grouped batches."""

from __future__ import annotations

import csv
import functools
import hashlib
import itertools
import json
import math
import random
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .config import AG_NEWS_LABELS, DATA_FILE_TYPES, DataConfig, is_local
from .errors import LoralabError
from .tasks import SHAPES

LOCAL_SUFFIXES = DATA_FILE_TYPES


@dataclass
class LabelledTexts:
    texts: list[str]
    labels: list  # per data.task: a class index, a multi-hot list of 0.0/1.0, or a number
    pairs: list[str] | None = None  # the second text of each row (data.text_pair_column)

    def pick(self, indices: list[int]) -> LabelledTexts:
        pairs = None if self.pairs is None else [self.pairs[i] for i in indices]
        return LabelledTexts([self.texts[i] for i in indices], [self.labels[i] for i in indices], pairs)


# The class names of hub datasets as their ClassLabel features give them, shipped (as roberta-base's
# config.json is) so that the default configuration's budget needs no network.
HUB_LABELS = {"fancyzhx/ag_news": AG_NEWS_LABELS, "ag_news": AG_NEWS_LABELS}


def _read_first_record(path: Path) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            return next(csv.reader(handle), [])
    except UnicodeDecodeError as err:
        raise LoralabError(
            f"{path} is not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start}): save it as UTF-8"
        ) from None


def _original_ag_news_layout(path: Path, text_column: str, label_column: str) -> bool:
    """The published AG News CSV: no header; class index 1-4, title, description."""
    first = _read_first_record(path)
    return text_column not in first and len(first) == 3 and first[0].strip().isdigit()


def row_place(source: str, row: int, cfg: DataConfig) -> str:
    """Where data row `row` (counted from 0) is, as an editor shows it: the line of a CSV or JSONL file
    (after the header, over blank lines and quoted line breaks); the row number of other sources."""
    path = Path(source)
    suffix = path.suffix.lower()
    if not path.is_file() or suffix not in (".csv", ".jsonl"):
        return f"row {row}"
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as handle:
        if suffix == ".jsonl":
            lines = (number for number, line in enumerate(handle, 1) if line.strip())
            return f"line {next(itertools.islice(lines, row, None), '?')}"
        reader = csv.reader(handle)
        skip = 0 if _original_ag_news_layout(path, cfg.text_column, cfg.label_column) else 1
        starts = []
        last = 0
        for record in reader:
            if record:  # pandas skips blank lines
                starts.append(last + 1)
            last = reader.line_num
            if len(starts) > row + skip:
                return f"line {starts[row + skip]}"
    return f"row {row}"


@contextmanager
def quiet_datasets():
    """No "Generating train split" bars or logged parse errors for a local file: it is read in a moment
    (hub downloads keep their bars), and its errors are ours to say in one line."""
    from datasets.utils import disable_progress_bars, enable_progress_bars, is_progress_bar_enabled
    from datasets.utils import logging as datasets_logging

    was_enabled, verbosity = is_progress_bar_enabled(), datasets_logging.get_verbosity()
    disable_progress_bars()
    datasets_logging.set_verbosity(datasets_logging.CRITICAL)
    try:
        yield
    finally:
        datasets_logging.set_verbosity(verbosity)
        if was_enabled:
            enable_progress_bars()


def _first_bad_json_line(path: Path) -> str | None:
    """`line N: message` of a JSONL file's first line that is not a JSON object, if any."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                if not isinstance(json.loads(line), dict):
                    return f"line {number} is not a JSON object"
            except json.JSONDecodeError as err:
                return f"line {number} is not valid JSON ({err.msg} at column {err.colno})"
    return None


def _load_table(source: str, cfg: DataConfig, split: str):
    from datasets import load_dataset

    if not is_local(source):
        try:
            return load_dataset(source, cfg.subset or None, split=split)
        except Exception as err:  # the hub raises many types; the user needs the one line
            raise LoralabError(f"cannot load dataset '{source}' from the hub: {str(err).splitlines()[0]}") from err
    path = Path(source)
    if not path.is_file():
        raise LoralabError(f"data file not found: {path}")
    builder = LOCAL_SUFFIXES.get(path.suffix.lower())
    if builder is None:
        raise LoralabError(f"{path}: unsupported file type (use {', '.join(LOCAL_SUFFIXES)})")
    options = {}
    if builder == "csv":
        # A text column holds text: pandas would read NA, nan, None, null or n/a as missing values.
        options = {"na_filter": False}
        if _original_ag_news_layout(path, cfg.text_column, cfg.label_column):
            options |= {"column_names": ["class_index", "title", "description"], "header": None}
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
        bad_line = _first_bad_json_line(path) if path.suffix.lower() == ".jsonl" else None
        if bad_line:
            raise LoralabError(f"{path}: {bad_line}: fix or remove it") from None
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


def _label_column(table, source: str, cfg: DataConfig) -> list:
    if cfg.label_column not in table.column_names:
        raise LoralabError(f"{source}: no '{cfg.label_column}' column (columns: {', '.join(table.column_names)})")
    return table[cfg.label_column]


def label_names_of(cfg: DataConfig) -> list[str]:
    """The class names: data.label_names where given, else what the task names (a regression's one output,
    by its column), else what the data holds (its ClassLabel names, its class names sorted, or 0..K-1 for
    class indices)."""
    if cfg.label_names:
        return list(cfg.label_names)
    unnamed = SHAPES[cfg.task].unnamed_labels(cfg.label_column)
    if unnamed is not None:
        return unnamed
    key = (cfg.train, cfg.subset, cfg.task, cfg.text_column, cfg.label_column, cfg.label_separator)
    return list(_labels_in_data(*key))


@functools.lru_cache(maxsize=8)
def _labels_in_data(
    source: str, subset: str, task: str, text_column: str, label_column: str, separator: str
) -> tuple[str, ...]:
    cfg = DataConfig(
        train=source, subset=subset, task=task, text_column=text_column, label_column=label_column,
        label_separator=separator,
    )  # fmt: skip
    if source in HUB_LABELS:  # a hub dataset whose class names are known (a regression never asks: its own name)
        return tuple(HUB_LABELS[source])
    table = _load_table(source, cfg, "train")
    values = _label_column(table, source, cfg)
    feature = table.features[label_column]
    feature = getattr(feature, "feature", feature)  # a list of ClassLabel (multi-label)
    if getattr(feature, "names", None):  # a datasets ClassLabel
        return tuple(feature.names)
    rows = [(row, item) for row, value in enumerate(values)
            for item in SHAPES[task].label_values(value, LabelReader(source, cfg, row))]  # fmt: skip
    indices = [_whole_number(value, row, source, cfg) for row, value in rows]
    if all(i is not None for i in indices):
        return tuple(str(i) for i in range(max(indices, default=0) + 1))
    if all(i is None and isinstance(v, str) for i, (_, v) in zip(indices, rows)):
        return tuple(sorted({v for _, v in rows}))
    raise LoralabError(
        f"{source}: '{label_column}' mixes class indices and other values: name the classes in data.label_names"
    )


def _label_items(value, cfg: DataConfig) -> list:
    """The labels of one multi-label row: a list (JSONL, parquet), or one string split at data.label_separator."""
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str):
        return [item.strip() for item in value.split(cfg.label_separator) if item.strip()]
    return [value]


def _whole_number(label, row: int, source: str, cfg: DataConfig) -> int | None:
    """A label that is a class index (an integer, a whole float such as a parquet's 3.0, or digits as
    text) as an int; None for anything else. A fraction is refused: it is a score, not a class."""
    if isinstance(label, bool):
        return None
    if isinstance(label, int):
        return label
    if isinstance(label, float):
        if not math.isfinite(label):
            raise LoralabError(
                f"{source}: {row_place(source, row, cfg)} has label {label!r} in '{cfg.label_column}', not a finite "
                "number: give the row its class, or remove it"
            )
        if label.is_integer():
            return int(label)
        raise LoralabError(
            f"{source}: {row_place(source, row, cfg)} has label {label!r} in '{cfg.label_column}', a fraction: "
            "class labels are whole class indices or class names"
        )
    if isinstance(label, str) and label.strip().lstrip("-").isdigit():
        return int(label)
    return None


def load_labelled(source: str, cfg: DataConfig, split: str = "train") -> LabelledTexts:
    """Rows of text (and pair text) with their targets, checked: the columns present, labels valid for
    data.task, no empty text."""
    table = _load_table(source, cfg, split)
    texts = _column_texts(table, cfg.text_column, source, cfg)
    pairs = _column_texts(table, cfg.text_pair_column, source, cfg) if cfg.text_pair_column else None
    values = _label_column(table, source, cfg)
    return LabelledTexts(texts, [target(value, row, source, cfg) for row, value in enumerate(values)], pairs)


def target(value, row: int, source: str, cfg: DataConfig):
    """One row's label as data.task trains on it: a class index, a multi-hot list, or a number."""
    return SHAPES[cfg.task].read_target(value, LabelReader(source, cfg, row))


@dataclass
class LabelReader:
    """What a task needs to read one row's label: its place for messages, and the parsing of class labels."""

    source: str
    cfg: DataConfig
    row: int

    @property
    def classes(self) -> int:
        return len(label_names_of(self.cfg))

    def class_index(self, label) -> int:
        return class_index(label, self.row, self.source, self.cfg)

    def items(self, value) -> list:
        return _label_items(value, self.cfg)

    def number(self, value) -> float:
        """A finite number (nan or inf: a loss of nan, or one row that outweighs all)."""
        try:
            number = float(value) if not isinstance(value, bool) else None
        except (TypeError, ValueError):
            number = None
        if number is None or not math.isfinite(number):
            raise LoralabError(
                f"{self.source}: {row_place(self.source, self.row, self.cfg)} has label {value!r} in "
                f"'{self.cfg.label_column}': a regression target must be a finite number"
            )
        return number


def training_and_validation(cfg: DataConfig) -> tuple[LabelledTexts, LabelledTexts, LabelledTexts]:
    """All training rows, the rows trained on, and the validation rows: held out of the training data
    (val_size, split_seed), or from data.validation (a split of the hub dataset, or a file)."""
    rows = load_labelled(cfg.train, cfg)
    if not cfg.validation:
        return rows, *split_validation(rows, cfg.val_size, cfg.split_seed)
    if is_local(cfg.validation):
        return rows, rows, load_labelled(cfg.validation, cfg)
    if is_local(cfg.train):
        raise LoralabError(
            f"data.validation '{cfg.validation}' is not a file here, and {cfg.train} is a file, not a hub dataset "
            "with splits: name a labelled file"
        )
    return rows, rows, load_labelled(cfg.train, cfg, split=cfg.validation)


def class_index(label, row: int, source: str, cfg: DataConfig) -> int:
    """A label as a class index: an integer in range (whole floats and digits as text count), or a class name."""
    names = label_names_of(cfg)
    last = len(names) - 1
    index = _whole_number(label, row, source, cfg)
    if index is None and isinstance(label, str) and label in names:
        return names.index(label)
    if index is not None:
        if 0 <= index <= last:
            return index
        raise LoralabError(
            f"{source}: {row_place(source, row, cfg)} has label {index}, outside 0..{last} "
            f"(data.label_names has {last + 1} classes)"
        )
    raise LoralabError(
        f"{source}: {row_place(source, row, cfg)} has label {label!r} in '{cfg.label_column}': use a class index "
        f"0..{last} or one of data.label_names ({', '.join(names)})"
    )


def _column_texts(table, column: str, source: str, cfg: DataConfig) -> list[str]:
    if column not in table.column_names:
        raise LoralabError(f"{source}: no '{column}' column (columns: {', '.join(table.column_names)})")
    texts = table[column]
    if not texts:
        raise LoralabError(f"{source}: no rows")
    for row, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise LoralabError(f"{source}: {row_place(source, row, cfg)} has an empty '{column}'")
    return list(texts)


ID_COLUMNS = ("id", "ID", "Id")


def load_texts(
    source: str, text_column: str, allow_pickle: bool = False, pair_column: str = ""
) -> tuple[list[str], list[str] | None, list | None]:
    """Unlabelled texts to classify (with their pair texts where the run reads pairs), and the input's own
    row IDs where it has an id column (as Kaggle files do): a data file, or a pickled `datasets.Dataset`
    if the user allows it."""
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
    where = DataConfig(text_column=text_column)
    texts = _column_texts(table, text_column, source, where)
    pairs = _column_texts(table, pair_column, source, where) if pair_column else None
    return texts, pairs, (list(table[id_column]) if id_column else None)


@dataclass
class DataIdentity:
    """What identifies the data a run was trained on (data.json), so that evaluating or resuming it on
    data that changed since is refused instead of silently scoring other rows."""

    source: str
    rows: int
    rows_sha256: str  # every row's text and label, in order: the same for a file and for a hub dataset
    val_rows: int
    val_sha256: str  # the validation rows the run was scored on
    file_sha256: str | None = None  # the bytes of a local file


def rows_sha256(rows: LabelledTexts) -> str:
    digest = hashlib.sha256()
    for i, (text, label) in enumerate(zip(rows.texts, rows.labels)):
        pair = "" if rows.pairs is None else rows.pairs[i]
        # The lengths keep the fields apart.
        digest.update(f"{label}\t{len(text)}\t{text}\t{len(pair)}\t{pair}\n".encode())
    return digest.hexdigest()


def file_sha256(source: str) -> str | None:
    path = Path(source)
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def identify(source: str, rows: LabelledTexts, val: LabelledTexts) -> DataIdentity:
    return DataIdentity(
        source, len(rows.texts), rows_sha256(rows), len(val.texts), rows_sha256(val), file_sha256(source)
    )


def check_label_fit(cfg: DataConfig, train: LabelledTexts, val: LabelledTexts) -> list[str]:
    """What about the label set does not fit the data, as sentences: named classes without any row, and
    classes only the validation rows have (the model never sees them trained)."""
    shape = SHAPES[cfg.task]
    in_train, in_val = shape.classes_present(train.labels), shape.classes_present(val.labels)
    if in_train is None:  # no classes: nothing to fit
        return []
    names = label_names_of(cfg)
    problems = []
    unused = [names[i] for i in range(len(names)) if i not in in_train | in_val]
    if unused:
        problems.append(
            f"data.label_names names {len(names)} classes, but {cfg.train} has no row of {', '.join(unused)}: "
            "the head still gets an output for each (name only the data's classes)"
        )
    only_val = sorted(in_val - in_train)
    if only_val:
        problems.append(
            f"class {', '.join(names[i] for i in only_val)} occurs only in the validation rows: "
            "the model is never trained on it (more rows of it, or another data.split_seed)"
        )
    return problems


def split_validation(rows: LabelledTexts, val_size: int, seed: int) -> tuple[LabelledTexts, LabelledTexts]:
    """Hold `val_size` rows out of training, chosen by a seeded shuffle."""
    if val_size >= len(rows.texts):
        raise LoralabError(f"data.val_size {val_size} leaves no training rows (the data has {len(rows.texts)})")
    order = list(range(len(rows.texts)))
    random.Random(seed).shuffle(order)
    return rows.pick(order[val_size:]), rows.pick(order[:val_size])
