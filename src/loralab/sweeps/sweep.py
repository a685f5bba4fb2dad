"""Running sweeps and searches on Optuna: a study holds trial state (SQLite beside the runs by default,
PostgreSQL for workers on many machines); each trial's results live in its run directory, which the
index (`loralab runs`) reads. The sweep-file format is in sweepfile.py."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import threading
import time
from typing import Any

from .. import config as config_io
from ..budget.count import breakdown_for, largest_fitting_rank, shapes_for
from ..config import metric_for_best, oriented
from ..errors import LoralabError
from ..options import SweepOptions
from ..runs.files import make_dir
from ..runs.rundir import Origin, RunDir, Summary
from .storage import connect, default_storage, redact
from .sweepfile import (
    MAX_FIT,
    Sweep,
    Trial,
    check_budgets,
    check_max_fit_space,
    read_sweep,
    resolve_alpha,
    trial_config,
)


def open_study(sweep: Sweep, storage_url: str, heartbeat_s: int):
    """The sweep's Optuna study; heartbeats let a later run find trials whose worker died."""
    import warnings

    import optuna

    # Errors only: a failed trial is told in one line of ours (work), not Optuna's warning with a traceback.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    storage = connect(storage_url, heartbeat_s)
    try:
        study = optuna.create_study(study_name=sweep.name, storage=storage, direction="maximize", load_if_exists=True)
    except Exception as err:  # SQLAlchemy raises many types for an unreachable server
        line = f"cannot open the Optuna storage {storage_url}: {str(err).splitlines()[0]}"
        raise LoralabError(redact(line)) from None
    storage.patient = True  # from now on an outage is waited for
    check_overrides(study, sweep)
    return study


def check_overrides(study, sweep: Sweep) -> None:
    """A study keeps the command-line overrides it was first run with: running it again with others would
    mix trials of two configurations under one name, so that is refused."""
    recorded = study.user_attrs.get("command_overrides")
    if recorded is None:  # a new study, or one from before overrides were recorded (which had none)
        recorded = [] if study.get_trials(deepcopy=False) else sweep.command_overrides
        study.set_user_attr("command_overrides", recorded)
        # The dashboard's name for the objective (negated where lower is better, as MSE).
        study.set_metric_names(["peak validation metric (train.metric_for_best)"])
    if recorded != sweep.command_overrides:
        raise LoralabError(
            f"{sweep.name} was run with the overrides {' '.join(recorded) or '(none)'}, not "
            f"{' '.join(sweep.command_overrides) or '(none)'}: give the same ones to go on with it, or --runs "
            "ANOTHER_FOLDER for a separate sweep"
        )


def trial_states(study) -> dict[str, list]:
    """Frozen Optuna trials of each sweep trial key."""
    by_key: dict[str, list] = {}
    for frozen in study.get_trials(deepcopy=False):
        key = frozen.user_attrs.get("key")
        if key:
            by_key.setdefault(key, []).append(frozen)
    return by_key


def enqueue_missing(study, trials: list[Trial]) -> int:
    """Queue each trial that has no finished, running or queued Optuna trial; returns how many."""
    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    fail_stale_trials(study)
    fail_dead_local_trials(study)
    live = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)
    states = trial_states(study)
    queued = 0
    for trial in trials:
        if not any(t.state in live for t in states.get(trial.key, [])):
            study.enqueue_trial({}, user_attrs={"key": trial.key})
            queued += 1
    return queued


def fail_dead_local_trials(study) -> None:
    """Fail running trials whose worker was a process of this machine that no longer exists.

    Heartbeats find dead workers anywhere, but only after their grace period; a sweep restarted
    right after Ctrl-C or a crash would otherwise skip the trial it had just lost.
    """
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        host, _, pid = trial.user_attrs.get("worker", "").rpartition(":")
        if host == socket.gethostname() and pid.isdigit() and not _process_exists(int(pid)):
            study.tell(trial.number, state=TrialState.FAIL)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def run_trial(sweep: Sweep, trial: Trial, runs_dir: str, on_eval=None) -> Summary:
    """Train one trial in its run directory, resuming from its checkpoint if a worker died in it."""
    from ..training.train import train

    cfg, started = claim_trial(sweep, trial, runs_dir)
    if isinstance(cfg, Summary):
        return cfg
    return train(cfg, resume=started, on_eval=on_eval)


