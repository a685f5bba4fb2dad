"""The training loop: budget check, data, model, then steps with evaluation, checkpoints and resume."""

from __future__ import annotations

import functools
import json
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from . import config as config_io
from .budget import Breakdown, ModelShapes, breakdown_for, check_budget, load_model_config
from .config import Config
from .data import Encoded, collate, encode, load_labelled, split_validation, training_batches
from .errors import LoralabError
from .evaluate import evaluate
from .model import build_model, load_tokenizer, optimizer_groups
from .store import RunDir, replace_dir, write_json_atomic


@dataclass
class Prepared:
    """Everything checked and loaded before a run directory is created."""

    cfg: Config
    breakdown: Breakdown
    tokenizer: object
    model: object
    train_set: Encoded
    val_set: Encoded


def prepare(cfg: Config, log=print) -> Prepared:
    """Check budget, data and model; any bad input fails here, before anything is written."""
    shapes = ModelShapes.of(load_model_config(cfg))
    breakdown, plan = breakdown_for(cfg, shapes)
    log(breakdown.format())
    check_budget(cfg, breakdown, shapes)
    tokenizer = load_tokenizer(cfg.model.name)
    rows = load_labelled(cfg.data.train, cfg.data)
    train_rows, val_rows = split_validation(rows, cfg.data.val_size, cfg.data.split_seed)
    train_set = encode(tokenizer, train_rows, cfg.data.max_length)
    val_set = encode(tokenizer, val_rows, cfg.data.max_length)
    torch.manual_seed(cfg.train.seed)  # the head's random initialisation
    model = build_model(cfg, shapes.config, plan, breakdown)
    return Prepared(cfg, breakdown, tokenizer, model, train_set, val_set)


def open_run_dir(cfg: Config, resume: bool) -> RunDir:
    run = RunDir(Path(cfg.output.dir) / cfg.output.name)
    if run.path.exists() and not resume:
        raise LoralabError(f"run directory {run.path} exists: pass --resume to continue it, or set output.name")
    if resume and run.summary.exists():
        raise LoralabError(f"run {run.path} has already finished (summary.json exists)")
    if resume and run.config.exists():
        saved = config_io.read_yaml(run.config)
        if saved != cfg.to_dict():
            raise LoralabError(f"--resume: the config differs from {run.config}; resume with the same config")
    run.path.mkdir(parents=True, exist_ok=True)
    config_io.save(cfg, run.config)
    return run


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_adapter(model, folder: Path, extra: dict[str, object] | None = None) -> None:
    """PEFT's save_pretrained (LoRA weights and the head), swapped in whole."""

    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp)
        for name, content in (extra or {}).items():
            (tmp / name).write_text(json.dumps(content))

    replace_dir(folder, fill)


def save_checkpoint(run: RunDir, model, optimizer, scheduler, state: dict) -> None:
    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp / "adapter")
        torch.save(
            {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state(), **state},
            tmp / "state.pt",
        )

    replace_dir(run.checkpoint, fill)


def load_checkpoint(run: RunDir, model, optimizer, scheduler) -> dict:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(run.checkpoint / "adapter" / "adapter_model.safetensors"))
    state = torch.load(run.checkpoint / "state.pt", weights_only=False)
    optimizer.load_state_dict(state.pop("optimizer"))
    scheduler.load_state_dict(state.pop("scheduler"))
    set_rng_state(state.pop("rng"))
    return state


def library_versions() -> dict:
    import accelerate
    import peft
    import transformers

    from . import __version__

    return {
        "loralab": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "accelerate": accelerate.__version__,
    }


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10
        )
    except OSError:
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def val_accuracy(state: dict) -> str:
    return f"{state['last_eval']['accuracy']:.4f}" if state["last_eval"] else "-"


