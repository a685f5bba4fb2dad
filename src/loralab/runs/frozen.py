"""Frozen random weights, in one place: the randomly initialised head layers a run trains on top of without
training them (e.g. RoBERTa's `classifier.dense` under `model.head: out_proj`). A reload would draw them anew,
so they are saved beside the adapter, loaded back before it, and two adapters can share one base only where
they were trained on the same ones. Which weights these are is decided where the model is built
(modeling/model.py: frozen_names)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import LoralabError

if TYPE_CHECKING:  # torch loads with the first model, not to read a run's files (loralab runs, report)
    import torch

FROZEN_WEIGHTS = "frozen_weights.safetensors"


def save_frozen(folder: Path, weights: dict[str, torch.Tensor]) -> None:
    """Beside an adapter in `folder` (nothing where it has none)."""
    from safetensors.torch import save_file

    if weights:
        save_file({name: t.detach().cpu().contiguous() for name, t in weights.items()}, str(folder / FROZEN_WEIGHTS))


def has_frozen(folder: Path) -> bool:
    return (Path(folder) / FROZEN_WEIGHTS).exists()


def read_frozen(folder: Path) -> dict[str, torch.Tensor]:
    """The frozen weights saved beside an adapter (empty where it has none)."""
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / FROZEN_WEIGHTS)) if has_frozen(folder) else {}


def same_frozen(folder: Path, other: Path) -> bool:
    """Whether two adapters were trained on the same frozen weights (or both on none)."""
    mine, theirs = read_frozen(folder), read_frozen(other)
    return mine.keys() == theirs.keys() and all(mine[k].equal(theirs[k]) for k in mine)


def load_frozen_into(model, weights: dict[str, torch.Tensor]) -> None:
    """Copy saved frozen weights into a (not yet PEFT-wrapped, or unwrapped base) model by parameter name."""
    if not weights:
        return
    params = dict(model.named_parameters())
    import torch

    with torch.no_grad():
        for name, value in weights.items():
            target = params[name] if name in params else params.get(_lora_base_name(name))
            if target is None:
                raise LoralabError(f"saved frozen weight '{name}' has no place in the model")
            target.copy_(value)


def _lora_base_name(name: str) -> str:
    """Where PEFT moved a LoRA-wrapped layer's own weight: `x.dense.weight` -> `x.dense.base_layer.weight`."""
    module, _, leaf = name.rpartition(".")
    return f"{module}.base_layer.{leaf}"
