"""The training loop: budget check, data, model, then steps with evaluation, checkpoints and resume."""

from __future__ import annotations

import functools
import math
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import hardware, strictjson
from ..allocator import release_freed_memory
from ..budget.count import Breakdown, breakdown_for, check_budget, shapes_for
from ..config import Config, check_class_weights, metric_for_best, oriented
from ..data import DataIdentity, check_label_fit, identify, label_names_of, training_and_validation
from ..encoding import Encoded, collate, encode_rows, length_buckets, training_batches
from ..errors import LoralabError, warn
from ..methods import method_of
from ..modeling.forward import Evaluation, evaluate
from ..modeling.model import (
    build_model,
    cast_frozen_linears,
    check_max_length,
    check_model_folder,
    checkpoint_layers,
    load_tokenizer,
    optimizer_groups,
    uses_token_types,
)
from ..runs.files import make_dir
from ..runs.rundir import LoopState, Predictions, RunDir, Summary
from ..tasks import Decision, task_for
from ..tasks.base import MIN_CALIBRATION_ROWS
from .tracking import check_installed, start_trackers, tracker_settings


@dataclass
class Prepared:
    """Everything checked and loaded before a run directory is created."""

    cfg: Config
    breakdown: Breakdown
    tokenizer: object
    model: object
    frozen: dict[str, torch.Tensor]  # random frozen weights the adapter depends on, saved with it
    train_set: Encoded
    val_set: Encoded
    data: DataIdentity
    decision: Decision  # a regression's target scaling, from the training rows


def prepare(cfg: Config, log=print, processes: int = 1) -> Prepared:
    """Check data, budget and model; any bad input fails here, before anything is written."""
    # Data first: the label set comes from it where data.label_names does not name one, and the
    # budget counts one head output per class.
    rows, train_rows, val_rows = training_and_validation(cfg.data)
    cfg.data.label_names = label_names_of(cfg.data)
    check_class_weights(cfg)
    for problem in check_label_fit(cfg.data, train_rows, val_rows):
        warn(problem)
    if cfg.train.calibrate == "temperature" and len(val_rows.texts) < MIN_CALIBRATION_ROWS:
        raise LoralabError(
            f"train.calibrate: temperature would be fitted on {len(val_rows.texts)} validation rows, and a temperature "
            f"from fewer than {MIN_CALIBRATION_ROWS} is noise: raise data.val_size, or set train.calibrate=none"
        )
    resolve_schedule(cfg, len(train_rows.texts), processes, log)
    shapes = shapes_for(cfg)
    breakdown, plan = breakdown_for(cfg, shapes)
    log(breakdown.format())  # shown once, before the one-line error of a run over the budget
    check_budget(cfg, breakdown, shapes)
    method = method_of(cfg)
    if (start := method.start_size(cfg)) is not None:
        log(f"{method.name} trains from lora.{method.size_field}={start}, pruned to the size counted above by step "
            f"{method.keeps_from_step(cfg) - 1}: only adapters from then on are kept")  # fmt: skip
    check_model_folder(cfg.model.name)
    tokenizer = load_tokenizer(cfg.model.name)
    check_max_length(cfg, shapes.config, tokenizer)
    types = uses_token_types(tokenizer, shapes.config)
    train_set = encode_rows(tokenizer, train_rows, cfg.data, types)  # chunked texts: one row per window
    val_set = encode_rows(tokenizer, val_rows, cfg.data, types)
    torch.manual_seed(cfg.train.seed)  # the head's random initialisation
    model, frozen = build_model(cfg, shapes, plan, breakdown)
    identity = identify(cfg.data.train, rows, val_rows)
    decision = task_for(cfg).training_decision(train_rows.labels, cfg.data.scale_targets)
    return Prepared(cfg, breakdown, tokenizer, model, frozen, train_set, val_set, identity, decision)