def train(cfg: Config, resume: bool = False, on_eval: Callable[[int, float], None] | None = None) -> dict:
    """Run one configuration to the end (or to early stopping) and return its summary.

    `on_eval(step, accuracy)` is called after each evaluation's checkpoint; a search uses it to
    prune a trial by raising.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    t = cfg.train
    # Accelerate keeps one precision per process; a sweep trains several configurations in one
    # process, so each run starts from a fresh state (the distributed part, PartialState, is kept).
    AcceleratorState._reset_state(reset_partial_state=False)
    try:
        accelerator = Accelerator(
            mixed_precision={"fp32": "no"}.get(t.precision, t.precision), gradient_accumulation_steps=t.grad_accum
        )
    except ValueError as err:
        raise LoralabError(f"train.precision '{t.precision}': {str(err).splitlines()[0]}") from err
    log = accelerator.print
    prep = prepare(cfg, log)
    run = open_run_dir(cfg, resume) if accelerator.is_main_process else RunDir(Path(cfg.output.dir) / cfg.output.name)
    accelerator.wait_for_everyone()

    model, tokenizer, train_set, val_set = prep.model, prep.tokenizer, prep.train_set, prep.val_set
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(optimizer_groups(model, cfg), lr=t.lr, weight_decay=t.weight_decay)
    scheduler = get_scheduler(
        t.scheduler if t.scheduler != "constant" else "constant_with_warmup",
        optimizer,
        num_warmup_steps=t.warmup_steps,
        num_training_steps=t.steps,
    )
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    n_classes = len(cfg.data.label_names)
    class_weights = torch.tensor(t.class_weights, device=accelerator.device) if t.class_weights else None

    state = {"step": 0, "best_accuracy": -1.0, "best_step": 0, "evals_since_best": 0, "last_eval": None}
    state |= {"train_time_s": 0.0, "elapsed_s": 0.0}
    if resume and run.checkpoint.exists():
        state.update(load_checkpoint(run, accelerator.unwrap_model(model), optimizer, scheduler))
        if accelerator.is_main_process:
            run.truncate_metrics(state["step"])
        log(f"resumed {run.path} at step {state['step']}")
    elif accelerator.is_main_process:
        run.metrics.unlink(missing_ok=True)

    # Each process takes every world_size-th micro-batch of one shared, seeded stream.
    world, rank = accelerator.num_processes, accelerator.process_index
    batches_per_epoch = -(-len(train_set) // t.batch_size)

    epoch_batches = functools.lru_cache(maxsize=1)(
        lambda epoch: training_batches(train_set.lengths, t.batch_size, t.seed, epoch)
    )

    def micro_batch(index: int) -> dict:
        epoch, position = divmod(index * world + rank, batches_per_epoch)
        return collate(tokenizer, train_set, epoch_batches(epoch)[position]).to(accelerator.device)

    samples_per_step = t.batch_size * t.grad_accum * world
    started = time.perf_counter() - state["elapsed_s"]
    window_loss, window_steps, shown_loss = 0.0, 0, None
    stopped_early = False
    progress = tqdm(total=t.steps, initial=state["step"], disable=not accelerator.is_local_main_process, dynamic_ncols=True)
    model.train()
    while state["step"] < t.steps and not stopped_early:
        step_started = time.perf_counter()
        for micro in range(t.grad_accum):
            batch = micro_batch(state["step"] * t.grad_accum + micro)
            labels = batch.pop("labels")
            with accelerator.accumulate(model), accelerator.autocast():
                logits = model(**batch).logits.float()
                loss = F.cross_entropy(logits, labels, weight=class_weights, label_smoothing=t.label_smoothing)
                accelerator.backward(loss)
            window_loss += loss.item() / t.grad_accum
        if t.max_grad_norm > 0:
            accelerator.clip_grad_norm_(trainable, t.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state["step"] += 1
        state["train_time_s"] += time.perf_counter() - step_started
        step, window_steps = state["step"], window_steps + 1
        samples_per_s = step * samples_per_step / max(state["train_time_s"], 1e-9)

        if step % t.log_every == 0 or step == t.steps:
            row = {"step": step, "split": "train", "loss": window_loss / window_steps, "lr": scheduler.get_last_lr()[0]}
            row |= {"samples_per_s": samples_per_s, "elapsed_s": time.perf_counter() - started}
            if accelerator.is_main_process:
                run.append_metrics(row)
            shown_loss, window_loss, window_steps = row["loss"], 0.0, 0

        if step % t.eval_every == 0 or step == t.steps:
            result = evaluate(
                model, tokenizer, val_set, t.eval_batch_size, n_classes, accelerator.device, accelerator.autocast, cfg.model.pooling
            )
            state["elapsed_s"] = time.perf_counter() - started
            state["last_eval"] = {"step": step, **result.metrics()}
            if result.accuracy > state["best_accuracy"]:
                state.update(best_accuracy=result.accuracy, best_step=step, evals_since_best=0)
                if accelerator.is_main_process:
                    predictions = {"step": step, "labels": val_set.labels, "predictions": result.predictions}
                    save_adapter(accelerator.unwrap_model(model), run.best, {"val_predictions.json": predictions})
            else:
                state["evals_since_best"] += 1
            stopped_early = 0 < t.early_stopping_patience <= state["evals_since_best"]
            if accelerator.is_main_process:
                run.append_metrics({"step": step, "split": "val", **result.metrics(), "elapsed_s": state["elapsed_s"]})
                save_checkpoint(run, accelerator.unwrap_model(model), optimizer, scheduler, state)
            if on_eval is not None:
                on_eval(step, result.accuracy)
        progress.set_postfix(loss=shown_loss and f"{shown_loss:.4f}", samples_s=f"{samples_per_s:.1f}", val_acc=val_accuracy(state))
        progress.update(1)
    progress.close()

    summary = {
        "name": cfg.output.name,
        "peak_val_accuracy": state["best_accuracy"],
        "peak_step": state["best_step"],
        "final": state["last_eval"],
        "steps_done": state["step"],
        "stopped_early": stopped_early,
        "val_rows": len(val_set),
        "trainable": prep.breakdown.as_dict(),
        "wall_time_s": time.perf_counter() - started,
        "train_samples_per_s": state["step"] * samples_per_step / max(state["train_time_s"], 1e-9),
        "versions": library_versions(),
        "git_commit": git_commit(),
    }
    if accelerator.is_main_process:
        save_adapter(accelerator.unwrap_model(model), run.last)
        write_json_atomic(run.summary, summary)
        log(f"peak val accuracy {summary['peak_val_accuracy']:.4f} at step {summary['peak_step']}; run in {run.path}")
    accelerator.wait_for_everyone()
    return summary