def claim_trial(sweep: Sweep, trial: Trial, runs_dir: str):
    """A trial's config and whether an earlier attempt started it (then it resumes from its checkpoint); or its
    Summary where it finished but the worker died before telling Optuna."""
    cfg = trial_config(sweep, trial, runs_dir)
    run = RunDir.for_config(cfg)
    if run.summary.exists():
        return run.read_summary(), True
    started = run.config.exists()
    print(f"{sweep.name}: trial {trial.key} {'resumes' if started else 'starts'} in {run.path}", flush=True)
    make_dir(run.path)
    run.write_origin(Origin(group=trial.group, axes=trial.axes, sweep=sweep.name, key=trial.key))
    return cfg, started


def pack_size(pack: str) -> int:
    """--pack: a number of trials, or auto: 8 on a CUDA GPU (the pack the device check measures), 1 on a CPU."""
    if pack == "auto":
        import torch

        return 8 if torch.cuda.is_available() else 1
    if not pack.isdigit() or int(pack) < 1:
        raise LoralabError(f"--pack: '{pack}' is not a number of trials >= 1 or auto")
    return int(pack)


def _is_duplicate(study, trial) -> bool:
    """Another worker already finished this key, or started it first: two never train the same trial."""
    from optuna.trial import TrialState

    key = trial.user_attrs["key"]
    mine = (trial.datetime_start, trial.number)
    for other in trial_states(study).get(key, []):
        if other.number == trial.number:
            continue
        if other.state == TrialState.COMPLETE:
            return True
        if other.state == TrialState.RUNNING and (other.datetime_start, other.number) < mine:
            return True
    return False


def work(sweep: Sweep, options: SweepOptions, storage_url: str) -> None:
    """A sweep worker: take queued trials from the study until none is left."""
    import optuna
    from optuna.trial import TrialState

    study = open_study(sweep, storage_url, options.heartbeat)
    by_key = {t.key: t for t in sweep.trials}

    def objective(trial: optuna.Trial) -> float:
        key = trial.user_attrs.get("key")
        if key is None or key not in by_key:  # a fresh trial: the queue emptied between check and ask
            trial.set_user_attr("spare", True)
            raise optuna.TrialPruned()
        if _is_duplicate(study, trial):
            trial.set_user_attr("duplicate", True)
            raise optuna.TrialPruned()
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        if "CUDA_VISIBLE_DEVICES" in os.environ:  # the GPU start_workers placed this worker on
            trial.set_user_attr("gpu", os.environ["CUDA_VISIBLE_DEVICES"])
        try:
            return objective_value(run_trial(sweep, by_key[key], options.runs))
        except Exception as err:  # noqa: BLE001 - told once here; Optuna marks the trial failed
            failure = trial_failed(sweep, key, err, RunDir.for_config(trial_config(sweep, by_key[key], options.runs)))
            if failure == last_failure[0]:
                raise RepeatedFailure(failure, trial.number) from None
            last_failure[0] = failure
            raise

    last_failure = [None]
    size = pack_size(options.pack)
    try:
        while study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            if size > 1:
                work_pack(sweep, options, study, by_key, size, last_failure)
            else:
                study.optimize(objective, n_trials=1, catch=(Exception,))
    except RepeatedFailure as err:
        failure, number = err.args
        if number is not None:  # Optuna leaves a trial that raised past its catch running (a pack told it already)
            study.tell(number, state=TrialState.FAIL)
        raise LoralabError(
            f"two trials in a row failed the same way ({failure}): the sweep stops here; fix that, then run the "
            "same command again (finished trials are kept)"
        ) from None


