"""`loralab serve` under hostile and excess load, on real sockets: stalled clients are closed after the read
timeout, a burst past --max-queue is answered 503 at once, a failed batch is a 500 and the server goes on,
and /healthz sees the batcher."""

import http.client
import json
import socket
import threading
import time

import pytest
from conftest import call, start, stop, synthetic_rows, train_tiny

TEXTS = [text for _, text in synthetic_rows(8, seed=3)]


@pytest.fixture(scope="module")
def run(model_dirs, tiny_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("load-runs")
    train_tiny(model_dirs["roberta"], tiny_data, root, "one")
    return root / "one"


def test_stalled_connections_are_closed_after_the_read_timeout_and_good_requests_still_answered(run):
    process, port = start(str(run), "--read-timeout", "2")
    stalled = {"silent": [], "half headers": [], "half body": []}
    for _ in range(100):
        for kind in stalled:
            sock = socket.create_connection(("127.0.0.1", port))
            if kind == "half headers":
                sock.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Ty")
            elif kind == "half body":
                sock.sendall(b'POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"texts": [')
            stalled[kind].append(sock)
    opened = time.monotonic()
    started = time.monotonic()
    assert call(port, "POST", "/v1/classify", {"texts": TEXTS[:2]})[0] == 200
    assert time.monotonic() - started < 1.0  # beside 300 stalled connections
    for kind, sockets in stalled.items():
        for sock in sockets:
            sock.settimeout(max(0.1, opened + 8 - time.monotonic()))
            received = b""
            while chunk := sock.recv(4096):  # a server that holds the connection: socket.timeout fails the test
                received += chunk
            if kind == "silent":
                assert received == b""  # nothing begun: closed without a word
            else:
                assert received.startswith(b"HTTP/1.1 408") and b"read timeout" in received, (kind, received)
            sock.close()
    assert time.monotonic() - opened < 8  # every one closed about 2 s after it stalled
    assert call(port, "POST", "/v1/classify", {"texts": TEXTS[:2]})[0] == 200
    assert "every request was answered" in stop(process)


def classify(port: int, texts: list[str]) -> tuple[int, dict, str | None]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("POST", "/v1/classify", json.dumps({"texts": texts}), {"Content-Type": "application/json"})
    response = connection.getresponse()
    body = json.loads(response.read())
    connection.close()
    return response.status, body, response.getheader("Retry-After")


def test_a_burst_past_the_queue_is_answered_503_at_once_and_none_hangs(run):
    process, port = start(str(run), "--max-queue", "8", "--max-texts", "4", "--max-batch", "4",
                          "--max-wait-ms", "200")  # fmt: skip
    answers = []

    def client():
        started = time.monotonic()
        status, body, retry = classify(port, TEXTS[:4])
        answers.append((status, body, retry, time.monotonic() - started))

    clients = [threading.Thread(target=client) for _ in range(20)]  # 80 rows: 10x the queue
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join(timeout=120)
    assert len(answers) == 20 and {status for status, *_ in answers} == {200, 503}
    for status, body, retry, _ in answers:
        if status == 503:
            assert retry == "1" and "--max-queue" in body["error"]
        else:
            assert len(body["labels"]) == 4
    refused = [seconds for status, _, _, seconds in answers if status == 503]
    assert max(refused) < 5  # refused at once, not after the queue's work
    assert classify(port, TEXTS[:4])[0] == 200  # and served again once the burst is gone
    assert "every request was answered (21)" in stop(process)


@pytest.fixture
def in_process_server(run):
    """The server in this process (real uvicorn, real socket), so a test can make a batch fail."""
    import uvicorn

    from loralab.serving.serve import Classifiers, ServeOptions, build_app, listening_socket

    def serve(**options):
        classifiers = Classifiers(ServeOptions(runs=[str(run)], precision="fp32", **options))
        sock = listening_socket("127.0.0.1", 0)
        app = build_app(classifiers)
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        servers.append((server, thread))
        while not server.started:
            time.sleep(0.05)
        return classifiers, sock.getsockname()[1]

    servers = []
    yield serve
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=30)


