import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import SEED_CONFIG

from loralab.budget.count import breakdown_for, with_rank
from loralab.errors import LoralabError
from loralab.runs.results import find_runs
from loralab.sweeps.sweep import SweepOptions, read_sweep, run_search, run_sweep, workers_failed

POSTGRES_URL = os.environ.get("LORALAB_TEST_POSTGRES", "postgresql://loralab:loralab@127.0.0.1:5432/loralab")


def tiny_sweep(tmp_path, model_dirs, tiny_data, groups, steps=6, name="tiny", **extra) -> Path:
    spec = {
        "base": str(SEED_CONFIG),
        "name": name,
        "overrides": [
            f"model.name={model_dirs['roberta']}",
            f"data.train={tiny_data}",
            "data.val_size=64",
            "data.max_length=32",
            f"train.steps={steps}",
            "train.eval_every=3",
            "train.batch_size=8",
            "train.warmup_steps=1",
            "train.lr=1e-2",
            "lora.r=4",
        ],
        "groups": groups,
        **extra,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


FOUR = {
    "r": {"grid": {"lora.r": [2, 4]}, "set": {"lora.alpha": "r*2"}},
    "dropout": {"grid": {"lora.dropout": [0.0, 0.2]}},
}


def test_axes_expand_to_trials(tmp_path, model_dirs, tiny_data):
    groups = {
        "grid": {"grid": {"lora.r": [2, 4], "lora.dropout": [0.0, 0.1]}},
        "zipped": {
            "zip": {"lora.scope": [["query"], ["query", "value"]], "lora.r": [8, 4]},
            "set": {"lora.alpha": "r*0.5"},
        },
        "named": {"variants": {"long": {"train.steps": 12}, "fast": {"train.lr": 0.1}}},
    }
    sweep = read_sweep(tiny_sweep(tmp_path, model_dirs, tiny_data, groups, seeds=[1, 2]), str(tmp_path / "runs"))
    by_group = {}
    for trial in sweep.trials:
        by_group.setdefault(trial.group, []).append(trial)
    assert len(by_group["grid"]) == 2 * 2 * 2 and len(by_group["zipped"]) == 2 * 2 and len(by_group["named"]) == 2 * 2
    zipped = by_group["zipped"][0]
    assert (
        zipped.values["lora.scope"] == ["query"] and zipped.values["lora.r"] == 8 and zipped.values["lora.alpha"] == 4.0
    )
    assert zipped.axes == {"lora.scope": ["query"], "lora.r": 8, "train.seed": 1}
    assert {t.label for t in by_group["named"]} == {"long_seed_1", "long_seed_2", "fast_seed_1", "fast_seed_2"}


@pytest.mark.parametrize(
    "groups, message",
    [
        ({"g": {"grid": {"lora.rank": [1, 2]}}}, "unknown axis 'lora.rank'"),
        ({"g": {"grid": {"lora.r": []}}}, "axis 'lora.r' must be a non-empty list"),
        ({"g": {"grid": {"lora.r": ["big", 2]}}}, "trial g/r_big: lora.r: expected int"),
        ({"g": {"grid": {"lora.alpha": ["2*r"]}}}, "lora.alpha '2\\*r' is not a number or r\\*<number>"),
        ({"g": {"zip": {"lora.r": [1, 2], "lora.dropout": [0.1]}}}, "zip lists have different lengths"),
        ({"g": {"sweep": {"lora.r": [1]}}}, "unknown entry 'sweep'"),
    ],
)
def test_bad_sweep_files_fail_before_anything_runs(tmp_path, model_dirs, tiny_data, groups, message):
    path = tiny_sweep(tmp_path, model_dirs, tiny_data, groups)
    with pytest.raises(LoralabError, match=message):
        run_sweep(SweepOptions(str(path), runs=str(tmp_path / "runs")), log=lambda *_: None)
    assert not (tmp_path / "runs").exists()


def test_over_budget_trials_are_rejected_with_their_reason(tmp_path, model_dirs, tiny_data):
    groups = {"r": {"grid": {"lora.r": [2, 100_000]}}}
    lines = []
    path = tiny_sweep(tmp_path, model_dirs, tiny_data, groups)
    status = run_sweep(SweepOptions(str(path), runs=str(tmp_path / "runs")), log=lines.append)
    assert status == {"finished": 1, "unfinished": 0, "rejected": 1}
    assert any(line.startswith("rejected r/r_100000: 12,801,188 trainable > budget 1,000,000") for line in lines)


def optuna_trials(storage: str, name: str):
    import optuna

    return optuna.load_study(study_name=name, storage=storage).get_trials()


def postgres_or_skip() -> str:
    try:
        import psycopg

        psycopg.connect(POSTGRES_URL, connect_timeout=3).close()
    except Exception as err:  # noqa: BLE001 - any failure means no server to test against
        pytest.skip(f"no PostgreSQL server at {POSTGRES_URL} ({type(err).__name__}); .ci/run starts one")
    return POSTGRES_URL


@pytest.mark.xdist_group("postgresql")  # beside the outage test, which stops the server
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_workers_run_every_trial_exactly_once(tmp_path, model_dirs, tiny_data, backend):
    name = f"two-workers-{backend}-{os.getpid()}-{time.time_ns()}"
    runs = tmp_path / "runs"
    storage = f"sqlite:///{tmp_path / 'optuna.db'}" if backend == "sqlite" else postgres_or_skip()
    path = tiny_sweep(tmp_path, model_dirs, tiny_data, FOUR, name=name)
    status = run_sweep(SweepOptions(str(path), storage=storage, workers=2, runs=str(runs)), log=lambda *_: None)
    assert status == {"finished": 4, "unfinished": 0, "rejected": 0}
    trials = optuna_trials(storage, name)
    ran = [t for t in trials if t.state.name == "COMPLETE"]
    assert sorted(t.user_attrs["key"] for t in ran) == sorted(
        ["r/r_2", "r/r_4", "dropout/dropout_0", "dropout/dropout_0.2"]
    )
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)  # any extra trial yielded, none failed
    # Each trial names the worker process that ran it, and none is this test's: they ran in the two workers.
    assert all(t.user_attrs["worker"].rpartition(":")[2] != str(os.getpid()) for t in ran)
    assert len(find_runs([str(runs)])) == 4


