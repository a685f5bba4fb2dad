"""`loralab serve`: an HTTP server for trained classifiers (FastAPI on uvicorn, metrics by prometheus-client).

Runs trained on the same base share one copy of it in memory: each run's adapter and trained head are
loaded beside it under their own name, and rows that arrive together are classified in one forward
pass even when they ask for different adapters (PEFT's mixed-adapter batches). One run alone runs as
`predict` runs it. An ONNX export (fp32 or int8) is served by ONNX Runtime as a model of its own: several
exports are several models, in one server. PyTorch models run on the CUDA device where there is one, in the
precision the (first) run trained in where that device computes it natively (engine.py decides).

Runs of one base share its pass whatever their tasks and label counts (single-label, multi-label,
regression, pairs): each row's logits come from its own adapter's head. With --admin-token, adapters are
added and removed while the server answers the rest (runs and exports under --runs-dir only).

    POST   /v1/classify        {"adapter": NAME, "texts": [...], "text_pairs": [...], "probabilities": true}
    GET    /v1/adapters        each adapter's base, task, labels, how it runs, when it was loaded, its scores
    POST   /v1/adapters        {"run": NAME or PATH under --runs-dir, "name": NAME}  (Authorization: Bearer TOKEN)
    DELETE /v1/adapters/NAME   after the requests holding it are answered        (Authorization: Bearer TOKEN)
    GET    /healthz            200 while the batcher runs
    GET    /metrics            Prometheus' text format: requests, rows and latency per adapter, batch sizes
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import signal
import socket
import time
from pathlib import Path

from fastapi import Request  # at module level: FastAPI resolves the handlers' annotations in this namespace

from .. import strictjson
from ..errors import LoralabError
from ..options import ServeOptions
from ..runs.rundir import RunDir
from .batcher import Batcher, Metrics, Overloaded
from .engine import is_onnx_export
from .models import Adapter, Classifiers, adapter_info, named_runs

# --- the HTTP application ---------------------------------------------------------------------------


class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _texts(body: dict, key: str, options: ServeOptions) -> list[str] | None:
    texts = body.get(key)
    if texts is None and key == "text_pairs":
        return None
    if texts is None:
        raise BadRequest(422, 'no "texts": send {"adapter": NAME, "texts": ["a text", ...]}')
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise BadRequest(422, f'"{key}" must be a list of strings')
    if not texts:
        raise BadRequest(422, f'"{key}" is empty: send at least one text')
    if len(texts) > options.max_texts:
        raise BadRequest(
            413, f"{len(texts):,} {key} in one request; at most {options.max_texts:,} (split them, or --max-texts)"
        )
    for i, text in enumerate(texts):
        if len(text) > options.max_chars:
            raise BadRequest(
                413, f"{key}[{i}] has {len(text):,} characters; at most {options.max_chars:,} (--max-chars)"
            )
    return texts


def json_object(raw: bytes, fields: tuple[str, ...], example: str) -> dict:
    """A request body that must be a JSON object of these fields (each optional here)."""
    try:
        body = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise BadRequest(400, f"the body is not UTF-8 (byte {err.start}): send JSON in UTF-8") from None
    except json.JSONDecodeError as err:
        raise BadRequest(400, f"the body is not JSON ({err.msg} at line {err.lineno} column {err.colno})") from None
    if not isinstance(body, dict):
        raise BadRequest(422, f"the body must be a JSON object: {example}")
    unknown = sorted(set(body) - set(fields))
    if unknown:
        raise BadRequest(422, f"unknown field(s) {', '.join(map(repr, unknown))}: use {', '.join(fields)}")
    return body


def parse_request(raw: bytes, classifiers: Classifiers) -> tuple[Adapter, list[str], list[str] | None, bool]:
    """The request body checked: every problem a 4xx with one line naming it."""
    fields = ("adapter", "texts", "text_pairs", "probabilities")
    body = json_object(raw, fields, '{"adapter": NAME, "texts": [...]}')
    name = body.get("adapter")
    if name is None and len(classifiers.adapters) == 1:
        name = next(iter(classifiers.adapters))
    if not isinstance(name, str):
        raise BadRequest(422, f'"adapter" must be the name of one of: {", ".join(classifiers.adapters)}')
    adapter = classifiers.adapters.get(name)
    if adapter is None:
        raise BadRequest(404, f"no adapter '{name}' here; this server has: {', '.join(classifiers.adapters)}")
    options = classifiers.options
    texts, pairs = _texts(body, "texts", options), _texts(body, "text_pairs", options)
    trained_on_pairs = bool(adapter.cfg.data.text_pair_column)
    if pairs is not None and len(pairs) != len(texts):
        raise BadRequest(422, f"{len(texts)} texts but {len(pairs)} text_pairs: give one pair per text")
    if trained_on_pairs and pairs is None:
        raise BadRequest(422, f'adapter {name} was trained on text pairs: send "text_pairs" beside "texts"')
    if not trained_on_pairs and pairs is not None:
        raise BadRequest(422, f'adapter {name} was trained on single texts: leave out "text_pairs"')
    probabilities = body.get("probabilities", False)
    if not isinstance(probabilities, bool):
        raise BadRequest(422, '"probabilities" must be true or false')
    return adapter, texts, pairs, probabilities


ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # safe in a URL path and a metric label


def parse_addition(raw: bytes, classifiers: Classifiers) -> tuple[str, Path]:
    """POST /v1/adapters' body checked: the public name and the run or export under --runs-dir it names.
    A path from the network may name only what lies under the folder the operator gave (links resolved)."""
    body = json_object(raw, ("run", "name"), '{"run": "NAME or PATH under --runs-dir", "name": "its served name"}')
    spec = body.get("run")
    if not isinstance(spec, str) or not spec:
        raise BadRequest(422, '"run" must name a run or an ONNX export under the server\'s --runs-dir')
    root = Path(classifiers.options.runs_dir).resolve()
    path = (root / spec).resolve()  # an absolute path replaces root; '..' and links are resolved first
    if not path.is_relative_to(root) or path == root:
        raise BadRequest(403, f"'{spec}' is not inside --runs-dir ({root}): name a run or export under it")
    name = body.get("name", path.name)
    if not isinstance(name, str) or not ADAPTER_NAME.match(name):
        raise BadRequest(422, f'"name" {name!r} must be 1-64 letters, digits, ".", "_" or "-", starting alphanumeric')
    if name in classifiers.adapters:
        raise BadRequest(409, f"an adapter named '{name}' is already served: remove it first, or choose another name")
    if not (RunDir(path).summary.is_file() or is_onnx_export(path)):
        raise BadRequest(404, f"'{spec}' is neither a finished run (no summary.json) nor an ONNX export here")
    return name, path


def not_running(task) -> RuntimeError:
    """Why the batcher task is not running (it raised, or it was stopped)."""
    failure = task.exception() if task is not None and task.done() and not task.cancelled() else None
    return RuntimeError(f"the batcher is not running ({failure or 'stopped'})")


def error(status: int, message: str):
    """A JSON error answer: {"error": message}."""
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status)


def build_app(classifiers: Classifiers):
    """The FastAPI application over loaded classifiers: the batcher's lifespan, then each concern's part."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI

    metrics = Metrics(classifiers.options.max_batch)
    metrics.adapters.set(len(classifiers.adapters))
    batcher = Batcher(classifiers, metrics)

    @asynccontextmanager
    async def lifespan(app):
        task = app.state.batcher_task = asyncio.create_task(batcher.run())
        # A batcher that stops answers what waits for it at once, rather than leave it waiting for ever.
        task.add_done_callback(lambda done: batcher.fail_waiting(not_running(done)))
        yield
        task.cancel()  # uvicorn has answered every request in flight by now

    app = FastAPI(title="loralab", lifespan=lifespan)
    app.state.batcher_task = None
    app.state.accepted = app.state.answered = 0  # requests taken in and answered: the shutdown line's truth
    # Requests that hold an adapter, from their parsing to their answer: a removal waits until none does.
    app.state.released = asyncio.Condition()
    add_error_answers(app)
    add_request_metrics(app, metrics)
    add_classify(app, classifiers, batcher, metrics)
    add_adapter_admin(app, classifiers, batcher, metrics)
    return app


