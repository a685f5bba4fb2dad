"""`loralab serve`: an HTTP server for trained classifiers (FastAPI on uvicorn, metrics by prometheus-client).

Runs trained on the same base share one copy of it in memory: each run's adapter and trained head are
loaded beside it under their own name, and rows that arrive together are classified in one forward
pass even when they ask for different adapters (PEFT's mixed-adapter batches). One run alone is
merged into plain weights, as `predict` runs it. An ONNX export (fp32 or int8) is served by ONNX
Runtime as a model of its own: several exports are several models, in one server. PyTorch models run
on the CUDA device where there is one, in the precision it computes natively (engine.py decides).

    POST /v1/classify   {"adapter": NAME, "texts": [...], "text_pairs": [...], "probabilities": true}
    GET  /v1/adapters   each adapter's base, task, labels, trainable count and validation peak
    GET  /healthz       200 once the models are loaded
    GET  /metrics       Prometheus' text format: requests, rows, batch sizes, latency
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from fastapi import Request  # at module level: FastAPI resolves the handlers' annotations in this namespace

from .. import strictjson
from ..allocator import release_freed_memory
from ..config import Config
from ..data import Encoded
from ..errors import LoralabError
from ..modeling.model import load_trained
from ..options import ServeOptions
from ..runs.rundir import RunDir, read_frozen
from ..tasks import Decision, task_for
from .engine import EXPORT_RECORD, ONNX_FILE, OnnxEngine, TorchEngine, is_onnx_export, set_threads


class ModelGroup:
    """Adapters that share one forward pass: one base with every run's adapter beside it (PyTorch), or one
    ONNX export. A batch of rows for several groups runs one pass per group."""

    def __init__(self, engine: TorchEngine | OnnxEngine, mixed: bool):
        self.engine, self.mixed = engine, mixed

    def logits(self, data: Encoded, peft_names: list[str], options: ServeOptions) -> torch.Tensor:
        names = peft_names if self.mixed else None
        return self.engine.logits(data, options.max_batch, names, options.max_tokens)


@dataclass
class Adapter:
    """One served run or export: its public name, its model group, the name PEFT knows it by there, and
    what turns its logits into answers."""

    name: str
    run: Path
    cfg: Config
    decision: Decision
    peft_name: str
    group: ModelGroup | None = None
    info: dict = field(default_factory=dict)

    @property
    def task(self):
        return task_for(self.cfg)


# --- which runs, under which names --------------------------------------------------------------------


def named_runs(specs: list[str]) -> list[tuple[str, Path]]:
    """`RUN` or `NAME=RUN` for each argument; every run finished, every name once."""
    named: list[tuple[str, Path]] = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        run = Path(path if sep else spec)
        name = name if sep else run.resolve().name
        if not name:
            raise LoralabError(f"serve: '{spec}' names no adapter: give NAME=RUN or the run directory alone")
        if not RunDir(run).summary.is_file() and not is_onnx_export(run):
            raise LoralabError(
                f"serve: {run} is neither a finished run (no summary.json) nor an ONNX export (no {ONNX_FILE}): "
                "train it, or name runs/NAME or an export folder"
            )
        if any(name == seen for seen, _ in named):
            raise LoralabError(f"serve: the adapter name '{name}' is given twice: name them apart, e.g. {name}-2={run}")
        named.append((name, run))
    return named


def sharing_problem(first: Adapter, other: Adapter, which: str) -> str | None:
    """Why `other` cannot be served beside `first` on one copy of the base model (None: it can)."""
    a, b = first.cfg, other.cfg
    for cfg, run in ((a, first.run), (b, other.run)):
        if cfg.model.finetune == "full":
            return f"{run} is a full fine-tuning (no adapter to put beside others): serve it alone"
        if cfg.lora.use_dora:
            return f"{run} uses DoRA, which PEFT cannot mix with other adapters in one batch: serve it alone"
        if cfg.lora.bias != "none":
            return f"{run} trained the base model's biases (lora.bias: {cfg.lora.bias}), shared here: serve it alone"
    both = f"{first.run} and {other.run}"
    if a.model.name != b.model.name:
        return f"{both} have different bases ({a.model.name}, {b.model.name}): run one server for each"
    if a.model.pooling != b.model.pooling:
        return f"{both} pool differently ({a.model.pooling}, {b.model.pooling}): run one server for each"
    if len(a.data.label_names) != len(b.data.label_names):  # a regression's one output is named too
        return f"{both} have heads of different sizes: run one server for each"
    mine, theirs = read_frozen(RunDir(first.run).adapter(which)), read_frozen(RunDir(other.run).adapter(which))
    if mine.keys() != theirs.keys() or any(not torch.equal(mine[k], theirs[k]) for k in mine):
        return (
            f"{both} were trained on different frozen random head weights (model.head: "
            f"{a.model.head}), which the base holds once: run one server for each"
        )
    return None


# --- the models -----------------------------------------------------------------------------------------


class Classifiers:
    """The served runs on one base, and the forward pass over a batch of rows for any of them."""

    def __init__(self, options: ServeOptions):
        set_threads(options.threads)
        runs = named_runs(options.runs)
        self.options = options
        self.adapters: dict[str, Adapter] = {}
        # Each ONNX export: a model of its own in ONNX Runtime.
        for name, path in runs:
            if is_onnx_export(path):
                engine = OnnxEngine(path, options.threads)
                group = ModelGroup(engine, mixed=False)
                self.adapters[name] = Adapter(name, path, engine.cfg, engine.decision, "default", group)
        trained = [(name, path) for name, path in runs if not is_onnx_export(path)]
        for i, (name, run) in enumerate(trained):
            store = RunDir(run)
            self.adapters[name] = Adapter(
                name, run, store.read_config(), store.read_decision(options.which), "default" if i == 0 else f"a{i}"
            )
        if trained:
            self._load_runs([self.adapters[name] for name, _ in trained])
        for adapter in self.adapters.values():
            adapter.info = adapter_info(adapter)

    def _load_runs(self, adapters: list[Adapter]) -> None:
        """The runs on one base: one copy of it, each adapter beside it (one run alone: merged)."""
        options = self.options
        first = adapters[0]
        for adapter in adapters[1:]:
            problem = sharing_problem(first, adapter, options.which)
            if problem:
                raise LoralabError(f"serve: {problem}")
        mixed = len(adapters) > 1
        cfg, tokenizer, model = load_trained(first.run, options.which, merged=not mixed, base_model=options.base_model)
        for adapter in adapters[1:]:
            model.load_adapter(RunDir(adapter.run).adapter(options.which), adapter_name=adapter.peft_name)
        group = ModelGroup(TorchEngine(cfg, first.decision, tokenizer, model, options.precision), mixed)
        for adapter in adapters:
            adapter.group = group

    def groups(self) -> list[ModelGroup]:
        return list({id(a.group): a.group for a in self.adapters.values()}.values())

    def encode(self, adapter: Adapter, texts: list[str], pairs: list[str] | None) -> Encoded:
        """Token ids as the run was trained (its own max_length); called off the event loop."""
        return adapter.group.engine.encode(texts, pairs, adapter.cfg.data.max_length)

    def answer(self, adapter: Adapter, logits: torch.Tensor, probabilities: bool) -> dict:
        scored = adapter.task.score(logits, adapter.decision)
        names = adapter.cfg.data.label_names
        out = {"labels": [adapter.task.answer(p, names) for p in scored.predictions]}
        if probabilities and adapter.task.probabilities:
            out["probabilities"] = [dict(zip(names, [round(x, 6) for x in row])) for row in scored.scores]
        return out


def adapter_info(adapter: Adapter) -> dict:
    """What /v1/adapters tells of one adapter: where it comes from, its task, how it runs, how it scored."""
    info = {
        "name": adapter.name,
        "run": str(adapter.run),
        "base": adapter.cfg.model.name,
        "task": adapter.cfg.data.task,
        "labels": adapter.cfg.data.label_names,
        **adapter.group.engine.describe(),
    }
    if is_onnx_export(adapter.run):  # its check against the run's adapter stands for the run's scores
        record = RunDir(adapter.run).path / EXPORT_RECORD
        check = json.loads(record.read_text()).get("check", {}) if record.exists() else {}
        return info | {"trainable": None, "metric": check.get("metric"), "export_check": check.get("export")}
    summary = RunDir(adapter.run).read_summary()
    return info | {
        "trainable": summary.trainable["total"] if summary.trainable else None,
        "metric": summary.metric,
        "peak_validation": summary.peak_value,
        "peak_validation_accuracy": summary.peak_val_accuracy,
    }


# --- batching: rows of requests that arrive together share a forward pass --------------------------------


@dataclass
class Pending:
    adapter: Adapter
    data: Encoded
    future: asyncio.Future


class Batcher:
    """Collects waiting requests for up to max_wait_ms or max_batch rows, then classifies them together on
    one thread of its own: one batch at a time (the forward pass itself uses every core), and always the
    same thread, so its memory is reused from one batch to the next instead of spread over the arenas
    glibc gives each thread (with a pool of threads, the resident size grew by 94% in a minute of load)."""

    def __init__(self, classifiers: Classifiers, metrics: Metrics):
        from concurrent.futures import ThreadPoolExecutor

        self.classifiers, self.metrics = classifiers, metrics
        self.queue: asyncio.Queue[Pending] = asyncio.Queue()
        self.waiting = 0  # rows accepted whose batch has not started computing: what --max-queue bounds
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loralab-forward")

    async def classify(self, adapter: Adapter, data: Encoded) -> torch.Tensor:
        """The logits of `data`'s rows; Overloaded at once where they would queue past --max-queue rows."""
        limit = self.classifiers.options.max_queue
        if self.waiting + len(data) > limit:
            raise Overloaded(f"{self.waiting:,} rows are waiting, at most {limit:,} (--max-queue): retry shortly")
        self.waiting += len(data)
        self.metrics.queue_rows.set(self.waiting)
        future = asyncio.get_running_loop().create_future()
        await self.queue.put(Pending(adapter, data, future))
        return await future

    async def _take(self) -> Pending:
        return await self.queue.get()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        options = self.classifiers.options
        while True:
            batch = [await self._take()]
            rows, deadline = len(batch[0].data), loop.time() + options.max_wait_ms / 1000
            while rows < options.max_batch and (left := deadline - loop.time()) > 0:
                try:
                    batch.append(await asyncio.wait_for(self._take(), left))
                except asyncio.TimeoutError:
                    break
                rows += len(batch[-1].data)
            self.waiting -= rows  # a batch gathering its rows still holds them: they leave the queue here
            self.metrics.queue_rows.set(self.waiting)
            try:
                answers = await loop.run_in_executor(self.thread, self._forward, batch)
            except Exception as err:  # noqa: BLE001 - each waiting request answers 500 with it; the server goes on
                answers = [err] * len(batch)
            for pending, answer in zip(batch, answers):
                if pending.future.done():  # a client that hung up: nobody waits for this answer
                    continue
                if isinstance(answer, Exception):
                    pending.future.set_exception(answer)
                else:
                    pending.future.set_result(answer)

    def _forward(self, batch: list[Pending]) -> list[torch.Tensor]:
        """Each request's logits; the rows of one model group in one pass (split by length and --max-tokens)."""
        self.metrics.batch_rows.observe(sum(len(p.data) for p in batch))
        out: list[torch.Tensor | None] = [None] * len(batch)
        for group in {id(p.adapter.group): p.adapter.group for p in batch}.values():
            members = [i for i, p in enumerate(batch) if p.adapter.group is group]
            parts = [batch[i].data for i in members]
            data = Encoded(
                [ids for part in parts for ids in part.input_ids],
                [],
                None if parts[0].token_type_ids is None else [t for part in parts for t in part.token_type_ids],
            )
            names = [batch[i].adapter.peft_name for i in members for _ in range(len(batch[i].data))]
            with torch.inference_mode():
                logits = group.logits(data, names, self.classifiers.options)
            start = 0
            for i in members:
                out[i] = logits[start : start + len(batch[i].data)]
                start += len(batch[i].data)
        release_freed_memory()  # the batch's activations, of a shape the next batch may not reuse
        return out


