"""Several trials of one base in one forward and backward pass (a pack): the frozen base reads each weight once
for the rows of every trial, and every adapted layer adds each trial's own LoRA update to that trial's rows only.

Each trial keeps a whole PEFT model of its own (its adapter, its head, built from its own seed, saved and
evaluated as a model trained alone), but its frozen tensors are replaced by the first model's, so the pack holds
one base. During a packed pass the first model (the host) runs the batch: its LoRA layers compute, for the rows
of trial k, base(x) + B_k A_k dropout_k(x) x scaling_k in two batched matmuls over the trials' stacked matrices
(zero-padded to the largest rank), and its trained head copies hand each trial's rows to that trial's head. The
rows of one trial are contiguous in the batch. Outside a packed pass every model, the host too, computes as
PEFT does: a trial is evaluated and saved alone.

Gradients reach each trial's own tensors only: the stacks are built from them inside the autograd graph at every
pass, and no operation of the base mixes rows. A trial whose loss becomes NaN leaves the others' numbers alone.
"""

from __future__ import annotations

from contextlib import contextmanager
from types import MethodType

import torch


def unpackable(model) -> str | None:
    """Why a built model cannot join a pack (None: it can): only plain LoRA layers and trained copies of whole
    modules (the head) are routed per trial."""
    from peft.tuners.lora import Linear as LoraLinear
    from peft.utils.other import ModulesToSaveWrapper

    for name, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if isinstance(module, LoraLinear):
            if module.lora_variant or any(b.bias is not None for b in module.lora_B.values()):
                return f"{name} is a LoRA variant or trains a bias"
        elif isinstance(module, ModulesToSaveWrapper):
            continue
        elif own and not _inside_copy_or_lora(model, name):
            return f"{name} trains its own weights"
    return None


def _inside_copy_or_lora(model, name: str) -> bool:
    return any(part in ("modules_to_save", "lora_A", "lora_B") for part in name.split("."))


class Pack:
    """K PEFT models of one base, of identical structure, trained in one pass (see the module's text).
    `models[0]` hosts the pass; `rows(members, sizes)` opens a packed pass for those trials' rows."""

    def __init__(self, models: list):
        from peft.tuners.lora import Linear as LoraLinear
        from peft.utils.other import ModulesToSaveWrapper

        self.models = models
        self.host = models[0]
        self.members: list[int] | None = None  # the trials whose rows the pass holds, in order; None: not packing
        self.sizes: list[int] = []
        for model in models[1:]:
            share_frozen(self.host, model)
        for name, module in self.host.named_modules():
            if isinstance(module, LoraLinear):
                module._loralab_pack = (self, [m.get_submodule(name) for m in models])
                module.forward = MethodType(_packed_lora, module)
            elif isinstance(module, ModulesToSaveWrapper):
                module._loralab_pack = (self, [m.get_submodule(name) for m in models])
                module.forward = MethodType(_packed_copies, module)

    @contextmanager
    def rows(self, members: list[int], sizes: list[int]):
        """A packed pass: the batch holds sizes[i] rows of trial members[i], in that order."""
        self.members, self.sizes = members, sizes
        try:
            yield
        finally:
            self.members, self.sizes = None, []


def share_frozen(host, model) -> None:
    """Every frozen tensor of `model` becomes the host's (the same Parameter): one base in memory, read once per
    pass, and cast or moved once for all."""
    shared = dict(host.named_parameters())
    for name, param in list(model.named_parameters()):
        if not param.requires_grad and shared[name] is not param:
            parent, _, leaf = name.rpartition(".")
            model.get_submodule(parent)._parameters[leaf] = shared[name]


def _adapter(layer) -> str:
    (name,) = layer.active_adapters  # a trial trains one adapter
    return name


def _packed_lora(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    pack, layers = self._loralab_pack
    if pack.members is None:
        return type(self).forward(self, x, *args, **kwargs)
    result = self.base_layer(x, *args, **kwargs)
    trials = [layers[k] for k in pack.members]
    names = [_adapter(layer) for layer in trials]
    rank = max(layer.r[name] for layer, name in zip(trials, names))
    down = torch.stack([_padded(layer.lora_A[name].weight, 0, rank) for layer, name in zip(trials, names)])
    up = torch.stack([_padded(layer.lora_B[name].weight, 1, rank) for layer, name in zip(trials, names)])
    scaling = torch.tensor([layer.scaling[name] for layer, name in zip(trials, names)], device=x.device)
    x = x.to(down.dtype)
    parts = x.split(pack.sizes)
    if any(layer.lora_dropout[name].training and getattr(layer.lora_dropout[name], "p", 0) for layer, name in
           zip(trials, names)):  # fmt: skip
        parts = [layer.lora_dropout[name](part) for layer, name, part in zip(trials, names, parts)]
    if len(set(pack.sizes)) == 1:  # every trial's rows in one batched matmul pair
        flat = torch.stack(parts).reshape(len(trials), -1, x.shape[-1])
        update = torch.bmm(torch.bmm(flat, down.transpose(1, 2)), up.transpose(1, 2)) * scaling[:, None, None]
    else:  # an epoch's last, shorter batch: trial by trial
        update = torch.cat([part @ d.T @ u.T * s for part, d, u, s in zip(parts, down, up, scaling)])
    return result + update.reshape(result.shape).to(result.dtype)


def _padded(weight: torch.Tensor, dim: int, rank: int) -> torch.Tensor:
    """A or B zero-padded along its rank dimension to `rank`: the padding adds nothing and gets no gradient."""
    missing = rank - weight.shape[dim]
    if not missing:
        return weight
    pad = (0, 0, 0, missing) if dim == 0 else (0, missing)
    return torch.nn.functional.pad(weight, pad)


def _packed_copies(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    pack, wrappers = self._loralab_pack
    if pack.members is None:
        return type(self).forward(self, x, *args, **kwargs)
    parts = x.split(pack.sizes)
    outs = []
    for k, part in zip(pack.members, parts):
        wrapper = wrappers[k]
        outs.append(wrapper.modules_to_save[_adapter(wrapper)](part, *args, **kwargs))
    return torch.cat(outs)
