"""The interface of a parameter-efficient method: everything outside methods/ asks the method object."""

from __future__ import annotations

import dataclasses
from pathlib import Path

# What PEFT's save_pretrained writes for every tuner: the config first, then the weights.
PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors")


class Method:
    """name, label           lora.method (and PEFT's name for it), and its name as papers write it
    size_field            the lora.* field that sizes every adapted layer (None: the size is fixed)
    lr_scale()            a trained parameter's learning rate as a multiple of train.lr (LoRA+: its B matrices)
    why_alone()           why an adapter of a config cannot share a forward pass with others (PEFT mixes plain LoRA
                          adapters in one batch, no other method); None: it can
    layer_params()        trainable parameters of one adapted Linear (in_features, out_features, has_bias)
    peft_config()         PEFT's config for a plan of modules (budget/scope.py's AdapterPlan)
    attach(), load()      the base with a new adapter to train, or with the one saved in a folder (PEFT's by default)
    files, restore()      the files an adapter of it is saved in (its config first), and what puts a checkpoint's
                          saved weights back into the model being trained (a resumed run)
    options, check()      the dataclass of its own lora.* settings (with their help and defaults; they join config's
                          lora section, and another method's run refuses them), and what is wrong with a config's
                          values for it (None: nothing)
    title, library        what the adapter-only export's model card calls it, and the library that loads it
    settings()            its settings as the model card lists them
    loading_lines()       how a user loads an adapter-only export over `base` from `folder` (the model card's code)
    plan_problem()        why a plan of modules cannot be built or counted exactly under this method (None: it can)
    size_limit()          the largest size its layers can take (None: no limit but the budget)
    start_size()          the size it trains from, where that is not its final, counted size (AdaLoRA prunes)
    after_step(), regularization(), keeps_from_step()
                          what the training loop adds: a step after each optimizer step, a term of the loss, the
                          first step whose adapter may be kept as the run's best or last
    """

    name = ""
    label = ""  # its name as papers write it
    size_field: str | None = "r"
    resumable = True  # whether a checkpoint holds all of its training state
    files: tuple[str, ...] = PEFT_FILES
    title = ""
    library = "peft"
    options: type | None = None

    def option_defaults(self) -> dict:
        """Each of its own settings with its default."""
        if self.options is None:
            return {}
        return {
            f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
            for f in dataclasses.fields(self.options)
        }

    def check(self, cfg) -> str | None:
        return None

    def lr_scale(self, parameter: str, cfg) -> float:
        """The learning rate of a trained parameter, as a multiple of train.lr."""
        return 1.0

    def why_alone(self, cfg) -> str | None:
        return f"a {self.label} adapter, which PEFT cannot mix with others in one batch"

    def layer_params(self, shape, rank: int, cfg, kind: str) -> int:
        raise NotImplementedError

    def peft_config(self, cfg, plan):
        raise NotImplementedError

    def attach(self, base, cfg, plan):
        from peft import get_peft_model

        return get_peft_model(base, self.peft_config(cfg, plan))

    def load(self, base, folder):
        from peft import PeftModel

        return PeftModel.from_pretrained(base, folder)

    def settings(self, cfg) -> str:
        return f"r={cfg.lora.r}, dropout={cfg.lora.dropout:g}"

    def restore(self, model, folder: Path) -> None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(model, load_file(str(Path(folder) / self.files[1])))

    def loading_lines(self) -> list[str]:
        return ["from peft import PeftModel", "model = PeftModel.from_pretrained(base, folder).eval()"]

    def plan_problem(self, plan, shapes, cfg) -> str | None:
        limit = self.size_limit(plan, shapes)
        if limit is not None and self.size(cfg) > limit:
            return f"lora.{self.size_field} {self.size(cfg)} is more than {self.name} can take here: at most {limit}"
        return None

    def size_limit(self, plan, shapes) -> int | None:
        return None

    def start_size(self, cfg) -> int | None:
        return None

    def after_step(self, model, step: int) -> None:
        return None

    def regularization(self, model):
        return None

    def keeps_from_step(self, cfg) -> int:
        return 0

    def size(self, cfg) -> int:
        return getattr(cfg.lora, self.size_field) if self.size_field else 0

    def size_label(self, sizes: list[int]) -> str:
        """How a breakdown row names the size of its layers, e.g. r8 or r4/8."""
        return "r" + "/".join(str(r) for r in sizes)
