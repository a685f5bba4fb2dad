"""A configuration field that carries its one-line documentation: config.py's sections and each method's own
settings (methods/) are written with it, so that every setting is documented where it is declared."""

from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Any


def doc(text: str, default: Any = dataclasses.MISSING, factory: Any = dataclasses.MISSING):
    """A dataclass field carrying its one-line documentation."""
    return field(default=default, default_factory=factory, metadata={"doc": text})