def test_interrupted_sweep_resumes_the_killed_trial_from_its_checkpoint(tmp_path, model_dirs, tiny_data):
    runs = tmp_path / "runs"
    path = tiny_sweep(tmp_path, model_dirs, tiny_data, FOUR, steps=120, name="killed")  # 40 checkpoints a trial
    # The default 30 s heartbeat: the restart must find its own machine's dead worker without waiting.
    command = [sys.executable, "-m", "loralab.cli", "sweep", str(path), "--runs", str(runs)]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    worker = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list(runs.glob("killed/*/*/checkpoint/state.pt")) and time.time() < deadline:
        time.sleep(0.05)
    assert list(runs.glob("killed/*/*/checkpoint/state.pt")), "no checkpoint was written within 120 s"
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    (checkpoint,) = list(runs.glob("killed/*/*/checkpoint/state.pt"))
    killed_run = checkpoint.parent.parent
    assert not (killed_run / "summary.json").exists()

    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed {killed_run} at step" in again.stdout
    assert "4 finished, 0 unfinished" in again.stdout
    assert (killed_run / "summary.json").exists()


def _running(pid: int) -> bool:
    """Alive and not a zombie (an exited child nobody has reaped yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads process states from /proc")
def test_workers_stop_when_the_sweep_is_killed(tmp_path, model_dirs, tiny_data):
    """kill -9 of a sweep takes its workers with it: orphans would go on taking trials beside the next sweep."""
    runs = tmp_path / "runs"
    path = tiny_sweep(tmp_path, model_dirs, tiny_data, FOUR, steps=100_000, name="orphans")
    command = [sys.executable, "-m", "loralab.cli", "sweep", str(path), "--runs", str(runs), "--workers", "2"]
    log = tmp_path / "sweep.log"
    with log.open("w") as out:
        sweep = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    storage = f"sqlite:///{runs / 'orphans' / 'optuna.db'}"
    workers = []
    deadline = time.time() + 300  # two workers importing torch on a loaded machine: seen over 120 s in CI
    while len(workers) < 2 and time.time() < deadline and sweep.poll() is None:
        time.sleep(0.5)
        try:
            workers = [int(t.user_attrs["worker"].rpartition(":")[2]) for t in optuna_trials(storage, "orphans")
                       if "worker" in t.user_attrs]  # fmt: skip
        except Exception:  # noqa: BLE001 - the study is not created yet
            workers = []
    assert len(workers) == 2 and all(map(_running, workers)), (sweep.poll(), log.read_text()[-3000:])
    sweep.send_signal(signal.SIGKILL)
    sweep.wait()
    deadline = time.time() + 30
    while any(map(_running, workers)) and time.time() < deadline:
        time.sleep(0.2)
    alive = [pid for pid in workers if _running(pid)]
    for pid in alive:  # leave nothing behind if the test fails
        os.kill(pid, signal.SIGKILL)
    assert not alive, "the workers outlived the sweep"


def test_search_never_trains_over_budget_and_prunes_on_evaluations(tmp_path, model_dirs, tiny_data):
    spec = yaml.safe_load(tiny_sweep(tmp_path, model_dirs, tiny_data, {"x": {"grid": {"lora.r": [1]}}}).read_text())
    del spec["groups"]
    spec["name"] = "search"
    spec["space"] = {
        "lora.r": {"low": 1, "high": 400_000, "log": True},
        "train.lr": {"low": 1e-3, "high": 3e-2, "log": True},
        "lora.scope": {"choices": [["value"], ["query", "value"]]},
    }
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(spec))
    status = run_search(SweepOptions(str(path), runs=str(tmp_path / "runs"), trials=8), log=lambda *_: None)
    assert status["complete"] >= 1
    trials = optuna_trials(f"sqlite:///{tmp_path / 'runs' / 'search' / 'optuna.db'}", "search")
    overs = [t for t in trials if t.user_attrs.get("trainable", 0) > 1_000_000]
    assert overs, "the space (rank up to 400,000) must produce over-budget samples, or this test checks nothing"
    for trial in trials:
        over = trial.user_attrs.get("trainable", 0) > 1_000_000
        assert over == ("rejected" in trial.user_attrs)
        if over:  # refused before training: no run directory was made
            assert trial.state.name == "PRUNED"
            assert not (tmp_path / "runs" / "search" / "search" / f"trial-{trial.number:04d}").exists()
    # Every trained trial's run is the sample Optuna recorded (its rank, not another).
    by_number = {t.number: t for t in trials}
    for record in find_runs([str(tmp_path / "runs")]):
        sampled = by_number[int(record.name.removeprefix("trial-"))].params
        assert record.config.lora.r == sampled["lora.r"]


def _pop_trials(url: str, queue) -> None:
    import optuna

    from loralab.sweeps.sweep import Sweep, open_study

    study = open_study(Sweep(Path("race.yaml"), "race", Path("."), []), url, heartbeat_s=30)
    seen = []
    while study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
        study.optimize(
            lambda t: (seen.append(t.user_attrs.get("k")), time.sleep(0.005), 1.0)[2], n_trials=1, catch=(Exception,)
        )
    queue.put(seen)


def test_sqlite_queue_gives_each_trial_to_one_worker(tmp_path):
    """Plain SQLite lets two processes pop the same queued trial; the sweep's storage must not."""
    import multiprocessing

    from loralab.sweeps.sweep import Sweep, open_study

    url = f"sqlite:///{tmp_path / 'race.db'}"
    study = open_study(Sweep(Path("race.yaml"), "race", Path("."), []), url, heartbeat_s=30)
    for i in range(40):
        study.enqueue_trial({}, user_attrs={"k": i})
    queue = multiprocessing.Queue()
    workers = [multiprocessing.Process(target=_pop_trials, args=(url, queue)) for _ in range(4)]
    for w in workers:
        w.start()
    popped = [k for _ in workers for k in queue.get(timeout=120) if k is not None]
    for w in workers:
        w.join()
    assert sorted(popped) == list(range(40))


