"""Packed trials: several trials of one base trained in one process, one forward and backward pass per step.

Each trial's batch joins one batch through the frozen base (modeling/packed.py routes each trial's rows through its
own adapter and head); each trial keeps its own loss, optimizer, schedule, data order, evaluations, checkpoints and
run directory, written as train.py writes a run trained alone, so eval, predict, export and serve read it as such.
A packed trial sees the same rows in the same order from the same initial weights as alone; with dropout 0 it
computes the same numbers to float rounding (tested). With dropout, its masks come from the pack's one random
stream: the same distribution as alone, not the same draws.

A trial that finishes, stops early or fails leaves the pack and the others go on; a failure is one line in its run
folder (failure.txt). Killed, the pack resumes each trial from its own checkpoint (`--resume`).
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass, field

import torch

from ..config import Config, metric_for_best
from ..errors import LoralabError
from ..methods import method_of
from ..runs.files import make_dir
from ..runs.rundir import LoopState, RunDir, Summary
from ..tasks import task_for
from .train import (
    BatchStream,
    Prepared,
    Progress,
    check_finite,
    check_run_dir,
    compiled_step,
    evaluate_and_keep,
    finish,
    log_training,
    make_accelerator,
    optimizer_and_schedule,
    prepare,
    resumed_state,
    start_run_dir,
)

# What may differ between the trials of one pack; every other setting must be equal (one base, tokenizer, data,
# shape of batch and precision for the shared pass).
PER_TRIAL = {
    "train.seed", "train.lr", "train.scheduler", "train.warmup_steps", "train.warmup_ratio", "train.weight_decay",
    "train.steps", "train.epochs", "train.eval_every", "train.log_every", "train.class_weights",
    "train.label_smoothing", "train.max_grad_norm", "train.layer_lr_decay", "train.early_stopping_patience",
    "train.metric_for_best", "train.calibrate", "train.tune_thresholds", "train.keep_checkpoint",
    "lora.r", "lora.alpha", "lora.dropout", "lora.rank_pattern", "lora.use_rslora", "lora.plus_ratio", "lora.init",
    "lora.budget", "output.name",
}  # fmt: skip


def pack_key(cfg: Config) -> tuple:
    """Trials of equal keys can share a pack."""
    return tuple(sorted((k, repr(v)) for k, v in cfg.flat().items() if k not in PER_TRIAL))


def why_alone(cfg: Config) -> str | None:
    """Why a trial trains alone, not in a pack (None: it can pack)."""
    if cfg.model.finetune != "lora":
        return "full fine-tuning trains every weight of its own model: there is no frozen base to share"
    if (reason := method_of(cfg).why_alone(cfg)) is not None:
        return reason
    if cfg.train.precision == "fp16":
        return "fp16 scales each trial's loss with a gradient scaler of its own"
    if cfg.train.report_to:
        return "experiment trackers (train.report_to) follow one run per process"
    return None


@dataclass
class Member:
    """One trial of the pack: its run, model, optimizer, schedule, data stream and loop state."""

    index: int  # its model's position in the Pack
    position: int  # its configuration's position in the pack's list (and in the results)
    prep: Prepared
    run: RunDir
    optimizer: object = None
    scheduler: object = None
    state: LoopState = field(default_factory=LoopState)
    batches: BatchStream | None = None
    loss_of: object = None
    window_loss: torch.Tensor | None = None
    window_steps: int = 0
    shown_loss: float | None = None
    started: float = 0.0

    @property
    def cfg(self) -> Config:
        return self.prep.cfg

    @property
    def done(self) -> bool:
        return self.state.step >= self.cfg.train.steps or self.state.stopped_early


def train_pack(cfgs: list[Config], resume: list[bool], log=print) -> list[Summary | Exception]:
    """Train `cfgs` (all of one pack_key, none with a why_alone) in one pack, each in its own run directory,
    resuming those whose resume flag is set; returns each trial's Summary, or the error it failed with."""
    keys = {pack_key(cfg) for cfg in cfgs}
    if len(keys) != 1:
        raise LoralabError("bug: trials of different pack keys in one pack")
    precision, accelerator = make_accelerator(cfgs[0])  # equal keys: one precision and device for all
    if accelerator.num_processes > 1:
        raise LoralabError("packed trials run in one process: launch without accelerate's several processes")
    log(f"pack of {len(cfgs)} trials; {precision.line()}")
    results: list[Summary | Exception | None] = [None] * len(cfgs)
    with ExitStack() as locks:
        members = claim_runs(cfgs, resume, accelerator, results, locks, log)
        if members:
            run_pack(accelerator, precision, members, resume, results, log)
    return results