def work_pack(sweep: Sweep, options: SweepOptions, study, by_key: dict[str, Trial], size: int, last_failure) -> None:
    """Take up to `size` queued trials and train them together: those of one pack key in one pack, those that
    must train alone one after another; each result told to the study as it would be from `work`."""
    import warnings

    from optuna.trial import TrialState

    from ..training.pack import pack_key, train_pack, why_alone

    # Optuna beats a trial's heartbeat inside optimize() only; a pack's trials are found dead by their worker's pid.
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    taken = []  # (Optuna trial number, sweep trial)
    while len(taken) < size and study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        asked = study.ask()
        key = asked.user_attrs.get("key")
        if key is None or key not in by_key:  # a fresh trial: another worker emptied the queue first
            study.tell(asked.number, state=TrialState.PRUNED)
            continue
        if _is_duplicate(study, next(t for t in study.get_trials(deepcopy=False) if t.number == asked.number)):
            study.tell(asked.number, state=TrialState.PRUNED)
            continue
        asked.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        taken.append((asked.number, by_key[key]))
    groups: dict[tuple, list] = {}
    for number, trial in taken:
        cfg, started = claim_trial(sweep, trial, options.runs)
        if isinstance(cfg, Summary):
            study.tell(number, objective_value(cfg))
            continue
        if alone := why_alone(cfg):
            print(f"{sweep.name}: trial {trial.key} trains alone: {alone}", flush=True)
        groups.setdefault(("alone", number) if alone else pack_key(cfg), []).append((number, trial, cfg, started))
    for group in groups.values():
        if len(group) == 1:
            ((number, trial, cfg, started),) = group
            results = [_alone(cfg, started)]
        else:
            results = train_pack([cfg for _, _, cfg, _ in group], [started for *_, started in group])
        for (number, trial, cfg, _), result in zip(group, results):
            if isinstance(result, Exception):
                failure = trial_failed(sweep, trial.key, result, RunDir.for_config(cfg))
                study.tell(number, state=TrialState.FAIL)
                if failure == last_failure[0]:
                    raise RepeatedFailure(failure, None)
                last_failure[0] = failure
            else:
                study.tell(number, objective_value(result))


def _alone(cfg, started: bool):
    """One trial trained alone; its error returned, as a pack returns a member's."""
    from ..training.train import train

    try:
        return train(cfg, resume=started)
    except Exception as err:  # noqa: BLE001 - told per trial by the caller, as work() does
        return err


class RepeatedFailure(BaseException):
    """Two trials failed with the same error: the rest would too. A BaseException, so that Optuna's
    catch=(Exception,) lets it end the worker's loop."""


def trial_failed(sweep: Sweep, key: str, err: Exception, run: RunDir) -> str:
    """Say in one line that a trial failed (a traceback too for what is not a user error), and leave that line in
    its run folder (failure.txt); returns the line."""
    import sys
    import traceback

    line = str(err).splitlines()[0] if str(err) else type(err).__name__
    if run.path.is_dir():
        run.write_failure(line)
    if not isinstance(err, LoralabError):
        traceback.print_exception(err, file=sys.stderr)
    print(f"{sweep.name}: trial {key} failed: {line}", file=sys.stderr, flush=True)
    return line


def check_inputs(sweep: Sweep, trials: list[Trial], runs_dir: str) -> None:
    """What every trial needs, loaded once before any worker starts: each distinct model's folder and
    tokenizer, and each distinct training data with its labels. A model the hub cannot give, or a data
    file that is not there, is one line here, not a failure (and its retries) in every trial."""
    from ..data import load_labelled
    from ..modeling.model import check_model_folder, load_tokenizer
    from ..training.tracking import check_installed

    models, datasets = set(), set()
    for trial in trials:
        cfg = trial_config(sweep, trial, runs_dir)
        check_installed(cfg)
        if cfg.model.name not in models:
            check_model_folder(cfg.model.name)
            load_tokenizer(cfg.model.name)
            models.add(cfg.model.name)
        data = (cfg.data.train, cfg.data.subset, cfg.data.task, cfg.data.text_column, cfg.data.text_pair_column,
                cfg.data.label_column, tuple(cfg.data.label_names))  # fmt: skip
        if data not in datasets:
            load_labelled(cfg.data.train, cfg.data)
            datasets.add(data)


def objective_value(summary: Summary) -> float:
    """What the study maximizes: the peak of the run's metric, negated where lower is better (MSE)."""
    return oriented(summary.metric, summary.peak_value)


def sweep_status(study, trials: list[Trial]) -> dict[str, int]:
    from optuna.trial import TrialState

    states = trial_states(study)
    done = sum(1 for t in trials if any(s.state == TrialState.COMPLETE for s in states.get(t.key, [])))
    return {"finished": done, "unfinished": len(trials) - done}