def test_budget_derived_search_space_never_proposes_an_infeasible_trial(tmp_path, model_dirs, tiny_data):
    spec = yaml.safe_load(tiny_sweep(tmp_path, model_dirs, tiny_data, {"x": {"grid": {"lora.r": [1]}}}).read_text())
    del spec["groups"]
    spec["name"] = "maxfit"
    spec["overrides"] += ["lora.budget=5000"]
    spec["space"] = {
        "lora.r": "max_fit",
        "model.head": {"choices": ["full", "out_proj", "lora"]},
        "lora.scope": {"choices": [["value"], ["query", "value"], ["ffn_in", "ffn_out"]]},
        "lora.alpha": {"choices": ["r*1", "r*2"]},
    }
    path = tmp_path / "maxfit.yaml"
    path.write_text(yaml.safe_dump(spec))
    run_search(SweepOptions(str(path), runs=str(tmp_path / "runs"), trials=6), log=lambda *_: None)
    trials = optuna_trials(f"sqlite:///{tmp_path / 'runs' / 'maxfit' / 'optuna.db'}", "maxfit")
    assert len(trials) >= 6
    for trial in trials:
        assert "rejected" not in trial.user_attrs and trial.user_attrs["trainable"] <= 5000
        assert trial.user_attrs["lora.r"] >= 1
    for record in find_runs([str(tmp_path / "runs")]):  # the largest rank: one more would not fit
        lora = record.config.lora
        assert record.summary.trainable["headroom"] >= 0
        assert breakdown_for(with_rank(record.config, lora.r + 1))[0].total > 5000
        assert lora.alpha in (lora.r, 2 * lora.r)

    spec["overrides"] += ["lora.budget=1500"]  # the full head (1,188) plus ffn adapters at r=1 (384) exceed this
    spec["name"] = "impossible"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(LoralabError, match="does not fit the budget at any rank"):
        run_search(SweepOptions(str(path), runs=str(tmp_path / "runs"), trials=1), log=lambda *_: None)