# --- metrics ------------------------------------------------------------------------------------------


class Metrics:
    """The server's Prometheus metrics, in a registry of its own (several servers in one test process)."""

    def __init__(self, max_batch: int):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "loralab_requests", "HTTP requests by path and status", ["path", "status"], registry=self.registry
        )
        self.rows = Counter("loralab_rows", "rows classified, by adapter", ["adapter"], registry=self.registry)
        buckets = sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, max_batch})
        self.batch_rows = Histogram(
            "loralab_batch_rows",
            "rows classified together, from however many requests",
            buckets=buckets,
            registry=self.registry,
        )
        self.latency = Histogram("loralab_request_seconds", "request latency", ["path"], registry=self.registry)
        self.queue_rows = Gauge("loralab_queue_rows", "rows waiting for a batch (--max-queue)", registry=self.registry)


# --- the HTTP application ---------------------------------------------------------------------------


class Overloaded(Exception):
    """More rows would wait than --max-queue allows: 503 with Retry-After, as TEI and infinity answer."""


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


def parse_request(raw: bytes, classifiers: Classifiers) -> tuple[Adapter, list[str], list[str] | None, bool]:
    """The request body checked: every problem a 4xx with one line naming it."""
    try:
        body = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise BadRequest(400, f"the body is not UTF-8 (byte {err.start}): send JSON in UTF-8") from None
    except json.JSONDecodeError as err:
        raise BadRequest(400, f"the body is not JSON ({err.msg} at line {err.lineno} column {err.colno})") from None
    if not isinstance(body, dict):
        raise BadRequest(422, 'the body must be a JSON object: {"adapter": NAME, "texts": [...]}')
    unknown = sorted(set(body) - {"adapter", "texts", "text_pairs", "probabilities"})
    if unknown:
        raise BadRequest(
            422, f"unknown field(s) {', '.join(map(repr, unknown))}: use adapter, texts, text_pairs, probabilities"
        )
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


