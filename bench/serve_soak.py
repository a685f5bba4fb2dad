"""`loralab serve` held under load for a stated time: does its memory level off, and its latency stay?

    python bench/serve_soak.py RUN [RUN ...] --minutes 10 [--clients 16] [--adapters 32] [--out soak]

One fresh server of --adapters adapters (the runs repeated under other names, each loaded with its own weights
and head, as bench/serve_load.py does) with the admin endpoints on. --clients client threads send one text per
request to a random adapter; meanwhile an adapter is added every few seconds and removed again, and about 1% of
the requests are hostile (not JSON, a text over --max-chars, a body cut off and its connection closed, headers
that stall past the read timeout). Every --every seconds it samples the server's resident memory, rows/s, p99
latency and errors; the idle server's memory is measured before the load. Prints one JSON line per sample and
a summary (the end's memory against the first minute's, the plateau against the idle server, the end's p99
against the first minute's, errors other than those the hostile requests earn), and draws OUT.png.
"""

from __future__ import annotations

import argparse
import http.client
import json
import secrets
import signal
import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from serve_load import admin, load, rss_mib, server_arguments, server_of, texts_of  # noqa: E402 - shared pieces


def hostile(port: int, stop: threading.Event, every: float, counts: dict) -> None:
    """One hostile request every `every` seconds, of four kinds in turn; counts what each was answered."""
    kinds = ["not-json", "oversized", "cut-off", "stalled"]
    i = 0
    while not stop.wait(every):
        kind = kinds[i % len(kinds)]
        i += 1
        try:
            if kind in ("not-json", "oversized"):
                body = b"{not json" if kind == "not-json" else json.dumps({"texts": ["x" * 70_000]}).encode()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                connection.request("POST", "/v1/classify", body=body, headers={"Content-Type": "application/json"})
                status = connection.getresponse().status
                connection.close()
            else:
                sock = socket.create_connection(("127.0.0.1", port), timeout=60)
                head = b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                if kind == "cut-off":  # half a body, then gone
                    sock.sendall(head + b"Content-Length: 100\r\n\r\n" + b'{"texts": ["a')
                    status = "closed"
                else:  # half the headers, then silence until the server closes it
                    sock.sendall(head[:30])
                    sock.settimeout(60)
                    status = "408" if b"408" in sock.recv(1024) else "closed by server"
                sock.close()
        except OSError as err:
            status = type(err).__name__
        counts[f"{kind} {status}"] = counts.get(f"{kind} {status}", 0) + 1


def churn(port: int, token: str, run: str, stop: threading.Event, every: float, changes: list) -> None:
    """An adapter added every `every` seconds and removed half way to the next."""
    i = 0
    while not stop.is_set():
        changes.append(admin(port, "POST", "/v1/adapters", token, {"run": run, "name": f"soak{i}"})[0])
        if stop.wait(every / 2):
            break
        changes.append(admin(port, "DELETE", f"/v1/adapters/soak{i}", token)[0])
        stop.wait(every / 2)
        i += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    server_arguments(parser, adapters=32)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--every", type=float, default=10, help="seconds between samples")
    parser.add_argument("--churn", type=float, default=4, help="seconds between an adapter's additions (0: none)")
    parser.add_argument("--hostile", type=float, default=0.01, help="share of requests that are hostile (0: none)")
    parser.add_argument("--out", default="soak", help="the figure's path, without .png")
    args = parser.parse_args()

    from loralab import hardware

    print(hardware.machine_line(), file=sys.stderr, flush=True)
    texts = texts_of(args.runs[0])

    token = secrets.token_hex(16)
    root = Path(args.runs[0]).resolve().parent
    specs = [f"a{i}={args.runs[i % len(args.runs)]}" for i in range(args.adapters)]
    server, port = server_of(specs, args, ("--admin-token", token, "--runs-dir", str(root)))
    names = [spec.partition("=")[0] for spec in specs]
    time.sleep(2)
    idle = rss_mib(server.pid)

    stop, changes, counts = threading.Event(), [], {}
    helpers = []
    if args.churn > 0:
        run = str(Path(args.runs[0]).resolve().relative_to(root))
        helpers.append(threading.Thread(target=churn, args=(port, token, run, stop, args.churn, changes)))
    samples, started = [], time.perf_counter()
    while time.perf_counter() - started < args.minutes * 60:
        window = load(port, names, texts, args.clients, args.every, 1)
        if not samples:  # after the first window, whose rate sets how often a hostile request goes
            if args.hostile > 0:
                every = 1 / max(args.hostile * window["rows_per_s"], 1e-3)
                helpers.append(threading.Thread(target=hostile, args=(port, stop, every, counts)))
            for helper in helpers:
                helper.start()
        sample = {"t_s": round(time.perf_counter() - started), "rss_mib": rss_mib(server.pid), **window}
        samples.append(sample)
        print(json.dumps(sample), flush=True)
    stop.set()
    for helper in helpers:
        helper.join()
    server.send_signal(signal.SIGTERM)
    out, _ = server.communicate(timeout=120)

    minute = [s for s in samples if s["t_s"] <= 60] or samples[:1]
    summary = {
        "idle_rss_mib": idle,
        "rss_after_first_minute_mib": minute[-1]["rss_mib"],
        "rss_end_mib": samples[-1]["rss_mib"],
        "rss_end_vs_first_minute": round(samples[-1]["rss_mib"] / minute[-1]["rss_mib"], 3),
        "plateau_vs_idle": round(max(s["rss_mib"] for s in samples) / idle, 3),
        "p99_end_vs_first_minute": round(samples[-1]["p99_ms"] / minute[-1]["p99_ms"], 2),
        "rows_per_s_mean": round(sum(s["rows_per_s"] for s in samples) / len(samples), 1),
        "errors": sum(s["errors"] for s in samples),  # the clients' requests: none is hostile
        "adapter_changes": len(changes),
        "adapter_change_failures": sum(1 for status in changes if status not in (200, 201)),
        "hostile": counts,
        "stopped": out.strip().splitlines()[-1] if out.strip() else None,
    }
    print(json.dumps(summary), flush=True)
    draw(samples, idle, f"{args.out}.png", f"{args.adapters} adapters, {args.clients} clients")


def draw(samples: list[dict], idle: float, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t_s"] for s in samples]
    figure, axes = plt.subplots(3, 1, figsize=(7, 7), sharex=True)
    axes[0].plot(t, [s["rss_mib"] for s in samples], marker="o")
    axes[0].axhline(idle, linestyle="--", color="grey", label="idle server")
    axes[0].set_ylabel("resident MiB")
    axes[0].legend()
    axes[1].plot(t, [s["rows_per_s"] for s in samples], marker="o")
    axes[1].set_ylabel("rows/s")
    axes[2].plot(t, [s["p99_ms"] for s in samples], marker="o")
    axes[2].set_ylabel("p99 ms")
    axes[2].set_xlabel("seconds under load")
    axes[0].set_title(f"loralab serve soak: {title}")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