def test_dashboard_serves_the_sweeps_trials_over_http(tmp_path, model_dirs, tiny_data):
    import json
    import socket
    import urllib.request

    runs = tmp_path / "runs"
    path = tiny_sweep(tmp_path, model_dirs, tiny_data, {"r": {"grid": {"lora.r": [2, 4]}}}, name="watched")
    run_sweep(SweepOptions(str(path), runs=str(runs)), log=lambda *_: None)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "loralab.cli", "dashboard", str(path), "--runs", str(runs), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline, studies = time.time() + 60, None
        while studies is None and time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as response:
                    studies = json.loads(response.read())["study_summaries"]
            except OSError:
                time.sleep(0.2)
        assert studies is not None, "the dashboard did not answer within 60 s"
        (study,) = studies
        assert study["study_name"] == "watched"
        url = f"http://127.0.0.1:{port}/api/studies/{study['study_id']}?after=0"
        with urllib.request.urlopen(url, timeout=10) as response:
            trials = json.loads(response.read())["trials"]
        keys = [
            next(a["value"] for a in t["user_attrs"] if a["key"] == "key") for t in trials if t["state"] == "Complete"
        ]
        assert sorted(keys) == ["r/r_2", "r/r_4"]
    finally:
        server.terminate()
        server.wait()


def test_dashboard_before_the_sweep_started_is_refused(tmp_path, model_dirs, tiny_data, capsys):
    from loralab.cli import main

    path = tiny_sweep(tmp_path, model_dirs, tiny_data, {"r": {"grid": {"lora.r": [2]}}}, name="unstarted")
    assert main(["dashboard", str(path), "--runs", str(tmp_path / "runs")]) == 2
    assert "start it with `loralab sweep" in capsys.readouterr().err