def build_app(classifiers: Classifiers):
    """The FastAPI application over loaded classifiers."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect

    metrics = Metrics(classifiers.options.max_batch)
    batcher = Batcher(classifiers, metrics)

    batcher_task = None

    @asynccontextmanager
    async def lifespan(app):
        nonlocal batcher_task
        batcher_task = asyncio.create_task(batcher.run())
        yield
        batcher_task.cancel()  # uvicorn has answered every request in flight by now

    app = FastAPI(title="loralab", lifespan=lifespan)
    app.state.accepted = app.state.answered = 0  # requests taken in and answered: the shutdown line's truth

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

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

    @app.middleware("http")
    async def count(request: Request, call_next):
        start = time.perf_counter()
        app.state.accepted += 1
        response = await call_next(request)
        app.state.answered += 1
        path = request.url.path if request.url.path in PATHS else "other"
        metrics.requests.labels(path, str(response.status_code)).inc()
        metrics.latency.labels(path).observe(time.perf_counter() - start)
        return response

    @app.post("/v1/classify")
    async def classify(request: Request):
        try:
            adapter, texts, pairs, probabilities = parse_request(await request.body(), classifiers)
        except BadRequest as err:
            return error(err.status, str(err))
        except ClientDisconnect:  # closed before its body came (a read timeout, or the client left)
            return error(408, "the request's body did not arrive")
        data = await asyncio.to_thread(classifiers.encode, adapter, texts, pairs)
        try:
            logits = await batcher.classify(adapter, data)
        except Overloaded as err:
            return JSONResponse({"error": str(err)}, status_code=503, headers={"Retry-After": "1"})
        except Exception as err:  # noqa: BLE001 - the batch failed: this request says why, the server goes on
            return error(500, f"the batch holding this request failed: {type(err).__name__}: {err}")
        metrics.rows.labels(adapter.name).inc(len(texts))
        answer = {"adapter": adapter.name, **classifiers.answer(adapter, logits, probabilities)}
        return Response(strictjson.dumps(answer), media_type="application/json")

    @app.get("/v1/adapters")
    async def adapters():
        return {"adapters": [a.info for a in classifiers.adapters.values()]}

    @app.get("/healthz")
    async def healthz():
        """503 where the batcher is not running: a load balancer then stops sending here."""
        if batcher_task is None or batcher_task.done():
            failure = batcher_task.exception() if batcher_task and not batcher_task.cancelled() else None
            return error(503, f"the batcher is not running ({failure or 'stopped'})")
        return {"status": "ok", "adapters": len(classifiers.adapters)}

    @app.get("/metrics")
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


PATHS = {
    "/v1/classify": 'POST {"adapter": NAME, "texts": [...]}',
    "/v1/adapters": "GET",
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
    """Load the runs, then answer requests until Ctrl-C or SIGTERM (requests in flight are answered first)."""
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
    for group in classifiers.groups():  # how each model runs: engine, device, precision and why
        engine = group.engine
        served = ", ".join(a.name for a in classifiers.adapters.values() if a.group is group)
        log(f"  {served}: {engine.kind} on {engine.describe()['device']}, {engine.precision.line()}", flush=True)
    app = build_app(classifiers)
    config = uvicorn.Config(
        app, log_level="warning", timeout_graceful_shutdown=30, http=read_timeout_protocol(options.read_timeout)
    )
    # uvicorn answers the requests in flight on Ctrl-C or SIGTERM, then raises the signal again for the
    # caller: here that is the end of a clean stop (exit 0), not an interruption.
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    lost = app.state.accepted - app.state.answered
    if lost:
        log(f"stopped: {lost} of {app.state.accepted} requests were not answered", flush=True)
    else:
        log(f"stopped: every request was answered ({app.state.accepted})", flush=True)
