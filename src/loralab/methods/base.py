"""The interface of a parameter-efficient method: everything outside methods/ asks the method object."""

from __future__ import annotations


class Method:
    """name                  lora.method, and PEFT's name for it
    size_field            the lora.* field that sizes every adapted layer (None: the size is fixed)
    mixes_in_batches      whether PEFT can answer rows of several adapters of it in one forward pass
    layer_params()        trainable parameters of one adapted Linear (in_features, out_features, has_bias)
    peft_config()         PEFT's config for a plan of modules (budget/scope.py's AdapterPlan)
    attach(), load()      the base with a new adapter to train, or with the one saved in a folder (PEFT's by default)
    loading_lines()       how a user loads an adapter-only export over `base` from `folder` (the model card's code)
    plan_problem()        why a plan of modules cannot be built or counted exactly under this method (None: it can)
    size_limit()          the largest size its layers can take (None: no limit but the budget)
    start_size()          the size it trains from, where that is not its final, counted size (AdaLoRA prunes)
    after_step(), regularization(), keeps_from_step()
                          what the training loop adds: a step after each optimizer step, a term of the loss, the
                          first step whose adapter may be kept as the run's best or last
    """

    name = ""
    size_field: str | None = "r"
    mixes_in_batches = False
    resumable = True  # whether a checkpoint holds all of its training state

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
