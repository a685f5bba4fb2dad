"""Batching: rows of requests that arrive together share a forward pass, on one thread of its own; the
queue is bounded (--max-queue), a failed batch answers its requests, and the metrics count what happens."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import torch

from ..allocator import release_freed_memory
from ..encoding import Encoded
from .models import Adapter, Classifiers


class Overloaded(Exception):
    """More rows would wait than --max-queue allows: 503 with Retry-After, as TEI and infinity answer."""


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

    async def on_forward_thread(self, work) -> None:
        """Run `work` on the forward thread, between two passes: what changes the models never meets one."""
        await asyncio.get_running_loop().run_in_executor(self.thread, work)

    def fail_waiting(self, err: Exception) -> None:
        """Answer every request still queued with `err` (the batcher stopped: nothing else will)."""
        while not self.queue.empty():
            pending = self.queue.get_nowait()
            if not pending.future.done():
                pending.future.set_exception(err)

    async def _take(self) -> Pending:
        return await self.queue.get()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        options = self.classifiers.options
        batch: list[Pending] = []
        try:
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
                # A request whose handler was cancelled holds its adapter no more: it may be removed by now.
                batch = [pending for pending in batch if not pending.future.done()]
                if not batch:
                    continue
                try:
                    answers = await loop.run_in_executor(self.thread, self._forward, batch)
                except Exception as err:  # noqa: BLE001 - each request of the batch answers 500 with it; it goes on
                    answers = [err] * len(batch)
                self._answer(batch, answers)
                batch = []
        except BaseException as err:  # the batcher itself stops: the batch in hand is answered, not left waiting
            self._answer(
                batch, [err if isinstance(err, Exception) else RuntimeError("the batcher stopped")] * len(batch)
            )
            raise

    @staticmethod
    def _answer(batch: list[Pending], answers: list) -> None:
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
            for i in members:  # each request's rows, and of them its own head's columns
                out[i] = logits[start : start + len(batch[i].data), : batch[i].adapter.outputs]
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
        self.adapter_latency = Histogram(
            "loralab_adapter_request_seconds", "classify latency by adapter", ["adapter"], registry=self.registry
        )
        self.adapters = Gauge("loralab_adapters", "adapters served", registry=self.registry)

    def forget(self, adapter: str) -> None:
        """A removed adapter's series, gone from /metrics (a name added again starts afresh)."""
        for metric in (self.rows, self.adapter_latency):
            try:
                metric.remove(adapter)
            except KeyError:  # it never answered a request
                pass