def resolve_schedule(cfg: Config, train_rows: int, processes: int, log=print) -> None:
    """train.epochs as optimizer steps (every step takes batch_size x grad_accum rows on each process), and
    train.warmup_ratio as warmup steps: published recipes are written in epochs and warmup ratios. Where
    one setting replaces another, the first lines say which decided and what it came to."""
    t = cfg.train
    if t.epochs > 0:
        given = t.steps
        t.steps = max(1, math.ceil(t.epochs * train_rows / (t.batch_size * t.grad_accum * processes)))
        log(f"train.epochs {t.epochs:g} decides the length: {t.steps:,} steps over {train_rows:,} rows "
            f"(train.steps {given:,} not used)")  # fmt: skip
    if t.warmup_ratio > 0:
        given = t.warmup_steps
        t.warmup_steps = math.ceil(t.warmup_ratio * t.steps)
        log(f"train.warmup_ratio {t.warmup_ratio:g} decides the warmup: {t.warmup_steps:,} steps "
            f"(train.warmup_steps {given:,} not used)")  # fmt: skip


def check_run_dir(run: RunDir, resume: bool) -> None:
    """What the run directory allows, said before any model or data loads: new for a fresh run, an
    unfinished run for --resume."""
    if not resume and run.path.exists() and any(p not in (run.origin, run.owner) for p in run.path.iterdir()):
        raise LoralabError(f"run directory {run.path} exists: pass --resume to continue it, or set output.name")
    if resume and not run.config.exists():
        raise LoralabError(
            f"--resume: there is no run at {run.path} to resume (no config.yaml); drop --resume to start it"
        )
    if resume and run.summary.exists():
        raise LoralabError(f"run {run.path} has already finished (summary.json exists)")


def start_run_dir(run: RunDir, prep: Prepared, resume: bool) -> None:
    """Under the run's lock: a resumed run must have the same configuration and the same data; then the
    configuration, the data's identity and the owner are written."""
    check_run_dir(run, resume)  # again: another process may have filled it while this one loaded
    cfg = prep.cfg
    if resume:
        changed = config_differences(run.read_config(), cfg)
        if changed:
            raise LoralabError(
                f"--resume: the config differs from {run.config} in {'; '.join(changed)}: resume with the same "
                "config, or set output.name to start a new run"
            )
        saved = run.read_data_identity()
        if saved is not None and saved.rows_sha256 != prep.data.rows_sha256:
            raise LoralabError(
                f"--resume: the training data {cfg.data.train} changed since the run started ({saved.rows} rows "
                f"then, {prep.data.rows} now): restore it, or set output.name to start a new run on the new data"
            )
        run.clean_interrupted_writes()
    run.write_config(cfg)
    run.write_data_identity(prep.data)
    run.write_owner()
    run.failure.unlink(missing_ok=True)  # an earlier attempt's failure: this one trains


def config_differences(saved: Config, now: Config) -> list[str]:
    """`key (saved X, now Y)` for every config key whose value differs."""
    old, new = saved.flat(), now.flat()
    return [f"{key} (saved {old[key]!r}, now {new[key]!r})" for key in old if old[key] != new[key]]


def library_versions() -> dict:
    import accelerate
    import peft
    import transformers

    from .. import __version__

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


def resolve_precision(cfg: Config, where: torch.device) -> hardware.Precision:
    """train.precision for this process's device (`auto`: bf16 only where it is native). The model's width
    sizes the probe that prices an emulated bf16; a model that cannot be read is said later, in its place."""
    try:
        width = shapes_for(cfg).config.hidden_size
    except LoralabError:
        width = None
    return hardware.resolve(cfg.train.precision, where, width)


def make_accelerator(cfg: Config):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import parse_flag_from_env

    # Accelerate keeps one precision per process; a sweep trains several configurations in one
    # process, so each run starts from a fresh state (the distributed part, PartialState, is kept).
    AcceleratorState._reset_state(reset_partial_state=False)
    t = cfg.train
    # The device Accelerate will pick, without starting its state (that would fix the process group too early).
    where = torch.device("cpu") if parse_flag_from_env("ACCELERATE_USE_CPU") else hardware.device()
    precision = resolve_precision(cfg, where)
    try:
        return precision, Accelerator(
            mixed_precision={"fp32": "no"}.get(precision.used, precision.used),
            gradient_accumulation_steps=t.grad_accum,
            **tracker_settings(RunDir.for_config(cfg), cfg),
        )
    except ValueError as err:
        raise LoralabError(f"train.precision '{t.precision}': {str(err).splitlines()[0]}") from err


