"""The Optuna storage: opened by several processes at once."""

import multiprocessing
import time
from pathlib import Path


def _open_when_told(url: str, go: str, ready, results) -> None:
    from loralab.errors import LoralabError
    from loralab.sweeps.storage import connect

    ready.put(True)
    while not Path(go).exists():  # every process has imported everything: they open together
        time.sleep(0.001)
    try:
        connect(url, heartbeat_s=30)
        results.put("ok")
    except LoralabError as err:
        results.put(str(err))


def test_processes_opening_a_new_storage_at_once_all_get_it(tmp_path):
    """Optuna creates the tables of a new storage on opening, not atomically: a sweep and the dashboard (or
    its workers) opening it together used to fail with 'table ... already exists' in the slower one."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    go = tmp_path / "go"
    context = multiprocessing.get_context("spawn")
    ready, results = context.Queue(), context.Queue()
    processes = [context.Process(target=_open_when_told, args=(url, str(go), ready, results)) for _ in range(6)]
    for process in processes:
        process.start()
    for _ in processes:
        ready.get(timeout=300)
    go.touch()
    for process in processes:
        process.join(timeout=120)
    assert [results.get(timeout=5) for _ in processes] == ["ok"] * len(processes)