def claim_runs(cfgs, resume, accelerator, results, locks, log) -> list[Member]:
    """Check, prepare and claim each trial's run directory; a trial whose input is bad fails alone. Each model's
    frozen tensors become the first's as soon as it is built, so the pack never holds two bases."""
    from ..modeling.packed import share_frozen, unpackable

    members: list[Member] = []
    for i, cfg in enumerate(cfgs):
        run = RunDir.for_config(cfg)
        try:
            check_run_dir(run, resume[i])
            if resume[i]:
                locks.enter_context(run.lock())
            prep = prepare(cfg, log)
            if (reason := unpackable(prep.model)) is not None:
                raise LoralabError(f"bug: a trial of pack key cannot pack: {reason}")
            if members:
                share_frozen(members[0].prep.model, prep.model)
            if not resume[i]:
                make_dir(run.path)
                locks.enter_context(run.lock())
            start_run_dir(run, prep, resume[i])
        except LoralabError as err:
            results[i] = err
            log(f"trial {cfg.output.name} failed: {err}")
            continue
        members.append(Member(index=len(members), position=i, prep=prep, run=run))
    return members


def run_pack(accelerator, precision, members: list[Member], resume: list[bool], results: list, log) -> None:
    """The packed loop: one pass over every active trial's batch per step, then each trial's own optimizer step,
    logging, evaluation and end."""
    from ..modeling.model import cast_frozen_linears, checkpoint_layers
    from ..modeling.packed import Pack

    device = accelerator.device
    host = members[0].prep.model
    cast_frozen_linears(host, precision.used)  # the shared base, cast once for all
    pack = Pack([m.prep.model for m in members])
    forward, buckets = compiled_step(accelerator, pack.host, members[0].prep)  # one base, one data: one compile
    for m in members:
        cfg, t = m.cfg, m.cfg.train
        if t.gradient_checkpointing and m is members[0]:
            checkpoint_layers(host.get_base_model())
        m.prep.model.to(device)
        m.optimizer, m.scheduler = optimizer_and_schedule(m.prep.model, cfg)
        m.state = resumed_state(accelerator, m.run, m.prep.model, m.optimizer, m.scheduler, resume[m.position])
        m.batches = BatchStream(m.prep.tokenizer, m.prep.train_set, cfg, accelerator, buckets)
        task, decision = task_for(cfg), m.prep.decision
        weights = torch.tensor(t.class_weights, device=device) if t.class_weights else None
        m.loss_of = lambda logits, labels, task=task, d=decision, w=weights, s=t.label_smoothing: task.loss(
            logits, labels, d, w, s
        )
        m.window_loss = torch.zeros((), device=device)
        m.started = time.perf_counter() - m.state.elapsed_s
        m.prep.model.train()
    active = [m for m in members if not m.done]
    progress = Progress(sum(m.cfg.train.steps for m in members), sum(m.state.step for m in members), True)
    samples, pack_time, iteration = 0, 0.0, 0
    every = members[0].cfg.train.log_every  # the progress line's cadence where stderr is not a terminal
    while active:
        iteration += 1
        step_started = time.perf_counter()
        losses = packed_step(accelerator, pack, forward, active)
        for m, loss in zip(active, losses):
            m.window_loss += loss
            m.window_steps += 1
            m.state.step += 1
        samples += sum(m.cfg.train.batch_size * m.cfg.train.grad_accum for m in active)
        step_s = time.perf_counter() - step_started
        pack_time += step_s
        leaving = []
        for m in active:
            m.state.train_time_s += step_s
            try:
                after_step(accelerator, precision, m)
            except LoralabError as err:
                results[m.position] = err
                m.run.write_failure(str(err))
                log(f"trial {m.cfg.output.name} failed at step {m.state.step}: {err}")
                leaving.append(m)
                continue
            if m.done:
                leaving.append(m)
                wall = time.perf_counter() - m.started
                per_step = m.cfg.train.batch_size * m.cfg.train.grad_accum
                results[m.position] = finish(accelerator, m.run, m.prep, precision, m.state, wall, per_step)
        active = [m for m in active if m not in leaving]
        metric = metric_for_best(members[0].cfg)
        logged = iteration % every == 0 or not active
        progress.step(
            sum(m.state.step for m in members), logged, advance=len(active) + len(leaving),
            trials=f"{len(active)}/{len(members)}", samples_s=f"{samples / max(pack_time, 1e-9):.1f}",
            **{f"best_val_{metric}": _best(members)},
        )  # fmt: skip
    progress.close()