def optimizer_and_schedule(model, cfg: Config):
    from transformers import get_scheduler

    t = cfg.train
    # Fused: one kernel updates every tensor, where the default launches several per tensor (a LoRA
    # model has up to hundreds of small ones). Same weights to float rounding: bench/optimizer_speed.py.
    optimizer = torch.optim.AdamW(optimizer_groups(model, cfg), lr=t.lr, weight_decay=t.weight_decay, fused=True)
    scheduler = get_scheduler(
        t.scheduler if t.scheduler != "constant" else "constant_with_warmup",
        optimizer,
        num_warmup_steps=t.warmup_steps,
        num_training_steps=t.steps,
    )
    return optimizer, scheduler


class BatchStream:
    """Micro-batch i of one shared, seeded stream of length-grouped batches; each process takes every
    world-th one. A pure function of (seed, index), so a resumed run finds its place by step alone."""

    def __init__(self, tokenizer, data: Encoded, cfg: Config, accelerator, buckets: list[int] | None = None):
        self.tokenizer, self.data, self.accelerator, self.buckets = tokenizer, data, accelerator, buckets
        self.batch_size, self.seed = cfg.train.batch_size, cfg.train.seed
        self.per_epoch = -(-len(data) // self.batch_size)
        self.epoch = functools.lru_cache(maxsize=1)(
            lambda epoch: training_batches(data.lengths, self.batch_size, self.seed, epoch)
        )

    def __getitem__(self, index: int) -> dict:
        a = self.accelerator
        epoch, position = divmod(index * a.num_processes + a.process_index, self.per_epoch)
        return collate(self.tokenizer, self.data, self.epoch(epoch)[position], self.buckets).to(a.device)


def train(cfg: Config, resume: bool = False, on_eval: Callable[[int, float], None] | None = None) -> Summary:
    """Run one configuration to the end (or to early stopping) and return its summary.

    `on_eval(step, accuracy)` is called after each evaluation's checkpoint; a search uses it to
    prune a trial by raising.
    """
    check_installed(cfg)  # before Accelerate starts the trackers
    precision, accelerator = make_accelerator(cfg)
    accelerator.print(precision.line())
    run = RunDir.for_config(cfg)
    # Only the main process writes the run directory, and it holds the directory's lock while it does.
    with ExitStack() as ownership:
        if accelerator.is_main_process:
            check_run_dir(run, resume)  # cheap checks first: nothing loads for a run that cannot start
            if resume and run.checkpoint.exists() and not method_of(cfg).resumable:
                raise LoralabError(
                    f"--resume: a run of lora.method {cfg.lora.method} cannot resume from its checkpoint (its training "
                    "state is not all saved): set output.name and train it again"
                )
            if resume:
                ownership.enter_context(run.lock())
        prep = prepare(cfg, accelerator.print, accelerator.num_processes)
        if accelerator.is_main_process:
            if not resume:
                make_dir(run.path)
                ownership.enter_context(run.lock())
            start_run_dir(run, prep, resume)
        accelerator.wait_for_everyone()  # the others start once the directory exists
        return run_loop(accelerator, run, prep, precision, resume, on_eval)


def run_loop(accelerator, run: RunDir, prep: Prepared, precision, resume: bool, on_eval) -> Summary:
    """The training loop of a prepared run in its claimed directory, to the end or to early stopping."""
    cfg = prep.cfg
    t = cfg.train
    start_trackers(accelerator, run, cfg, prep.breakdown)
    model, optimizer, scheduler = set_up(accelerator, prep, precision)
    plain = accelerator.unwrap_model(model)  # the PeftModel itself: for evaluating and saving
    state = resumed_state(accelerator, run, plain, optimizer, scheduler, resume)
    model, buckets = compiled_step(accelerator, model, prep)

    batches = BatchStream(prep.tokenizer, prep.train_set, cfg, accelerator, buckets)
    samples_per_step = t.batch_size * t.grad_accum * accelerator.num_processes
    started = time.perf_counter() - state.elapsed_s
    # The window's loss stays on the device until it is logged: no host sync every step.
    window_loss, window_steps, shown_loss = torch.zeros((), device=accelerator.device), 0, None
    task, decision = task_for(cfg), prep.decision
    class_weights = torch.tensor(t.class_weights, device=accelerator.device) if t.class_weights else None
    progress = Progress(t.steps, state.step, accelerator.is_local_main_process)
    metric = metric_for_best(cfg)
    model.train()
    while state.step < t.steps and not state.stopped_early:
        # One optimizer step over grad_accum micro-batches.
        step_started = time.perf_counter()
        window_loss += optimizer_step(
            accelerator, model, optimizer, scheduler, batches, state.step, cfg, lambda logits, labels: task.loss(
                logits, labels, decision, class_weights, t.label_smoothing
            )
        )  # fmt: skip
        state.step += 1
        window_steps += 1
        log_now = state.step % t.log_every == 0 or state.step == t.steps
        if log_now:  # the mean over every process's micro-batches: the global batch's loss
            # .item() waits for the device to finish the queued steps: timed as training below.
            shown_loss = accelerator.reduce(window_loss, reduction="mean").item() / window_steps
            check_finite(shown_loss, state.step, cfg)
        state.train_time_s += time.perf_counter() - step_started
        samples_per_s = state.step * samples_per_step / max(state.train_time_s, 1e-9)

        # Log the mean training loss of the window since the last log.
        if log_now:
            row = {"step": state.step, "split": "train", "loss": shown_loss, "lr": scheduler.get_last_lr()[0]}
            log_training(accelerator, run, row, samples_per_s, time.perf_counter() - started)
            window_loss.zero_()
            window_steps = 0

        # Evaluate on the validation rows, keep the best adapter, checkpoint, let a search prune.
        if state.step % t.eval_every == 0 or state.step == t.steps:
            state.elapsed_s = time.perf_counter() - started
            result = evaluate_and_keep(accelerator, run, prep, plain, precision, state, optimizer, scheduler)
            if on_eval is not None:
                on_eval(state.step, result.score)

        val = f"{state.last_eval[metric]:.4f}" if state.last_eval else "-"
        loss = "-" if shown_loss is None else f"{shown_loss:.4f}"
        progress.step(state.step, log_now, loss=loss, samples_s=f"{samples_per_s:.1f}", **{f"val_{metric}": val})
    progress.close()
    return finish(accelerator, run, prep, precision, state, time.perf_counter() - started, samples_per_step)


def set_up(accelerator, prep: Prepared, precision):
    """The model cast and wrapped for the device(s), with its optimizer and schedule."""
    cfg = prep.cfg
    cast_frozen_linears(prep.model, precision.used)  # half-precision autocast: frozen Linears cast once, not per step
    if cfg.train.gradient_checkpointing:
        checkpoint_layers(prep.model.get_base_model() if cfg.model.finetune == "lora" else prep.model)
    release_freed_memory()  # the fp32 copies just cast, the data tables, the tokenizer's buffers
    # The optimizer and schedule over the trainable parameters; model and optimizer wrapped for the device(s).
    # The schedule is not: Accelerate would step it once per process, and a step here is global.
    optimizer, scheduler = optimizer_and_schedule(prep.model, cfg)
    model, optimizer = accelerator.prepare(prep.model, optimizer)
    return model, optimizer, scheduler


def compiled_step(accelerator, model, prep: Prepared):
    """train.compile: the model compiled for the training step and the length buckets its batches are padded to
    (one capture per bucket), or the model as it is and no buckets; the line says which and why."""
    on, line = hardware.resolve_compile(prep.cfg.train.compile, accelerator.device)
    accelerator.print(line)
    if not on:
        return model, None
    t = prep.cfg.train
    buckets = length_buckets(prep.train_set.lengths, t.batch_size, t.seed)
    accelerator.print(f"training batches padded to {len(buckets)} length buckets: {'/'.join(map(str, buckets))} tokens")
    return hardware.compile_step(model, accelerator.device), buckets


def resumed_state(accelerator, run: RunDir, model, optimizer, scheduler, resume: bool) -> LoopState:
    """Where the loop starts: a checkpoint's adapter, optimizer, schedule, RNG and loop state, or step 0."""
    main = accelerator.is_main_process
    if resume and run.checkpoint.exists():
        state = run.load_checkpoint(model, optimizer, scheduler)
        if main:
            run.truncate_metrics(state.step)
        accelerator.print(f"resumed {run.path} at step {state.step}")
        return state
    if main:
        run.metrics.unlink(missing_ok=True)
    return LoopState()


def log_training(accelerator, run: RunDir, row: dict, samples_per_s: float, elapsed_s: float) -> None:
    """A training window's mean loss and learning rate, to the trackers and metrics.jsonl."""
    step = row["step"]
    accelerator.log({"train/loss": row["loss"], "train/lr": row["lr"], "train/samples_per_s": samples_per_s}, step=step)
    if accelerator.is_main_process:
        run.append_metrics(row | {"samples_per_s": samples_per_s, "elapsed_s": elapsed_s})


def evaluate_and_keep(accelerator, run: RunDir, prep: Prepared, model, precision, state: LoopState, optimizer,
                      scheduler) -> Evaluation:  # fmt: skip
    """Score the validation rows, then record the result, keep best/ and last/, and checkpoint. The pass is the one
    `eval`, `predict` and `serve` make later (the adapter unmerged, the same casts and autocast), so a saved run
    gives back these predictions bit for bit."""
    cfg = prep.cfg
    where = accelerator.device
    autocast = hardware.autocast_for(precision.used, where)
    result = evaluate(model, prep.tokenizer, prep.val_set, cfg, prep.decision, where, autocast, accelerator)
    record_evaluation(state, result, cfg.train.early_stopping_patience, method_of(cfg).keeps_from_step(cfg))
    accelerator.log({f"val/{key}": value for key, value in result.metrics().items()}, step=state.step)
    if accelerator.is_main_process:
        save_evaluation(run, model, prep, state, result, optimizer, scheduler)
    release_freed_memory()  # what the evaluation's batches took
    return result


def finish(accelerator, run: RunDir, prep: Prepared, precision, state: LoopState, wall_s: float,
           samples_per_step: int) -> Summary:  # fmt: skip
    """The run's summary, written last (its presence marks the run finished), and the peak said."""
    cfg, main = prep.cfg, accelerator.is_main_process
    metric, task = metric_for_best(cfg), task_for(cfg)
    best = run.read_predictions("best") if main else None
    summary = Summary(
        name=cfg.output.name,
        peak_val_accuracy=peak_accuracy(run, cfg) if main else None,
        metric=metric,
        peak=state.best_score,
        peak_95ci=None if best is None else list(task.interval(metric, best.labels, best.predictions)),
        peak_step=state.best_step,
        final=state.last_eval,
        steps_done=state.step,
        stopped_early=state.stopped_early,
        val_rows=len(prep.val_set.row_labels),
        trainable=prep.breakdown.as_dict(),
        wall_time_s=wall_s,
        train_samples_per_s=state.step * samples_per_step / max(state.train_time_s, 1e-9),
        versions=library_versions(),
        git_commit=git_commit(),
        precision=precision.record(),
        machine=hardware.machine(),
        temperature=calibration_record(run) if main and cfg.train.calibrate == "temperature" else None,
    )
    accelerator.log({f"peak_val_{metric}": summary.peak, "peak_step": summary.peak_step}, step=state.step)
    for tracker in accelerator.trackers:  # not end_training(): it would also end the caller's process group
        tracker.finish()
    if main:
        run.write_summary(summary)  # last: its presence marks the run finished
        if not cfg.train.keep_checkpoint:  # a finished run is not resumed: its optimizer state is only weight
            shutil.rmtree(run.checkpoint, ignore_errors=True)
        peak = f"{summary.peak:.4f}" if math.isfinite(summary.peak) else f"undefined ({strictjson.reason(metric)})"
        accelerator.print(f"peak val {metric} {peak} at step {summary.peak_step}; run in {run.path}")
    accelerator.wait_for_everyone()
    return summary


class Progress:
    """Training progress for a person: a bar on a terminal; where stderr is a file or a pipe (a log, CI),
    one line per log interval instead of a redraw per step. The ETA is the mean pace since this process
    started, evaluations included, so it does not jump after each evaluation."""

    def __init__(self, total: int, initial: int, enabled: bool):
        from tqdm.auto import tqdm

        self.total, self.initial, self.enabled = total, initial, enabled
        self.terminal = sys.stderr.isatty()
        self.started = time.perf_counter()
        # smoothing=0: tqdm's rate is the mean since the start, not the last few steps.
        self.bar = tqdm(total=total, initial=initial, disable=not (enabled and self.terminal), smoothing=0)

    def step(self, step: int, logged: bool, advance: int = 1, **fields: str) -> None:
        """`step` steps done of the total, `advance` of them since the last call (a pack steps several trials)."""
        if self.terminal:
            self.bar.set_postfix(fields)
            self.bar.update(advance)
        elif self.enabled and logged:
            elapsed = time.perf_counter() - self.started
            eta = elapsed / max(step - self.initial, 1) * (self.total - step)
            shown = "  ".join(f"{key} {value}" for key, value in fields.items())
            print(
                f"step {step}/{self.total}  {shown}  elapsed {_clock(elapsed)}  eta {_clock(eta)}",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        self.bar.close()


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def optimizer_step(accelerator, model, optimizer, scheduler, batches, step: int, cfg: Config, loss_of):
    """Forward and backward over grad_accum micro-batches (Accelerate syncs gradients on the last), clip,
    step; returns the step's mean loss, left on the device so no step waits for the GPU."""
    t = cfg.train
    method, plain = method_of(cfg), accelerator.unwrap_model(model)
    total = torch.zeros((), device=accelerator.device)
    for micro in range(t.grad_accum):
        if accelerator.device.type == "cuda" and batches.buckets:  # a new step of CUDA graphs: the last one's
            torch.compiler.cudagraph_mark_step_begin()  # outputs are no longer read
        batch = batches[step * t.grad_accum + micro]
        labels = batch.pop("labels")
        with accelerator.accumulate(model), accelerator.autocast():
            logits = model(**batch).logits.float()
            loss = loss_of(logits, labels)
            if (extra := method.regularization(plain)) is not None:  # AdaLoRA's orthogonality penalty
                loss = loss + extra
            accelerator.backward(loss)
        total += loss.detach() / t.grad_accum
    if t.max_grad_norm > 0:
        accelerator.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], t.max_grad_norm)
    optimizer.step()
    scheduler.step()
    method.after_step(plain, step)  # AdaLoRA allocates its ranks here, from this step's gradients
    optimizer.zero_grad(set_to_none=True)
    return total