def run_sweep(options: SweepOptions, log=print, gpus: list[str] | None = None) -> dict:
    """Check every trial, queue the missing ones, run them on the workers, report the state."""
    sweep = read_sweep(options.file, options.runs, options.overrides)
    feasible, rejected = check_budgets(sweep, options.runs)
    for trial, reason in rejected:
        log(f"rejected {trial.key}: {reason}")
    reasons = {re.sub(r"^.*: trial \S+: ", "", reason) for _, reason in rejected}
    if rejected and not feasible and len(reasons) == 1:  # one cause for every trial: say it once, and stop
        raise LoralabError(f"every trial of {sweep.name} was refused: {reasons.pop()}")
    check_inputs(sweep, feasible, options.runs)
    storage = options.storage or default_storage(sweep, options.runs)
    study = open_study(sweep, storage, options.heartbeat)
    queued = enqueue_missing(study, feasible)
    to_run = sweep_status(study, feasible)["unfinished"]
    log(
        f"sweep {sweep.name}: {len(feasible)} trials within the budget, {to_run} to run "
        f"({queued} newly queued), {len(rejected)} rejected"
    )
    gpus = visible_gpus() if gpus is None else gpus
    workers = worker_count(options.workers, options.per_gpu, gpus)
    if workers <= 1:
        work(sweep, options, storage)
    else:
        start_workers("sweep", options, storage, workers, gpus)
    status = sweep_status(study, feasible) | {"rejected": len(rejected)}
    counts = f"{status['finished']} finished, {status['unfinished']} unfinished, {status['rejected']} rejected"
    log(f"sweep {sweep.name}: {counts}")
    return status


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them (all of them where it is unset)."""
    import torch

    if not torch.cuda.is_available():
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    return (
        listed.split(",")[: torch.cuda.device_count()] if listed else [str(i) for i in range(torch.cuda.device_count())]
    )


def worker_count(workers: int, per_gpu: int | None, gpus: list[str]) -> int:
    """--per-gpu M: M workers on each visible GPU; otherwise --workers."""
    if per_gpu is None:
        return workers
    if not gpus:
        raise LoralabError("--per-gpu: no CUDA GPU is visible here; use --workers N to run N workers on the CPU")
    if per_gpu < 1:
        raise LoralabError(f"--per-gpu: must be >= 1, got {per_gpu}")
    return per_gpu * len(gpus)


def start_workers(kind: str, options: SweepOptions, storage: str, workers: int, gpus: list[str]) -> None:
    """N worker processes on this machine, each taking trials from the study until none is left.

    Where GPUs are visible, worker i gets GPU i mod their number (several workers share a GPU: one
    small-batch training leaves most of it idle); the CPU threads are shared between the workers.
    Spawned, not forked: a fork would copy this process's threads and CUDA state.
    """
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // workers)
    processes = [
        context.Process(
            target=_worker,
            args=(kind, options, storage, threads, gpus[i % len(gpus)] if gpus else None),
            name=f"loralab-{kind}-worker-{i}",
        )
        for i in range(workers)
    ]
    for process in processes:
        process.start()
    codes = []
    for process in processes:
        process.join()
        codes.append(process.exitcode)
    if any(codes):
        raise LoralabError(workers_failed(codes, kind))


def workers_failed(codes: list[int], kind: str) -> str:
    """The one-line error for workers that exited badly; a kill (-9) is most often the kernel out of memory."""
    failed = sum(1 for c in codes if c)
    line = f"{failed} of {len(codes)} workers failed (exit codes {codes})"
    if any(c == -signal.SIGKILL for c in codes):
        line += (
            "; a worker killed with signal 9 is most often out of memory: run the same command again with fewer "
            f"--workers (the {kind} goes on, its lost trials resume from their checkpoints)"
        )
    return line


def stop_with_parent(every_s: float = 1.0) -> None:
    """End this worker when the sweep that started it ends, however it was killed (even with -9).

    Left running, an orphaned worker would finish its trial and then take the next queued ones, next
    to the workers of the sweep started again: twice the processes on the same CPU, GPU and memory.
    The trial it leaves resumes from its checkpoint when the sweep runs again.
    """
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:  # a child whose parent died is handed to another process
            time.sleep(every_s)
        os._exit(1)

    threading.Thread(target=watch, name="stop-with-parent", daemon=True).start()


def _worker(kind: str, options: SweepOptions, storage: str, threads: int, gpu: str | None) -> None:
    """A worker process's body: its GPU and share of the CPU, then the sweep's or search's trial loop."""
    import sys

    if gpu is not None:  # before anything touches CUDA in this process
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    stop_with_parent()
    import torch

    torch.set_num_threads(threads)
    try:
        sweep = read_sweep(options.file, options.runs, options.overrides)
        if kind == "sweep":
            work(sweep, options, storage)
        else:
            search_trials(sweep, options, storage, sampler_seed=None)
    except LoralabError as err:
        print(f"loralab: error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # Ctrl-C reaches every worker: the sweep's own process says the one line
        sys.exit(130)


def suggest(trial, space: dict[str, dict]) -> dict[str, Any]:
    values = {}
    for key, spec in space.items():
        if spec == MAX_FIT:
            continue
        if "choices" in spec:
            # Optuna's categorical values must be scalars: lists (scopes) travel as JSON text.
            choice = trial.suggest_categorical(key, [json.dumps(c) for c in spec["choices"]])
            values[key] = json.loads(choice)
        elif isinstance(spec["low"], int) and isinstance(spec["high"], int):
            values[key] = trial.suggest_int(key, spec["low"], spec["high"], log=bool(spec.get("log")))
        else:
            values[key] = trial.suggest_float(key, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log")))
    return values


def run_search(options: SweepOptions, log=print) -> dict:
    """TPE over the declared space on the workers; prints the best trial and the command that trains it."""
    from optuna.trial import TrialState

    sweep = read_sweep(options.file, options.runs, options.overrides)
    storage = options.storage or default_storage(sweep, options.runs)
    gpus = visible_gpus()
    workers = worker_count(options.workers, options.per_gpu, gpus)
    check_inputs(sweep, [Trial("search", "base", {}, {})], options.runs)  # the model and data every sample shares
    if workers > 1:
        open_study(sweep, storage, options.heartbeat)  # created once, before the workers race to it
        start_workers("search", options, storage, workers, gpus)
    else:
        search_trials(sweep, options, storage, sampler_seed=0)
    study = open_study(sweep, storage, options.heartbeat)
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    best = max(finished, key=lambda t: t.value, default=None)
    status = {"complete": len(finished), "pruned": len(study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)))}
    if best is not None:
        log(
            f"search {sweep.name}: {status['complete']} complete, {status['pruned']} pruned; best {best.value:.4f} "
            f"({best.user_attrs['key']}); train it with:\n  {train_command(sweep, best.user_attrs['values'])}"
        )
    return status


