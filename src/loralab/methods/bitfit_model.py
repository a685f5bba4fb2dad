"""BitFit's model: a Hugging Face classifier of which only the named tensors train, with the part of PeftModel's
interface loralab uses. Apart from bitfit.py so that the method table loads without torch (loralab --help)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import LoralabError
from .bitfit import BITFIT_CONFIG, BITFIT_WEIGHTS


class BitFitModel(torch.nn.Module):
    """A Hugging Face classifier of which only the named tensors train (and are saved)."""

    def __init__(self, model, trained: list[str], trainable: bool):
        super().__init__()
        self.model, self.trained = model, trained
        model.requires_grad_(False)
        if trainable:
            params = dict(model.named_parameters())
            for name in trained:
                params[name].requires_grad_(True)

    @property
    def config(self):
        return self.model.config

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def get_base_model(self):
        return self.model

    def merge_and_unload(self):
        """Nothing to merge: the trained biases are the model's own tensors."""
        return self.model

    def save_pretrained(self, folder) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        params = dict(self.model.named_parameters())
        save_file({name: params[name].detach().contiguous() for name in self.trained}, str(folder / BITFIT_WEIGHTS))
        (folder / BITFIT_CONFIG).write_text(json.dumps({"method": "bitfit", "trained": self.trained}, indent=1))

    def load_saved(self, folder: Path) -> None:
        """The saved tensors over the model's own (a reload, or a checkpoint resumed)."""
        from safetensors.torch import load_file

        tensors = load_file(str(Path(folder) / BITFIT_WEIGHTS))
        unknown = sorted(set(tensors) - {name for name, _ in self.model.named_parameters()})
        if unknown or sorted(tensors) != sorted(self.trained):
            raise LoralabError(
                f"{folder}/{BITFIT_WEIGHTS} does not fit {self.model.config.model_type} as configured "
                f"({', '.join(unknown[:3]) or 'other tensors than its config names'}): was it trained on another base?"
            )
        with torch.no_grad():
            params = dict(self.model.named_parameters())
            for name, tensor in tensors.items():
                params[name].copy_(tensor)

    @classmethod
    def from_pretrained(cls, base, folder: Path) -> BitFitModel:
        trained = json.loads((Path(folder) / BITFIT_CONFIG).read_text())["trained"]
        model = cls(base, trained, trainable=False)
        model.load_saved(folder)
        return model