def check_finite(loss: float, step: int, cfg: Config) -> None:
    """A loss that became inf or NaN never comes back: the run stops with one line, not hours of NaN."""
    if not math.isfinite(loss):
        raise LoralabError(
            f"the training loss became {loss} by step {step}: the run diverged; lower train.lr (now {cfg.train.lr:g}) "
            "or raise train.warmup_steps"
        )


def calibration_record(run: RunDir) -> dict | None:
    """The best adapter's temperature and how many validation rows fitted it."""
    decision = run.read_decision("best")
    return {"value": decision.temperature, "rows": decision.temperature_rows}


def peak_accuracy(run: RunDir, cfg: Config) -> float | None:
    """A single-label run's accuracy at its peak (the peak may be chosen by another metric)."""
    best = run.read_predictions("best")
    if "accuracy" not in task_for(cfg).metric_functions() or best is None:
        return None
    return sum(p == y for p, y in zip(best.predictions, best.labels)) / len(best.labels)


def is_better(score: float, best: float | None, metric: str) -> bool:
    """A new peak: the first evaluation always is; a metric that could not be computed (a constant
    prediction's Pearson) never beats a number."""
    if best is None or math.isnan(best):
        return True
    if math.isnan(score):
        return False
    return oriented(metric, score) > oriented(metric, best)


