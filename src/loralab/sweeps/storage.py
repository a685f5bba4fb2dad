"""The Optuna storage of a sweep: SQLite beside the runs or a PostgreSQL server, with its password kept
out of every message, SQLite's queue made safe for several workers, and outages of the server ridden out."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

from ..errors import LoralabError
from ..runs.files import make_dir
from .sweepfile import Sweep, read_sweep

# user:password@ in a URL: the password is never shown, in a message, a log or a saved file.
URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")
OUTAGE_S = 60  # how long a storage that has gone away is waited for before the worker gives up
RETRY_EVERY_S = 2


def redact(text: str) -> str:
    """`text` with the password of any URL in it replaced by ***."""
    return URL_PASSWORD.sub(r"\1***@", text)


def _lost_connection(err: BaseException) -> bool:
    """The server went away (or SQLite stayed busy), as opposed to a bad query: worth waiting for."""
    from sqlalchemy import exc

    while err is not None:
        if isinstance(err, (exc.OperationalError, exc.InterfaceError, exc.DisconnectionError)):
            return True
        err = err.__cause__ or err.__context__
    return False


def _lost_creation_race(err: BaseException) -> bool:
    """Another process created the same table or version row first (SQLite's and PostgreSQL's wording)."""
    from sqlalchemy import exc

    text = str(err)
    return isinstance(err, exc.IntegrityError) or "already exists" in text or "duplicate key" in text


def _patient(method):
    """Call an RDBStorage method; where the connection is lost, say so and try again for OUTAGE_S seconds
    (heartbeats included, so a live trial is not taken for dead), then end in one line."""

    def call(self, *args, **kwargs):
        waiting_since = None
        while True:
            try:
                result = method(self, *args, **kwargs)
                if waiting_since is not None:
                    print("loralab: the Optuna storage is back", file=sys.stderr, flush=True)
                return result
            except Exception as err:
                if not self.patient or not _lost_connection(err):
                    raise
                now = time.monotonic()
                if waiting_since is None:
                    waiting_since = now
                    reason = str(err.__cause__ or err).splitlines()[0]
                    print(
                        redact(f"loralab: the Optuna storage is unreachable ({reason}); retrying for {OUTAGE_S} s"),
                        file=sys.stderr,
                        flush=True,
                    )
                if now - waiting_since > OUTAGE_S:
                    raise LoralabError(
                        f"the Optuna storage {redact(self.url)} has been unreachable for {OUTAGE_S} s: run the same "
                        "command again once it is back (finished trials are kept, interrupted ones resume)"
                    ) from None
                time.sleep(RETRY_EVERY_S)

    call.__name__, call.__doc__ = method.__name__, method.__doc__
    return call


def _patient_storage_class():
    from optuna.storages import RDBStorage

    class PatientRDBStorage(RDBStorage):
        """RDBStorage whose every call rides out an outage of its server (once the study is open)."""

        patient = False  # a storage that cannot be opened at all is a wrong URL or a server not running

    for name, method in vars(RDBStorage).items():
        if callable(method) and not name.startswith("_") and name != "remove_session":
            setattr(PatientRDBStorage, name, _patient(method))
    return PatientRDBStorage


def connect(url: str, heartbeat_s: int):
    """An open storage at `url`, with heartbeats every heartbeat_s seconds; one line if it cannot be opened."""
    sqlite = url.startswith("sqlite")
    try:
        for attempt in range(5):
            try:
                storage = _patient_storage_class()(
                    url,
                    # pool_pre_ping: a connection the server dropped (a restart) is replaced, not used and failed.
                    engine_kwargs={"connect_args": {"timeout": 120}} if sqlite else {"pool_pre_ping": True},
                    heartbeat_interval=heartbeat_s,
                    grace_period=2 * heartbeat_s,
                )
                break
            except Exception as err:
                # Optuna creates a new storage's tables and version row on opening, not atomically: two
                # processes opening it at once (a sweep and its dashboard, or workers) can both see them
                # missing, and the slower one's CREATE or INSERT fails. Opened again, it finds them there.
                if not _lost_creation_race(err) or attempt == 4:
                    raise
                time.sleep(0.1 * (attempt + 1))
        if sqlite:
            serialize_sqlite_transactions(storage.engine)
    except Exception as err:  # SQLAlchemy raises many types for a bad URL or an unreachable server
        raise LoralabError(redact(f"cannot open the Optuna storage {url}: {str(err).splitlines()[0]}")) from None
    return storage


def serialize_sqlite_transactions(engine) -> None:
    """Make every SQLite transaction take the write lock up front (BEGIN IMMEDIATE).

    SQLite ignores SELECT ... FOR UPDATE, so without this two workers can both pop the same queued
    trial; PostgreSQL needs nothing.
    """
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened before the listeners would miss them


def default_database(sweep: Sweep, runs_dir: str) -> Path:
    return sweep.folder(runs_dir) / "optuna.db"


def default_storage(sweep: Sweep, runs_dir: str) -> str:
    make_dir(sweep.folder(runs_dir))
    return f"sqlite:///{default_database(sweep, runs_dir).resolve()}"


def serve_dashboard(path: str | None, storage: str | None, runs_dir: str, host: str, port: int, log=print) -> None:
    """optuna-dashboard on a sweep's or search's study, live while it runs (blocks until Ctrl-C)."""
    import optuna_dashboard

    if storage is None:
        if path is None:
            raise LoralabError("dashboard: name the sweep or search file, or pass --storage URL")
        sweep = read_sweep(path, runs_dir)
        database = default_database(sweep, runs_dir)
        if not database.exists():
            raise LoralabError(f"dashboard: no study at {database} yet: start it with `loralab sweep {path}` first")
        storage = default_storage(sweep, runs_dir)
    log(f"optuna-dashboard on {redact(storage)}: http://{host}:{port}/ (Ctrl-C to stop)")
    try:
        optuna_dashboard.run_server(storage, host=host, port=port)
    except OSError as err:
        raise LoralabError(
            f"dashboard: cannot serve on {host}:{port} ({err.strerror}): choose another --port"
        ) from None
