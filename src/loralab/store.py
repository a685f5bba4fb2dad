"""The run directory on disk: its layout and atomic writes (a reader never sees half a file)."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path


def safe_dirname(name: str) -> str:
    """A folder name from a run's label: commas, '*', '=' and spaces are legal but awkward in paths."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "run"


def write_text_atomic(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def replace_dir(target: Path, fill) -> None:
    """Build a directory in a temporary sibling with `fill(tmp_path)`, then swap it in for `target`."""
    target = Path(target)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        fill(tmp)
        old = target.with_name(f".{target.name}.old")
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@dataclass(frozen=True)
class RunDir:
    """Paths of one run: config.yaml, metrics.jsonl, summary.json, best/, last/, checkpoint/."""

    path: Path

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def best(self) -> Path:
        return self.path / "best"

    @property
    def last(self) -> Path:
        return self.path / "last"

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint"

    def append_metrics(self, row: dict) -> None:
        with open(self.metrics, "a") as handle:
            handle.write(json.dumps(row) + "\n")

    def read_metrics(self) -> list[dict]:
        if not self.metrics.exists():
            return []
        return [json.loads(line) for line in self.metrics.read_text().splitlines() if line.strip()]

    def truncate_metrics(self, last_step: int) -> None:
        """Drop rows logged after `last_step`: a resumed run logs those steps again."""
        kept = [row for row in self.read_metrics() if row["step"] <= last_step]
        write_text_atomic(self.metrics, "".join(json.dumps(row) + "\n" for row in kept))