def record_evaluation(state: LoopState, result: Evaluation, patience: int, keeps_from: int) -> None:
    """Track the best metric and whether patience for early stopping has run out; evaluations before step
    `keeps_from` (an AdaLoRA adapter before its last pruning, above its final budget) count for neither."""
    state.last_eval = {"step": state.step, **result.metrics()}
    if state.step < keeps_from:
        return
    if is_better(result.score, state.best_score, result.metric):
        state.best_score, state.best_step, state.evals_since_best = result.score, state.step, 0
    else:
        state.evals_since_best += 1
    state.stopped_early = 0 < patience <= state.evals_since_best


def save_evaluation(
    run: RunDir, model, prep: Prepared, state: LoopState, result: Evaluation, optimizer, scheduler
) -> None:
    """Metrics row, best/ at a new peak, last/ after the final evaluation, and the checkpoint."""
    run.append_metrics({"step": state.step, "split": "val", **result.metrics(), "elapsed_s": state.elapsed_s})
    predictions = Predictions(state.step, prep.val_set.row_labels, result.predictions, result.scores)
    if state.best_step == state.step:
        run.save_adapter("best", model, prep.frozen, predictions, result.decision)
    if state.step == prep.cfg.train.steps or state.stopped_early:
        run.save_adapter("last", model, prep.frozen, predictions, result.decision)
    run.save_checkpoint(model, prep.frozen, optimizer, scheduler, state)