def batcher_problem(app) -> str | None:
    """Why nothing would answer a classification now (None: the batcher runs)."""
    task = app.state.batcher_task
    return str(not_running(task)) if task is None or task.done() else None


def add_error_answers(app) -> None:
    """Errors as one JSON line naming the problem: unknown paths and methods, bodies that fail validation."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException):
        if err.status_code == 404:
            return error(404, f"no such path {request.url.path}: the paths are {', '.join(PATHS)}")
        if err.status_code == 405:
            return error(405, f"{request.method} is not allowed on {request.url.path}: {PATHS.get(request.url.path)}")
        return error(err.status_code, str(err.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, err: RequestValidationError):
        return error(422, str(err.errors()[0].get("msg", err)))


def add_request_metrics(app, metrics: Metrics) -> None:
    """Every request counted (taken in, answered) and timed by path and status, and GET /metrics to read them."""
    from fastapi.responses import Response
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    @app.middleware("http")
    async def count(request: Request, call_next):
        start = time.perf_counter()
        app.state.accepted += 1
        response = await call_next(request)
        app.state.answered += 1
        path = request.url.path
        path = path if path in PATHS else "/v1/adapters/NAME" if path.startswith("/v1/adapters/") else "other"
        metrics.requests.labels(path, str(response.status_code)).inc()
        metrics.latency.labels(path).observe(time.perf_counter() - start)
        return response

    @app.get("/metrics")
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


def add_classify(app, classifiers: Classifiers, batcher: Batcher, metrics: Metrics) -> None:
    """POST /v1/classify through the batcher, GET /v1/adapters, and the health check that sees the batcher."""
    from fastapi.responses import JSONResponse, Response
    from starlette.requests import ClientDisconnect

    released = app.state.released

    @app.post("/v1/classify")
    async def classify(request: Request):
        if problem := batcher_problem(app):  # nothing would answer it: said at once
            return error(503, problem)
        try:
            adapter, texts, pairs, probabilities = parse_request(await request.body(), classifiers)
        except BadRequest as err:
            return error(err.status, str(err))
        except ClientDisconnect:  # closed before its body came (a read timeout, or the client left)
            return error(408, "the request's body did not arrive")
        start = time.perf_counter()
        adapter.in_flight += 1  # in the same step as its lookup: no removal can come between them
        try:
            data = await asyncio.to_thread(classifiers.encode, adapter, texts, pairs)
            logits = data.per_row(await batcher.classify(adapter, data), adapter.task.window_pooling)
        except Overloaded as err:
            return JSONResponse({"error": str(err)}, status_code=503, headers={"Retry-After": "1"})
        except Exception as err:  # noqa: BLE001 - the batch failed: this request says why, the server goes on
            return error(500, f"the batch holding this request failed: {type(err).__name__}: {err}")
        finally:
            async with released:
                adapter.in_flight -= 1
                released.notify_all()
        metrics.rows.labels(adapter.name).inc(len(texts))
        metrics.adapter_latency.labels(adapter.name).observe(time.perf_counter() - start)
        answer = {"adapter": adapter.name, **classifiers.answer(adapter, logits, probabilities)}
        return Response(strictjson.dumps(answer), media_type="application/json")

    @app.get("/v1/adapters")
    async def adapters():
        return {"adapters": [a.info for a in classifiers.adapters.values()]}

    @app.get("/healthz")
    async def healthz():
        """503 where the batcher is not running: a load balancer then stops sending here."""
        if problem := batcher_problem(app):
            return error(503, problem)
        return {"status": "ok", "adapters": len(classifiers.adapters)}


def add_adapter_admin(app, classifiers: Classifiers, batcher: Batcher, metrics: Metrics) -> None:
    """POST /v1/adapters and DELETE /v1/adapters/NAME, behind the admin token, one change at a time."""
    from fastapi.responses import JSONResponse

    released = app.state.released
    changing = asyncio.Lock()  # one addition or removal at a time

    def refused(request: Request) -> JSONResponse | None:
        """Why an admin request is refused (None: it may go on): off without --admin-token, else its token."""
        token = classifiers.options.admin_token
        if not token:
            return error(403, "adding and removing adapters is off: start the server with --admin-token and --runs-dir")
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return JSONResponse(
                {"error": 'a missing or wrong token: send "Authorization: Bearer TOKEN", TOKEN the --admin-token'},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        return None

    @app.post("/v1/adapters")
    async def add(request: Request):
        """Load a run (beside the others on the shared base) or an ONNX export; requests for the rest go on:
        the files are read on a thread of their own, and only the final step runs between two passes."""
        if answer := refused(request):
            return answer
        async with changing:
            try:
                name, path = parse_addition(await request.body(), classifiers)
                adapter, attach = await asyncio.to_thread(classifiers.prepare, name, path)
                await batcher.on_forward_thread(attach)
            except BadRequest as err:
                return error(err.status, str(err))
            except LoralabError as err:
                return error(422, f"cannot serve it here: {err}")
            adapter.info = adapter_info(adapter)
            classifiers.adapters[name] = adapter
            metrics.adapters.set(len(classifiers.adapters))
        return JSONResponse(adapter.info, status_code=201)

    @app.delete("/v1/adapters/{name}")
    async def remove(name: str, request: Request):
        """Stop serving an adapter: new requests for it are 404 at once; its weights go once the requests
        that hold it are answered."""
        if answer := refused(request):
            return answer
        async with changing:
            adapter = classifiers.adapters.pop(name, None)
            if adapter is None:
                return error(404, f"no adapter '{name}' here; this server has: {', '.join(classifiers.adapters)}")
            async with released:
                await released.wait_for(lambda: adapter.in_flight == 0)
            await batcher.on_forward_thread(classifiers.remover(adapter))
            metrics.forget(name)
            metrics.adapters.set(len(classifiers.adapters))
        return {"removed": name, "adapters": list(classifiers.adapters)}


PATHS = {
    "/v1/classify": 'POST {"adapter": NAME, "texts": [...]}',
    "/v1/adapters": 'GET, or POST {"run": NAME} with --admin-token',
    "/v1/adapters/NAME": "DELETE with --admin-token",
    "/healthz": "GET",
    "/metrics": "GET",
}


# --- the server ---------------------------------------------------------------------------------------


def raise_open_files_limit() -> None:
    """The soft limit of open files up to the hard one, as servers do: every connection is a file, and the
    usual soft 1024 would refuse clients long before the read timeout frees stalled ones."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def read_timeout_protocol(seconds: float):
    """uvicorn's h11 protocol with a read timeout, which uvicorn lacks (it times out only idle keep-alive
    connections): a connection whose request has not wholly arrived `seconds` after it opened or after its
    last response is answered 408 where a request had begun, and closed. So stalled clients cannot hold
    the server's connections; a request already read is answered however long it takes."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    body = b'{"error": "the request did not arrive within the read timeout (--read-timeout)"}'
    timeout = (
        b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
        + f"content-length: {len(body)}\r\n\r\n".encode()
        + body
    )

    class ReadTimeout(H11Protocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self.read_timer = self.loop.call_later(seconds, self.read_timed_out)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self.read_timer.cancel()
            self.read_timer = self.loop.call_later(seconds, self.read_timed_out)

        def connection_lost(self, exc) -> None:
            self.read_timer.cancel()
            super().connection_lost(exc)

        def read_timed_out(self) -> None:
            if self.transport.is_closing() or self.conn.their_state is h11.DONE:
                return  # gone already, or the request is in and being answered
            begun = self.conn.their_state is h11.SEND_BODY or bool(self.conn.trailing_data[0])
            if begun:
                self.transport.write(timeout)
            self.transport.close()

    return ReadTimeout


def listening_socket(host: str, port: int) -> socket.socket:
    """The server's socket, taken before the models load: a port in use is said at once, not minutes later."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as err:
        raise LoralabError(f"serve: --host {host} is not an address of this machine ({err.strerror})") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart need not wait out TIME_WAIT
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise LoralabError(f"serve: cannot listen on {host}:{port} ({err.strerror}): choose another --port") from None
    sock.listen(2048)
    return sock


