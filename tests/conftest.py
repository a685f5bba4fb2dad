"""Tiny random encoders and a tokenizer trained here, so unit tests need no download."""

from __future__ import annotations

import atexit
import csv
import http.client
import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
torch.set_num_threads(1)  # tiny models gain nothing from threads, and lose much when the CPU is shared
# The processes the tests start (servers, sweeps, fresh interpreters) likewise: the suite runs one worker per core.
os.environ.setdefault("OMP_NUM_THREADS", "1")

SHARED = Path(__file__).resolve().parents[2] / "shared"
AG_NEWS_CSV = SHARED / "data" / "ag_news" / "train.csv"
SEED_STUDY = SHARED / "data" / "seed-study"

CLASS_WORDS = [[f"c{c}w{i}" for i in range(5)] for c in range(4)]
FILLER = [f"f{i}" for i in range(40)]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto`: one worker per core, at most 4 (each holds torch and its own tiny models; the tests run tiny models
    on one thread each, and their servers and subprocesses want cores of their own)."""
    return max(1, min(os.cpu_count() or 1, 4))


def synthetic_rows(n: int, seed: int = 0) -> list[tuple[int, str]]:
    """A learnable 4-class task: each text carries three keywords of its class among filler words."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 4
        words = rng.sample(FILLER, rng.randint(2, 8)) + rng.sample(CLASS_WORDS[label], 3)
        rng.shuffle(words)
        rows.append((label, " ".join(words)))
    return rows


def pair_rows(n: int, seed: int = 0) -> list[tuple[int, str, str]]:
    """Pairs whose label is carried by the second text alone (is it of class 0 or 1?): learnable only by a
    model that reads the pair."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        first = rng.randrange(4)
        second = i % 2
        a = rng.sample(FILLER, 3) + rng.sample(CLASS_WORDS[first], 2)
        b = rng.sample(FILLER, 3) + rng.sample(CLASS_WORDS[second], 3)
        rows.append((second, " ".join(a), " ".join(b)))
    return rows


def multi_label_rows(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """Texts carrying the keywords of one or two classes; the labels are those classes, comma-separated."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        classes = sorted({i % 4, rng.randrange(4)})
        words = rng.sample(FILLER, 3) + [w for c in classes for w in rng.sample(CLASS_WORDS[c], 3)]
        rng.shuffle(words)
        rows.append((",".join(f"c{c}" for c in classes), " ".join(words)))
    return rows


def regression_rows(n: int, seed: int = 0) -> list[tuple[float, str]]:
    """A score from 0 to 30 that counts the class-0 keywords in the text (0 to 3) times ten."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        count = i % 4
        words = rng.sample(FILLER, 4) + rng.sample(CLASS_WORDS[0], count) + rng.sample(CLASS_WORDS[1], 3 - count)
        rng.shuffle(words)
        rows.append((10.0 * count, " ".join(words)))
    return rows


def write_csv(path: Path, rows, header=("label", "text")) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        if header:
            writer.writerow(header)
        writer.writerows(rows)
    return path


def make_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIALS + FILLER + [w for ws in CLASS_WORDS for w in ws])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",  # BERT's layout: the second text is segment 1
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def tiny_config(family: str, vocab_size: int, pad_id: int):
    from transformers import BertConfig, DebertaV2Config, DistilBertConfig, MPNetConfig, RobertaConfig

    # A wide initialisation: at the default 0.02 a random tiny encoder maps every text to nearly the
    # same [CLS] vector, and nothing can be learned through it.
    common = dict(vocab_size=vocab_size, pad_token_id=pad_id, max_position_embeddings=72, initializer_range=0.1)
    shape = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    if family == "distilbert":
        return DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=64, **common)
    if family == "deberta-v2":
        return DebertaV2Config(**shape, **common, pooler_hidden_size=32, max_relative_positions=32)
    return {"roberta": RobertaConfig, "bert": BertConfig, "mpnet": MPNetConfig}[family](**shape, **common)


FAMILIES = ["roberta", "bert", "mpnet", "distilbert", "deberta-v2"]


def make_model_dir(path: Path, family: str = "roberta") -> Path:
    """A local Hugging Face model folder: random tiny weights, config.json and the trained tokenizer.

    Like a real pretrained checkpoint (roberta-base, all-mpnet-base-v2), it holds the encoder only:
    every classification head, and the dense layers some heads add, are drawn at random when loaded.
    """
    import torch
    from transformers import AutoModel

    tokenizer = make_tokenizer()
    torch.manual_seed(0)
    model = AutoModel.from_config(tiny_config(family, len(tokenizer), tokenizer.pad_token_id))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {family: make_model_dir(root / family, family) for family in FAMILIES}


@pytest.fixture(scope="session")
def no_dropout_model(model_dirs, tmp_path_factory) -> Path:
    """The tiny roberta without the base's own dropout: with it, a pack draws its masks for all trials' rows at
    once, so only a model without dropout can be compared number for number."""
    folder = tmp_path_factory.mktemp("nodrop") / "roberta"
    shutil.copytree(model_dirs["roberta"], folder)
    settings = json.loads((folder / "config.json").read_text())
    settings.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (folder / "config.json").write_text(json.dumps(settings))
    return folder


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    return write_csv(tmp_path_factory.mktemp("data") / "train.csv", synthetic_rows(400))


@pytest.fixture
def tiny_overrides(model_dirs, tiny_data, tmp_path) -> list[str]:
    """Overrides that turn configs/seed.yaml into a seconds-long run on the tiny roberta."""
    return [
        f"model.name={model_dirs['roberta']}",
        f"data.train={tiny_data}",
        "data.val_size=64",
        "data.max_length=32",
        "lora.r=4",
        "lora.alpha=8",
        "train.steps=12",
        "train.batch_size=8",
        "train.eval_every=4",
        "train.log_every=2",
        "train.warmup_steps=2",
        "train.lr=1e-2",
        f"output.dir={tmp_path / 'runs'}",
        "output.name=tiny",
    ]


ROOT = Path(__file__).resolve().parents[1]
STUDY_CONFIG = ROOT / "configs" / "seed.yaml"


def pinned_to_fp32(path: Path) -> Path:
    """The study's configuration with fp32 pinned: its `auto` picks bf16 where the CPU computes it natively,
    and the unit tests must compute the same numbers on every CPU (auto's choice has tests of its own)."""
    import tempfile

    import yaml

    settings = yaml.safe_load(path.read_text())
    settings.setdefault("train", {})["precision"] = "fp32"
    pinned = Path(tempfile.mkdtemp(prefix="loralab-tests-")) / path.name
    pinned.write_text(yaml.safe_dump(settings, sort_keys=False))
    return pinned


SEED_CONFIG = pinned_to_fp32(STUDY_CONFIG)


def train_tiny(model_dir, data, out_dir, name, *extra):
    """Eight steps of a tiny model on the synthetic task: a finished run in a second or two."""
    overrides = [
        f"model.name={model_dir}",
        f"data.train={data}",
        "data.val_size=64",
        "data.max_length=32",
        "lora.scope=[query,value]",
        "lora.r=4",
        "train.steps=8",
        "train.batch_size=16",
        "train.eval_every=4",
        "train.warmup_steps=0",
        "train.lr=2e-2",
        f"output.dir={out_dir}",
        f"output.name={name}",
        *extra,
    ]
    from loralab import config
    from loralab.training.train import train

    return train(config.load(SEED_CONFIG, overrides))


# --- `loralab serve` as a user meets it: a real server process on loopback -----------------------------


STARTED: list[subprocess.Popen] = []


@atexit.register
def _kill_left_running() -> None:
    """A test that failed before its stop() leaves its server running: gone when the test session ends."""
    for process in STARTED:
        if process.poll() is None:
            process.kill()


def start(*argv: str, precision: str = "fp32") -> tuple[subprocess.Popen, int]:
    """A `loralab serve` process on a free port, in fp32 unless told (the numbers of predict's fp32 on any CPU);
    returns it with the port it printed."""
    command = [sys.executable, "-m", "loralab.cli", "serve", *argv, "--port", "0", "--precision", precision]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    STARTED.append(process)
    ready, _, _ = select.select([process.stdout], [], [], 300)  # a server that hangs fails here, not forever
    line = process.stdout.readline() if ready else ""
    if not line.startswith("serving"):
        process.kill()
        raise AssertionError(f"no 'serving' line: {line!r} {process.communicate(timeout=30)[1][-3000:]}")
    return process, int(line.split("http://127.0.0.1:")[1].split("/")[0])


def stop(process: subprocess.Popen, how: signal.Signals = signal.SIGTERM) -> str:
    process.send_signal(how)
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 0
    return out


def call(port: int, method: str, path: str, body=None, headers=None) -> tuple[int, object]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    raw = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    connection.request(method, path, body=raw, headers={"Content-Type": "application/json", **(headers or {})})
    response = connection.getresponse()
    data = response.read()
    connection.close()
    is_json = response.getheader("content-type", "").startswith("application/json")
    return response.status, json.loads(data) if is_json else data.decode()
