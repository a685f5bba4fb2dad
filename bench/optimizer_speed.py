"""AdamW step time on a configuration's real trainable parameters: the default implementation against
the fused one that `loralab train` uses, on the same tensors and gradients, in one run.

    python bench/optimizer_speed.py --model $(../shared/tools/offline-models mpnet-base)
    python bench/optimizer_speed.py --model ... lora.scope=[query,key,value,attention_output,ffn_in,ffn_out] \
        lora.r=6 model.head=out_proj

Prints milliseconds per step of each, the ratio, and the largest difference between the weights
the two reach after the same steps.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="local model folder")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("overrides", nargs="*", help="section.key=value, as for loralab train")
    args = parser.parse_args()

    from loralab import config
    from loralab.budget import count as budget
    from loralab.modeling.model import build_model, optimizer_groups

    cfg = config.load(ROOT / "configs" / "seed.yaml", [f"model.name={args.model}", *args.overrides])
    shapes = budget.shapes_for(cfg)
    breakdown, plan = budget.breakdown_for(cfg, shapes)
    model, _ = build_model(cfg, shapes, plan, breakdown)
    torch.manual_seed(0)
    grads = {name: torch.randn_like(p) for name, p in model.named_parameters() if p.requires_grad}
    start = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    print(f"{breakdown.total:,} trainable parameters in {len(grads)} tensors")

    def time_steps(fused: bool) -> tuple[float, dict]:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.requires_grad:
                    p.copy_(start[name])
                    p.grad = grads[name].clone()
        optimizer = torch.optim.AdamW(optimizer_groups(model, cfg), lr=cfg.train.lr, fused=fused)
        optimizer.step()  # first step allocates the state: not timed
        began = time.perf_counter()
        for _ in range(args.steps):
            optimizer.step()
        seconds = (time.perf_counter() - began) / args.steps
        return seconds, {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}

    default_s, default_weights = time_steps(fused=False)
    fused_s, fused_weights = time_steps(fused=True)
    difference = max((default_weights[n] - fused_weights[n]).abs().max().item() for n in grads)
    print(f"default AdamW {default_s * 1e3:.2f} ms/step, fused {fused_s * 1e3:.2f} ms/step")
    print(f"fused / default speed: {default_s / fused_s:.2f}x; largest weight difference {difference:.2e}")


if __name__ == "__main__":
    main()