def test_a_failed_batch_is_a_500_and_the_server_goes_on(in_process_server):
    classifiers, port = in_process_server(max_wait_ms=300)
    adapter = next(iter(classifiers.adapters.values()))
    group, boom = adapter.group, list(classifiers.encode(adapter, ["BOOM " * 20], None).input_ids[0])
    real = group.logits

    def fail_on_boom(data, names, options):  # a batch holding this text fails, as a real fault would
        if any(list(ids) == boom for ids in data.input_ids):
            raise RuntimeError("a forced failure")
        return real(data, names, options)

    group.logits = fail_on_boom
    status, body = call(port, "POST", "/v1/classify", {"texts": ["BOOM " * 20]})
    assert status == 500 and "RuntimeError: a forced failure" in body["error"]
    assert call(port, "GET", "/healthz")[0] == 200
    assert call(port, "POST", "/v1/classify", {"texts": TEXTS})[0] == 200


def test_a_request_given_up_while_its_batch_fails_leaves_the_batcher_running(in_process_server):
    """A request cancelled (its client gone) while its batch computes, and the batch then fails: the batcher
    must not trip over the answer nobody waits for, and answers the next batch. One given up before its
    batch starts is not computed at all."""
    import asyncio

    from loralab.serving.serve import Batcher, Metrics

    classifiers, _ = in_process_server()
    adapter = next(iter(classifiers.adapters.values()))
    real, calls = adapter.group.logits, []
    computing, cancelled = threading.Event(), threading.Event()

    def fail_once(data, names, options):
        calls.append(len(data))
        if len(calls) == 1:
            computing.set()
            assert cancelled.wait(30)
            raise RuntimeError("a forced failure")
        return real(data, names, options)

    adapter.group.logits = fail_once

    async def scenario():
        classifiers.options.max_wait_ms = 200
        batcher = Batcher(classifiers, Metrics(32))
        worker = asyncio.create_task(batcher.run())
        data = classifiers.encode(adapter, TEXTS[:2], None)
        kept = asyncio.create_task(batcher.classify(adapter, data))
        given_up = asyncio.create_task(batcher.classify(adapter, data))
        assert await asyncio.to_thread(computing.wait, 30)
        given_up.cancel()  # while its batch computes
        await asyncio.sleep(0)
        cancelled.set()
        with pytest.raises(RuntimeError, match="a forced failure"):
            await kept
        answer = await asyncio.wait_for(batcher.classify(adapter, data), 30)
        assert not worker.done() and answer.shape == (2, 4)
        early = asyncio.create_task(batcher.classify(adapter, data))
        await asyncio.sleep(0.05)
        early.cancel()  # while its batch still gathers rows: never computed
        answer = await asyncio.wait_for(batcher.classify(adapter, data), 30)
        worker.cancel()

    asyncio.run(scenario())
    assert calls == [4, 2, 2]


def test_healthz_sees_a_batcher_that_stopped(in_process_server, monkeypatch):
    from loralab.serving import serve as serve_module

    classifiers, port = in_process_server()
    assert call(port, "GET", "/healthz") == (200, {"status": "ok", "adapters": 1})

    async def broken(self):
        raise RuntimeError("the queue is gone")

    monkeypatch.setattr(serve_module.Batcher, "_take", broken)
    # The batcher waits in _take for the next request; a request wakes it into the broken call, and is
    # answered (200 from its batch, or 500 when the batcher stopped with it in hand), never left waiting.
    woken = []
    waker = threading.Thread(target=lambda: woken.append(call(port, "POST", "/v1/classify", {"texts": TEXTS[:1]})))
    waker.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and call(port, "GET", "/healthz")[0] == 200:
        time.sleep(0.1)
    status, body = call(port, "GET", "/healthz")
    assert status == 503 and "the batcher is not running (the queue is gone)" in body["error"]
    # Nothing would answer a request now: it is refused at once instead of waiting for ever.
    status, body = call(port, "POST", "/v1/classify", {"texts": TEXTS[:1]})
    assert status == 503 and "the batcher is not running" in body["error"]
    waker.join(timeout=30)
    assert woken and woken[0][0] in (200, 500)
