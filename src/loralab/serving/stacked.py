"""PEFT's mixed-adapter batches in two batched matmuls per layer, whatever the number of adapters in a batch.

PEFT computes a mixed batch adapter by adapter: for each one in the batch, its rows are gathered, sent
through its LoRA matrices (or its copy of a trained head layer) and scattered back, so a batch of 16
rows for 16 adapters costs 16 rounds of small operations in every adapted layer (on MiniLM, 1.6x the time
of the same rows through one merged model). As punica and S-LoRA do for LLMs, the adapters' weights are
stacked once per layer instead, zero-padded to the largest rank, and every row picks its own slice in one
batched matmul. The stacks are rebuilt on the forward thread whenever an adapter is added or removed.

Only what PEFT's plain LoRA and trained Linear copies compute is replaced (no variant such as DoRA, no
LoRA bias: those layers keep PEFT's own loop), and the numbers are PEFT's to float rounding (tested
against `predict` of each run).
"""

from __future__ import annotations

from types import MethodType

import torch


def restack(model) -> None:
    """Stack the weights of every adapter in every adapted layer of a PEFT model, and route its mixed
    batches through the stacks (call again after adding or removing an adapter)."""
    from peft.tuners.lora import Linear as LoraLinear
    from peft.utils.other import ModulesToSaveWrapper

    for module in model.modules():
        if isinstance(module, LoraLinear) and not module.lora_variant and _plain(module):
            _stack_lora(module)
            module._mixed_batch_forward = MethodType(_lora_forward, module)
        elif isinstance(module, ModulesToSaveWrapper) and isinstance(module.original_module, torch.nn.Linear):
            _stack_copies(module)
            module._mixed_batch_forward = MethodType(_copies_forward, module)


def _plain(layer) -> bool:
    return all(b.bias is None for b in layer.lora_B.values())


def _slots(names: list[str]) -> dict[str, int]:
    """Each adapter's row in the stacks; the last row (zeros, or the base's own layer) is every other name."""
    return {name: i for i, name in enumerate(names)}


def _stack_lora(layer) -> None:
    names = list(layer.lora_A)
    base = layer.get_base_layer()
    rank = max(layer.r[name] for name in names)
    like = layer.lora_A[names[0]].weight
    down = like.new_zeros(len(names) + 1, rank, base.in_features)
    up = like.new_zeros(len(names) + 1, base.out_features, rank)
    with torch.no_grad():
        for i, name in enumerate(names):
            r = layer.r[name]
            down[i, :r] = layer.lora_A[name].weight
            up[i, :, :r] = layer.lora_B[name].weight * layer.scaling[name]  # the scaling folded in once
    layer._loralab_stack = (_slots(names), down, up)


def _rows(slots: dict[str, int], adapter_names: list[str], device) -> torch.Tensor:
    return torch.tensor([slots.get(name, len(slots)) for name in adapter_names], device=device)


def _lora_forward(self, x: torch.Tensor, *args, adapter_names: list[str], **kwargs) -> torch.Tensor:
    """The base layer's output plus each row's own LoRA update: x A_row^T B_row^T in two batched matmuls."""
    kwargs.pop("alora_offsets", None)  # a variant's argument: none of these layers has a variant
    result = self.base_layer(x, *args, **kwargs)
    slots, down, up = self._loralab_stack
    rows = _rows(slots, adapter_names, x.device)
    flat = x.reshape(x.shape[0], -1, x.shape[-1]).to(down.dtype)  # [rows, tokens, in]
    update = torch.bmm(torch.bmm(flat, down[rows].transpose(1, 2)), up[rows].transpose(1, 2))
    return result + update.reshape(result.shape).to(result.dtype)


def _stack_copies(wrapper) -> None:
    names = list(wrapper.modules_to_save)
    linears = [wrapper.modules_to_save[name] for name in names] + [wrapper.original_module]
    with torch.no_grad():
        weight = torch.stack([linear.weight for linear in linears])  # [adapters + 1, out, in]
        bias = None if linears[-1].bias is None else torch.stack([linear.bias for linear in linears])
    wrapper._loralab_stack = (_slots(names), weight, bias)


def _copies_forward(self, x: torch.Tensor, *args, adapter_names: list[str], **kwargs) -> torch.Tensor:
    """Each row through its own adapter's copy of a trained Linear (the base's own for rows of none)."""
    slots, weight, bias = self._loralab_stack
    rows = _rows(slots, adapter_names, x.device)
    flat = x.reshape(x.shape[0], -1, x.shape[-1]).to(weight.dtype)  # [rows, tokens, in]
    out = torch.bmm(flat, weight[rows].transpose(1, 2))
    if bias is not None:
        out = out + bias[rows].unsqueeze(1)
    return out.reshape(*x.shape[:-1], weight.shape[1])