def _best(members: list[Member]) -> str:
    scores = [m.state.best_score for m in members if m.state.best_score is not None]
    return f"{max(scores):.4f}" if scores else "-"


def packed_step(accelerator, pack, forward, active: list[Member]) -> list[torch.Tensor]:
    """Forward and backward of every active trial's micro-batches in one pass each, then each trial's clip and
    optimizer step; returns each trial's mean loss of the step, left on the device."""
    accum = active[0].cfg.train.grad_accum  # equal in a pack
    totals = [torch.zeros((), device=accelerator.device) for _ in active]
    pad_id = active[0].prep.tokenizer.pad_token_id
    for micro in range(accum):
        if accelerator.device.type == "cuda" and active[0].batches.buckets:  # CUDA graphs: a new step
            torch.compiler.cudagraph_mark_step_begin()
        parts = [m.batches[m.state.step * accum + micro] for m in active]
        labels = [part.pop("labels") for part in parts]
        batch, sizes = join(parts, pad_id, active[0].prep.tokenizer.padding_side)
        with pack.rows([m.index for m in active], sizes), accelerator.autocast():
            logits = forward(**batch).logits.float()
        losses = [m.loss_of(part, y) for m, part, y in zip(active, logits.split(sizes), labels)]
        (sum(losses) / accum).backward()  # each trial's tensors get its own loss's gradient only
        for total, loss in zip(totals, losses):
            total += loss.detach() / accum
    for m in active:
        if m.cfg.train.max_grad_norm > 0:
            params = [p for p in m.prep.model.parameters() if p.requires_grad]
            torch.nn.utils.clip_grad_norm_(params, m.cfg.train.max_grad_norm)
        m.optimizer.step()
        m.scheduler.step()
        m.optimizer.zero_grad(set_to_none=True)
    return totals


def join(parts: list[dict], pad_id: int, side: str = "right") -> tuple[dict, list[int]]:
    """The trials' batches as one, each padded to the longest (pads masked out); and each one's row count."""
    length = max(part["input_ids"].shape[1] for part in parts)
    fill = {"input_ids": pad_id}
    joined = {}
    for key in parts[0]:
        padded = []
        for part in parts:
            tensor = part[key]
            missing = length - tensor.shape[1]
            pad = (missing, 0) if side == "left" else (0, missing)
            padded.append(torch.nn.functional.pad(tensor, pad, value=fill.get(key, 0)) if missing else tensor)
        joined[key] = torch.cat(padded)
    return joined, [part["input_ids"].shape[0] for part in parts]


def after_step(accelerator, precision, m: Member) -> None:
    """A trial's logging and evaluation after its step, as train.py's loop does them; a loss that is no longer a
    number fails the trial."""
    t = m.cfg.train
    step = m.state.step
    if step % t.log_every == 0 or step == t.steps:
        m.shown_loss = m.window_loss.item() / m.window_steps
        check_finite(m.shown_loss, step, m.cfg)
        row = {"step": step, "split": "train", "loss": m.shown_loss, "lr": m.scheduler.get_last_lr()[0]}
        samples_per_s = step * t.batch_size * t.grad_accum / max(m.state.train_time_s, 1e-9)
        log_training(accelerator, m.run, row, samples_per_s, time.perf_counter() - m.started)
        m.window_loss.zero_()
        m.window_steps = 0
    if step % t.eval_every == 0 or step == t.steps:
        m.state.elapsed_s = time.perf_counter() - m.started
        evaluate_and_keep(accelerator, m.run, m.prep, m.prep.model, precision, m.state, m.optimizer, m.scheduler)