def test_workers_are_placed_round_robin_on_the_visible_gpus(tmp_path, model_dirs, tiny_data):
    from loralab.sweeps.sweep import worker_count

    assert worker_count(4, None, ["0", "1"]) == 4 and worker_count(1, 3, ["2", "5"]) == 6
    with pytest.raises(LoralabError, match="--per-gpu: no CUDA GPU is visible"):
        worker_count(1, 2, [])
    # On this CPU machine, pretend two GPUs named 7 and 9: each worker must be given one of them.
    runs = tmp_path / "runs"
    path = tiny_sweep(tmp_path, model_dirs, tiny_data, FOUR, name="placed")
    status = run_sweep(SweepOptions(str(path), per_gpu=1, runs=str(runs)), log=lambda *_: None, gpus=["7", "9"])
    assert status["finished"] == 4
    trials = [
        t for t in optuna_trials(f"sqlite:///{runs / 'placed' / 'optuna.db'}", "placed") if t.state.name == "COMPLETE"
    ]
    assert len(trials) == 4 and {t.user_attrs["gpu"] for t in trials} <= {"7", "9"}
    by_worker = {}
    for t in trials:  # a worker keeps the GPU it was given
        by_worker.setdefault(t.user_attrs["worker"], set()).add(t.user_attrs["gpu"])
    assert all(len(gpus) == 1 for gpus in by_worker.values())
    given = [gpu for gpus in by_worker.values() for gpu in gpus]
    assert len(given) == len(set(given))  # round robin: no two workers on one GPU while another GPU is free


def test_budget_curve_sweep_takes_the_largest_rank_and_plots_against_full_finetuning(tmp_path, model_dirs, tiny_data):
    from loralab.budget.count import largest_fitting_rank, shapes_for
    from loralab.reporting.plots import plot_runs

    groups = {
        "curve": {"grid": {"lora.budget": [2000, 4000, 8000]}, "set": {"lora.r": "max_fit", "lora.alpha": "r*2"}},
        "full": {"variants": {"full": {"model.finetune": "full"}}},
    }
    path = tiny_sweep(tmp_path, model_dirs, tiny_data, groups, name="curve")
    runs = tmp_path / "runs"
    assert run_sweep(SweepOptions(str(path), runs=str(runs)), log=lambda *_: None)["finished"] == 4
    records = find_runs([str(runs)])
    curve = sorted((r for r in records if "lora.budget" in r.axes), key=lambda r: r.config.lora.budget)
    ranks = [r.config.lora.r for r in curve]
    assert ranks == sorted(ranks) and ranks[0] < ranks[-1]
    for record in curve:  # the largest rank: one more would not fit
        cfg = record.config
        assert record.summary.trainable["total"] <= cfg.lora.budget and cfg.lora.alpha == 2 * cfg.lora.r
        assert largest_fitting_rank(cfg, shapes_for(cfg)) == cfg.lora.r
    plotted = plot_runs(records, tmp_path / "figures")
    full = next(r for r in records if r.config.model.finetune == "full")
    assert plotted["fig_budget"] == {f"{r.summary.trainable['total']:,} params": r.peak for r in curve} | {
        f"full fine-tuning ({full.summary.trainable['total']:,} params)": full.peak
    }
    assert (tmp_path / "figures" / "fig_budget.svg").exists()


def test_figures_label_a_variants_max_fit_size_and_alpha_expression_as_the_run_trained(tmp_path, model_dirs, tiny_data):
    from loralab.reporting.plots import plot_runs, run_label

    groups = {"methods": {"variants": {
        "lora": {"lora.method": "lora", "lora.r": "max_fit", "lora.alpha": "r*2"},
        "fourierft": {"lora.method": "fourierft", "lora.r": "max_fit", "lora.alpha": "r*2"},
    }, "set": {"lora.budget": 4000}}}  # fmt: skip
    path = tiny_sweep(tmp_path, model_dirs, tiny_data, groups, name="labels")
    assert run_sweep(SweepOptions(str(path), runs=str(tmp_path / "runs")), log=lambda *_: None)["finished"] == 2
    records = {r.config.lora.method: r for r in find_runs([str(tmp_path / "runs")])}
    lora, fourier = records["lora"].config.lora, records["fourierft"].config.lora
    assert f"method=lora, r={lora.r} (" in run_label(records["lora"])
    assert f"alpha={2 * lora.r:g} (r*2)" in run_label(records["lora"])
    assert f"n_frequency={fourier.n_frequency} (" in run_label(records["fourierft"])
    assert plot_runs(list(records.values()), tmp_path / "figures")  # the figures draw with these labels


