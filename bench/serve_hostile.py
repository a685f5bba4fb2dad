"""`loralab serve` against hostile and excess load, over loopback: stalled connections, then a burst past the queue.

    python bench/serve_hostile.py RUN [--stalled 2000] [--read-timeout 10] [--max-queue 64]

1. Opens --stalled connections that stall (a third send nothing, a third half a request's headers, a third
   the headers and half a body), then times one good request beside them, and how long until the server
   has closed every stalled one (it should close each about --read-timeout seconds after it stalled).
2. A burst of 10x --max-queue rows at once (one text per request, as many client threads): every request
   must be answered 200 or 503 (none hanging); the server's resident memory is read before the burst and
   again after a few seconds of calm.

Prints the machine, then one JSON line per part, all measured in this one run.
"""

from __future__ import annotations

import argparse
import http.client
import json
import resource
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError("no VmRSS")


def classify(port: int, text: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    connection.request("POST", "/v1/classify", json.dumps({"texts": [text]}), {"Content-Type": "application/json"})
    status = connection.getresponse().status
    connection.close()
    return status


def stalled(port: int, count: int, read_timeout: float) -> dict:
    """`count` stalled connections; a good request timed beside them; when the last stalled one was closed."""
    starts = [
        b"",
        b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Ty",
        b'POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"texts": [',
    ]
    sockets = []
    opened = time.monotonic()
    for i in range(count):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(starts[i % 3])
        sockets.append(sock)
    began = time.monotonic()
    good = classify(port, "Stocks rallied as oil fell")
    good_s = time.monotonic() - began
    closed_after = []
    for sock in sockets:
        sock.settimeout(max(0.1, opened + read_timeout + 30 - time.monotonic()))
        try:
            while sock.recv(4096):
                pass
            closed_after.append(time.monotonic() - opened)
        except TimeoutError:
            pass
        sock.close()
    return {"stalled": count, "good_status": good, "good_seconds": round(good_s, 3),
            "closed": len(closed_after), "last_closed_after_s": round(max(closed_after, default=0), 1),
            "read_timeout_s": read_timeout}  # fmt: skip


def burst(port: int, pid: int, rows: int, texts: list[str]) -> dict:
    """`rows` single-text requests at once: 200 or 503 each, none hanging; memory before and after."""
    before = rss_mib(pid)
    statuses, hung = [], []
    lock = threading.Lock()

    def client(i: int) -> None:
        try:
            status = classify(port, texts[i % len(texts)])
        except (OSError, http.client.HTTPException) as err:
            hung.append(str(err))
            return
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(rows)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.monotonic() - began
    time.sleep(5)  # calm: what the burst's batches took is given back
    after = rss_mib(pid)
    return {"requests": rows, "ok_200": statuses.count(200), "shed_503": statuses.count(503),
            "other": len(statuses) - statuses.count(200) - statuses.count(503), "failed_or_hung": len(hung),
            "seconds": round(seconds, 1), "rss_before_mib": before, "rss_after_mib": after,
            "rss_growth": round(after / before - 1, 3)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a finished run (or an ONNX export)")
    parser.add_argument("--stalled", type=int, default=2000)
    parser.add_argument("--read-timeout", type=float, default=10.0)
    parser.add_argument("--max-queue", type=int, default=64)
    args = parser.parse_args()

    from loralab import hardware
    from loralab.data import load_labelled
    from loralab.runs.rundir import RunDir

    print(hardware.machine_line(), file=sys.stderr)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # this client holds --stalled sockets too
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    cfg = RunDir(Path(args.run)).read_config()
    texts = load_labelled(cfg.data.train, cfg.data).texts[:2000]
    command = [sys.executable, "-m", "loralab.cli", "serve", args.run, "--port", "0", "--read-timeout",
               str(args.read_timeout), "--max-queue", str(args.max_queue), "--max-texts", "1"]  # fmt: skip
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = server.stdout.readline()
    if not line.startswith("serving"):
        raise SystemExit(server.stderr.read()[-3000:])
    port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
    classify(port, texts[0])  # warm
    print(json.dumps({"part": "stalled", **stalled(port, args.stalled, args.read_timeout)}), flush=True)
    print(json.dumps({"part": "burst", **burst(port, server.pid, 10 * args.max_queue, texts)}), flush=True)
    server.terminate()
    print(server.communicate(timeout=60)[0].strip().splitlines()[-1], file=sys.stderr)


if __name__ == "__main__":
    main()