def train_command(sweep: Sweep, values: dict[str, Any]) -> str:
    """The `loralab train` line that trains a configuration of the sweep on its own."""
    import shlex

    import yaml

    settings = [
        *sweep.overrides,
        *(f"{k}={yaml.safe_dump(v, default_flow_style=True).strip()}" for k, v in values.items()),
    ]
    settings = [s.removesuffix("\n...") for s in settings]
    return " ".join(["loralab", "train", "--config", shlex.quote(str(sweep.base)), *map(shlex.quote, settings)])


def search_trials(sweep: Sweep, options: SweepOptions, storage: str, sampler_seed: int | None) -> None:
    """A search worker: sample, budget-check and train trials until the study holds options.trials of them;
    over-budget samples are pruned untrained, and each evaluation feeds the median pruner."""
    import optuna
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    study = open_study(sweep, storage, options.heartbeat)
    study.sampler = optuna.samplers.TPESampler(seed=sampler_seed)
    study.pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
    base_cfg = config_io.load(sweep.base, sweep.overrides)
    model = shapes_for(base_cfg)
    max_fit = sweep.space.get("lora.r") == MAX_FIT
    metric = metric_for_best(base_cfg)
    if max_fit:
        check_max_fit_space(sweep, base_cfg, model)

    def objective(trial: optuna.Trial) -> float:
        values = suggest(trial, sweep.space)
        if max_fit:
            probe = Trial("search", "probe", resolve_alpha(values, base_cfg.lora.r, sweep.path), {})
            values["lora.r"] = largest_fitting_rank(trial_config(sweep, probe, options.runs), model)
            trial.set_user_attr("lora.r", values["lora.r"])
        values = resolve_alpha(values, values.get("lora.r", base_cfg.lora.r), f"{sweep.path}: trial {trial.number}")
        run = Trial("search", f"trial-{trial.number:04d}", values, values)
        trial.set_user_attr("key", run.key)
        trial.set_user_attr("values", values)
        breakdown, _ = breakdown_for(trial_config(sweep, run, options.runs), model)
        trial.set_user_attr("trainable", breakdown.total)
        if breakdown.over_budget:
            trial.set_user_attr("rejected", f"{breakdown.total:,} trainable > budget {breakdown.budget:,}")
            raise optuna.TrialPruned()

        def report(step: int, score: float) -> None:
            trial.report(oriented(metric, score), step)
            if trial.should_prune():
                raise optuna.TrialPruned()

        return objective_value(run_trial(sweep, run, options.runs, on_eval=report))

    counted = (TrialState.COMPLETE, TrialState.PRUNED)
    study.optimize(objective, callbacks=[MaxTrialsCallback(options.trials, states=counted)], catch=(LoralabError,))