def test_a_killed_worker_is_reported_with_the_likely_cause_and_the_fix():
    killed = workers_failed([0, -9], "sweep")
    assert killed.startswith("1 of 2 workers failed (exit codes [0, -9]); a worker killed with signal 9")
    assert "out of memory" in killed and "fewer --workers" in killed and "resume from their checkpoints" in killed
    assert workers_failed([1, 0, 0], "search") == "1 of 3 workers failed (exit codes [1, 0, 0])"


def test_command_line_overrides_reach_every_trial_and_bind_the_study(tmp_path, model_dirs, tiny_data, capsys):
    import optuna

    from loralab.cli import main

    runs = tmp_path / "runs"
    path = tiny_sweep(tmp_path, model_dirs, tiny_data, {"r": {"grid": {"lora.r": [2, 4]}}}, name="shrunk")
    assert main(["sweep", str(path), "train.steps=2", "train.eval_every=1", "--runs", str(runs)]) == 0
    out = capsys.readouterr().out
    assert "shrunk: trial r/r_2 starts in" in out and "shrunk: trial r/r_4 starts in" in out
    records = find_runs([str(runs)])
    assert len(records) == 2 and all(r.summary.steps_done == 2 and r.config.train.eval_every == 1 for r in records)
    study = optuna.load_study(study_name="shrunk", storage=f"sqlite:///{runs / 'shrunk' / 'optuna.db'}")
    assert study.metric_names == ["peak validation metric (train.metric_for_best)"]  # the dashboard names it
    # Other overrides would mix two configurations under one study: refused, naming both.
    assert main(["sweep", str(path), "train.steps=3", "--runs", str(runs)]) == 2
    err = capsys.readouterr().err
    assert "was run with the overrides train.steps=2 train.eval_every=1, not train.steps=3" in err
    assert main(["sweep", str(path), "train.steps=2", "train.eval_every=1", "--runs", str(runs)]) == 0  # the same: fine


def test_search_prints_the_command_that_trains_its_best_trial(tmp_path, model_dirs, tiny_data, capsys):
    import shlex

    from loralab.cli import main

    spec = yaml.safe_load(tiny_sweep(tmp_path, model_dirs, tiny_data, {"x": {"grid": {"lora.r": [1]}}}).read_text())
    del spec["groups"]
    spec["name"] = "best-line"
    spec["space"] = {"lora.scope": {"choices": [["value"], ["query", "value"]]}, "lora.r": {"low": 1, "high": 4}}
    path = tmp_path / "best-line.yaml"
    path.write_text(yaml.safe_dump(spec))
    lines = []
    run_search(SweepOptions(str(path), runs=str(tmp_path / "runs"), trials=3), log=lines.append)
    command = lines[-1].splitlines()[-1].strip()
    assert command.startswith("loralab train --config ")
    argv = shlex.split(command)[1:] + [f"output.dir={tmp_path / 'again'}"]
    assert main(argv) == 0
    (again,) = find_runs([str(tmp_path / "again")])
    best = max(find_runs([str(tmp_path / "runs")]), key=lambda r: r.summary.peak_val_accuracy)
    assert (again.config.lora.scope, again.config.lora.r) == (best.config.lora.scope, best.config.lora.r)
    assert again.config.model == best.config.model and again.config.train == best.config.train