def serve(options: ServeOptions, log=print) -> None:
    """Load the runs, then answer requests until Ctrl-C, SIGTERM or SIGHUP (requests in flight are answered first)."""
    import uvicorn

    limits = (
        (options.max_batch, "--max-batch"),
        (options.max_texts, "--max-texts"),
        (options.max_tokens, "--max-tokens"),
    )
    for value, flag in limits:
        if value < 1:
            raise LoralabError(f"serve: {flag} must be at least 1, got {value}")
    if options.max_wait_ms < 0:
        raise LoralabError(f"serve: --max-wait-ms must be 0 or more, got {options.max_wait_ms}")
    if options.max_queue < options.max_texts:
        raise LoralabError(
            f"serve: --max-queue {options.max_queue} is below --max-texts {options.max_texts}: a whole request must "
            "fit in the queue"
        )
    if options.read_timeout <= 0:
        raise LoralabError(f"serve: --read-timeout must be above 0 seconds, got {options.read_timeout}")
    if (options.admin_token is None) != (options.runs_dir is None):
        raise LoralabError(
            "serve: --admin-token and --runs-dir go together: the token guards adding runs, the folder says which"
        )
    if options.admin_token is not None and len(options.admin_token) < 16:
        raise LoralabError("serve: --admin-token must be at least 16 characters (e.g. `openssl rand -hex 16`)")
    if options.runs_dir is not None and not Path(options.runs_dir).is_dir():
        raise LoralabError(f"serve: --runs-dir {options.runs_dir} is not a folder: name the folder of your runs")
    raise_open_files_limit()
    named_runs(options.runs)  # a missing run or a name given twice: said before the port is taken
    sock = listening_socket(options.host, options.port)
    classifiers = Classifiers(options)
    host, port = sock.getsockname()[:2]
    log(
        f"serving {len(classifiers.adapters)} adapter(s) ({', '.join(classifiers.adapters)}) on "
        f"http://{host}:{port}/v1/classify (Ctrl-C to stop)",
        flush=True,
    )
    if options.admin_token:
        log(f"  adapters may be added from {Path(options.runs_dir).resolve()} (POST /v1/adapters)", flush=True)
    for group in classifiers.groups():  # how each model runs: engine, device, precision and why
        engine = group.engine
        served = ", ".join(a.name for a in classifiers.adapters.values() if a.group is group)
        log(f"  {served}: {engine.kind} on {engine.describe()['device']}, {engine.precision.line()}", flush=True)
    app = build_app(classifiers)
    config = uvicorn.Config(
        app, log_level="warning", timeout_graceful_shutdown=30, http=read_timeout_protocol(options.read_timeout)
    )
    server = uvicorn.Server(config)
    # uvicorn answers the requests in flight on Ctrl-C or SIGTERM, then raises the signal again for the
    # caller: here that is the end of a clean stop (exit 0), not an interruption. SIGHUP (the terminal or ssh
    # session that started the server closed) would kill it at once: it stops the same graceful way.
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    hangup = signal.signal(signal.SIGHUP, lambda *_: setattr(server, "should_exit", True))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGHUP, hangup)
    lost = app.state.accepted - app.state.answered
    if lost:
        log(f"stopped: {lost} of {app.state.accepted} requests were not answered", flush=True)
    else:
        log(f"stopped: every request was answered ({app.state.accepted})", flush=True)
