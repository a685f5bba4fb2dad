"""BitFit (Ben Zaken et al. 2022): only the biases of the adapted layers train, and the head as model.head says.

PEFT has no tuner for it (its bias="all" rides on LoRA matrices), so this is the one method outside PEFT:
BitFitModel (bitfit_model.py, loaded with the first model) holds the Hugging Face model and answers the part of
PeftModel's interface loralab uses (save_pretrained, from_pretrained, merge_and_unload, get_base_model). Its files
are named apart from PEFT's so that no PEFT loader takes them for its own: bitfit_config.json (which tensors) and
bitfit_model.safetensors."""

from __future__ import annotations

from pathlib import Path

from .base import Method

BITFIT_CONFIG = "bitfit_config.json"
BITFIT_WEIGHTS = "bitfit_model.safetensors"


class BitFit(Method):
    name = "bitfit"
    label = "BitFit"
    size_field = None
    files = (BITFIT_CONFIG, BITFIT_WEIGHTS)  # named apart from PEFT's: no PEFT loader takes them for its own
    title = "BitFit weights (the adapted layers' biases and the head)"
    library = "transformers"

    def settings(self, cfg) -> str:
        return "only biases: no size to choose"

    def layer_params(self, shape, rank: int, cfg, kind: str) -> int:
        return shape.out_features if shape.has_bias else 0

    def attach(self, base, cfg, plan):
        biases = [f"{name}.bias" for name in plan.lora_ranks if base.get_submodule(name).bias is not None]
        head = [f"{module}.{name}" for module in plan.trained_whole
                for name, _ in base.get_submodule(module).named_parameters()]  # fmt: skip
        from .bitfit_model import BitFitModel

        return BitFitModel(base, biases + head, trainable=True)

    def load(self, base, folder: Path):
        from .bitfit_model import BitFitModel

        return BitFitModel.from_pretrained(base, folder)

    def restore(self, model, folder: Path) -> None:
        model.load_saved(folder)

    def size_label(self, sizes: list[int]) -> str:
        return "biases"

    def loading_lines(self) -> list[str]:
        return [
            "# BitFit: the trained biases and head, loaded over the base's own (no PEFT needed):",
            "from safetensors.torch import load_file",
            f'base.load_state_dict(load_file(f"{{folder}}/{BITFIT_WEIGHTS}"), strict=False)',
            "model = base.eval()",
        ]