def test_what_every_trial_needs_is_checked_once_and_a_repeated_failure_stops_the_sweep(
    tmp_path, model_dirs, tiny_data, capsys
):
    import optuna

    from loralab.cli import main

    no_tokenizer = tmp_path / "no-tokenizer"
    shutil.copytree(model_dirs["roberta"], no_tokenizer)
    for path in no_tokenizer.iterdir():
        if path.name not in ("config.json", "model.safetensors"):
            path.unlink()
    runs = tmp_path / "runs"
    path = tiny_sweep(tmp_path, model_dirs, tiny_data, FOUR, name="needs")
    assert main(["sweep", str(path), f"model.name={no_tokenizer}", "--runs", str(runs)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "has no tokenizer" in err[0], err
    assert not list(runs.rglob("config.yaml"))  # no trial started
    # Every trial fails the same way when it starts: the second such failure ends the sweep.
    assert main(["sweep", str(path), "data.val_size=100000", "--runs", str(tmp_path / "again")]) == 2
    err = capsys.readouterr().err.splitlines()
    failed = [line for line in err if ": trial " in line and " failed: " in line]
    assert len(failed) == 2 and all("leaves no training rows" in line for line in failed), err
    assert err[-1].startswith("loralab: error: two trials in a row failed the same way")
    assert not any("Traceback" in line for line in err)
    study = optuna.load_study(study_name="needs", storage=f"sqlite:///{tmp_path / 'again' / 'needs' / 'optuna.db'}")
    assert sorted(t.state.name for t in study.get_trials()) == ["FAIL", "FAIL", "WAITING", "WAITING"]


@pytest.mark.xdist_group("postgresql")  # it stops the server: no other test of it may run meanwhile
def test_a_postgresql_outage_mid_sweep_is_ridden_out(tmp_path, model_dirs, tiny_data):
    """The server stopped for 8 s (four heartbeats) while a trial trains (its heartbeats fail meanwhile), then
    started again: the sweep waits, says so, and finishes every trial exactly once."""
    url = postgres_or_skip()
    clusters = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True)
    if clusters.returncode or os.geteuid() != 0:
        pytest.skip("stopping the PostgreSQL server needs pg_ctlcluster as root")
    version, cluster = clusters.stdout.split()[:2]
    name = f"outage-{os.getpid()}-{time.time_ns()}"
    path = tiny_sweep(tmp_path, model_dirs, tiny_data, {"r": {"grid": {"lora.r": [2, 4]}}}, steps=600, name=name)
    runs = tmp_path / "runs"
    sweep = subprocess.Popen(
        [sys.executable, "-m", "loralab.cli", "sweep", str(path), "train.eval_every=500", "--storage", url,
         "--runs", str(runs), "--heartbeat", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"},
    )  # one thread: the tests beside it keep the other cores  # fmt: skip
    try:
        deadline = time.time() + 120
        while not list(runs.glob(f"{name}/r/*/metrics.jsonl")) and time.time() < deadline:
            time.sleep(0.2)
        assert list(runs.glob(f"{name}/r/*/metrics.jsonl")), "no trial started training within 120 s"
        subprocess.run(["pg_ctlcluster", version, cluster, "stop"], check=True)
        time.sleep(8)
    finally:
        subprocess.run(["pg_ctlcluster", version, cluster, "start"], check=True)
    out, err = sweep.communicate(timeout=400)
    assert sweep.returncode == 0, err[-3000:]
    assert "the Optuna storage is unreachable" in err and "the Optuna storage is back" in err
    assert "2 finished, 0 unfinished" in out
    trials = optuna_trials(url, name)
    assert sorted(t.user_attrs["key"] for t in trials if t.state.name == "COMPLETE") == ["r/r_2", "r/r_4"]
    assert "s3cret" not in err and ":loralab@" not in err  # the password is never printed


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads process states from /proc")
def test_ctrl_c_of_a_sweep_is_one_line_with_how_to_resume(tmp_path, model_dirs, tiny_data):
    """Ctrl-C reaches the whole process group (the sweep and its workers): one line, no traceback."""
    runs = tmp_path / "runs"
    path = tiny_sweep(tmp_path, model_dirs, tiny_data, FOUR, steps=100_000, name="interrupted")
    command = [sys.executable, "-m", "loralab.cli", "sweep", str(path), "--runs", str(runs), "--workers", "2"]
    sweep = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 300
    while len(list(runs.glob("interrupted/*/*/metrics.jsonl"))) < 2 and time.time() < deadline:
        time.sleep(0.2)
    assert len(list(runs.glob("interrupted/*/*/metrics.jsonl"))) == 2, "both workers must be training first"
    os.killpg(sweep.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    out, err = sweep.communicate(timeout=120)
    assert sweep.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("loralab:")]
    assert lines == ["loralab: interrupted; run the same command again: finished trials are kept, interrupted ones "
                     "resume from their checkpoints"], err[-2000:]  # fmt: skip


def test_one_sweep_file_compares_methods_at_one_budget_each_at_its_largest_size(tmp_path, model_dirs, tiny_data):
    """`lora.r: max_fit` sizes each method's own knob (FourierFT's n_frequency); a method without one is refused."""
    from loralab.budget.count import largest_fitting_rank, shapes_for
    from loralab.sweeps.sweepfile import trial_config

    methods = {"lora": {}, "vera": {}, "fourierft": {}}
    groups = {"methods": {"variants": {m: {"lora.method": m, "lora.r": "max_fit"} for m in methods},
                          "set": {"lora.budget": 4000, "lora.alpha": 8}}}  # fmt: skip
    path = tiny_sweep(tmp_path, model_dirs, tiny_data, groups, name="methods")
    sweep = read_sweep(path, str(tmp_path / "runs"))
    for trial in sweep.trials:
        cfg = trial_config(sweep, trial, str(tmp_path / "runs"))
        field = "n_frequency" if cfg.lora.method == "fourierft" else "r"
        total = breakdown_for(cfg, shapes_for(cfg))[0].total
        try:  # one more does not fit the budget, or (FourierFT here) is more frequencies than a layer has
            assert total <= 4000 < breakdown_for(with_rank(cfg, getattr(cfg.lora, field) + 1), shapes_for(cfg))[0].total
        except LoralabError as err:
            assert cfg.lora.method == "fourierft" and "fourierft can take here: at most 1024" in str(err)
        assert largest_fitting_rank(cfg, shapes_for(cfg)) == getattr(cfg.lora, field)
    groups["methods"]["variants"]["ia3"] = {"lora.method": "ia3", "lora.r": "max_fit"}
    path = tiny_sweep(tmp_path, model_dirs, tiny_data, groups, name="methods")
    with pytest.raises(LoralabError, match="trial methods/ia3: lora.r: max_fit: ia3 has no size to fit"):
        read_sweep(path, str(tmp_path / "runs"))  # said when the file is read, before any trial trains


def test_a_killed_pack_resumes_every_trial_to_the_uninterrupted_result(tmp_path, model_dirs, tiny_data):
    """kill -9 in the middle of a pack of three, then the same command: every trial finishes from its own
    checkpoint, and each ends where the same pack run without interruption ends (no dropout: the same numbers)."""
    from safetensors.torch import load_file

    seeds = {"seeds": {"grid": {"train.seed": [1, 2, 3]}}}
    overrides = ["lora.dropout=0", "train.eval_every=15"]

    def sweep(name: str, steps: int) -> list[str]:
        path = tiny_sweep(tmp_path, model_dirs, tiny_data, seeds, steps=steps, name=name)
        return [sys.executable, "-m", "loralab.cli", "sweep", str(path), *overrides, "--runs", str(tmp_path / name),
                "--pack", "3"]  # fmt: skip

    env = os.environ | {"OMP_NUM_THREADS": "1"}
    whole = subprocess.run(sweep("whole", 90), env=env, capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert "pack of 3 trials" in whole.stdout
    command = sweep("killed", 90)
    worker = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runs = tmp_path / "killed"
    deadline = time.time() + 120
    while len(list(runs.glob("killed/*/*/checkpoint/state.pt"))) < 3 and time.time() < deadline:
        time.sleep(0.05)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    assert not list(runs.glob("killed/*/*/summary.json")), "the pack finished before it was killed"
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("resumed ") == 3 and "3 finished, 0 unfinished" in again.stdout
    for run in sorted((tmp_path / "whole" / "whole" / "seeds").iterdir()):
        resumed = runs / "killed" / "seeds" / run.name
        for which in ("best", "last"):
            a = load_file(str(run / which / "adapter_model.safetensors"))
            b = load_file(str(resumed / which / "adapter_model.safetensors"))
            for name in a:
                torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-6)
