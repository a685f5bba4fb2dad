"""`loralab serve` under load over loopback: one adapter, then --adapters (8) on one base, each request for a
random one; or (--onnx) the run served by PyTorch in fp32, then its ONNX fp32 and int8 exports; or (--live)
adapters added and removed while the server is under load.

    python bench/serve_load.py RUN [RUN ...] [--clients 16] [--seconds 60] [--texts 1] [--adapters 8]
    python bench/serve_load.py RUN --onnx       # PyTorch fp32 / ONNX fp32 / ONNX int8 servers, one after another
    python bench/serve_load.py RUN [RUN ...] --live   # p99 before, and while an adapter is added every second

For each setting, a fresh `loralab serve` process; --clients client threads send requests of --texts
rows (texts of the run's training data, drawn at random; pair runs get a second random text) for
--seconds, then stop. With fewer runs than --adapters, the adapters repeat them under other names: each
is loaded with its own weights and head (what memory and the mixed batches cost does not depend on the
values in them); runs of other tasks and label counts on the same base mix in the same passes
(bench/unlike_runs.py trains such a set). Prints one JSON line
per setting (rows/s, latency p50/p95/p99, errors, the server's resident memory after a warm-up at the
same load and at the end, how it ran: engine, device, precision) and one with the ratios, all measured
in this one run. The first line names the machine and its measured fp32 GEMM rate.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import signal
import statistics
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


TOKENS: dict[str, int] = {}  # each text's tokens as the run reads it: rows of pairs cost about twice


def served(port: int) -> dict[str, dict]:
    """GET /v1/adapters: each adapter's record by name."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("GET", "/v1/adapters")
    adapters = json.loads(connection.getresponse().read())["adapters"]
    connection.close()
    return {a["name"]: a for a in adapters}


def load(port: int, names: list[str], texts: list[str], clients: int, seconds: float, per_request: int) -> dict:
    pairs = {name for name, a in served(port).items() if a["text_pairs"]}
    latencies, errors, rows, tokens = [], [], [0], [0]
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client(seed: int) -> None:
        rng = random.Random(seed)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while time.perf_counter() < stop_at:
            name = rng.choice(names)
            request = {"adapter": name, "texts": rng.sample(texts, per_request)}
            size = sum(TOKENS[t] for t in request["texts"])
            if name in pairs:  # a pair reads both texts: about the two lengths (each within max_length)
                request["text_pairs"] = rng.sample(texts, per_request)
                size += sum(TOKENS[t] for t in request["text_pairs"])
            body = json.dumps(request)
            start = time.perf_counter()
            try:
                connection.request("POST", "/v1/classify", body=body, headers={"Content-Type": "application/json"})
                response = connection.getresponse()
                response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException) as err:
                ok, response = False, err
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            with lock:
                if ok:
                    latencies.append(time.perf_counter() - start)
                    rows[0] += per_request
                    tokens[0] += size
                else:
                    errors.append(str(getattr(response, "status", response)))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [float("nan")] * 99
    return {
        "requests": len(latencies),
        "rows_per_s": round(rows[0] / elapsed, 1),
        "tokens_per_s": round(tokens[0] / elapsed),
        "p50_ms": round(cuts[49] * 1000, 1),
        "p95_ms": round(cuts[94] * 1000, 1),
        "p99_ms": round(cuts[98] * 1000, 1),
        "errors": len(errors),
    }


def server_of(specs: list[str], args, extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen, int]:
    """A fresh `loralab serve` of `specs` (NAME=RUN or NAME=EXPORT) on a free port."""
    command = [sys.executable, "-m", "loralab.cli", "serve", *specs, "--port", "0", "--max-batch", str(args.max_batch),
               *extra]  # fmt: skip
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = server.stdout.readline()
    if not line.startswith("serving"):
        raise SystemExit(server.stderr.read()[-3000:])
    return server, int(line.split("http://127.0.0.1:")[1].split("/")[0])


def setting(specs: list[str], texts: list[str], args, extra: tuple[str, ...] = ()) -> dict:
    """A fresh server of `specs` under the load of `args`."""
    server, port = server_of(specs, args, extra)
    names = [spec.partition("=")[0] for spec in specs]
    adapters = served(port)
    first, tasks = adapters[names[0]], sorted({(a["task"], len(a["labels"])) for a in adapters.values()})
    # Warm-up at the same load: the memory "at the start" is that of a server already under this load (its
    # batches' working set), so the end is compared with it for growth, not with an idle server.
    load(port, names, texts, args.clients, args.warmup, args.texts)
    start_rss = rss_mib(server.pid)
    result = load(port, names, texts, args.clients, args.seconds, args.texts)
    end_rss = rss_mib(server.pid)
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=60)
    return {"adapters": len(specs), "clients": args.clients, "seconds": args.seconds, "texts_per_request": args.texts,
            **result, "rss_start_mib": start_rss, "rss_end_mib": end_rss, "engine": first["engine"],
            "device": first["device"], "precision": first["precision"]["used"],
            "tasks": tasks}  # fmt: skip


def onnx_settings(run: str, texts: list[str], args) -> None:
    """The run (PyTorch fp32) against its ONNX fp32 and int8 exports, each in a server of its own."""
    import tempfile

    from loralab.serving.export import ExportOptions, export_run

    with tempfile.TemporaryDirectory() as tmp:
        exports = {}
        for quantize in (None, "int8"):
            folder = Path(tmp) / f"onnx-{quantize or 'fp32'}"
            export_run(run, str(folder), ExportOptions(format="onnx", quantize=quantize, check=False))
            exports[quantize or "fp32"] = folder
        results = {
            "pytorch_fp32": setting([f"a={run}"], texts, args, ("--precision", "fp32")),
            "onnx_fp32": setting([f"a={exports['fp32']}"], texts, args),
            "onnx_int8": setting([f"a={exports['int8']}"], texts, args),
        }
    for way, result in results.items():
        print(json.dumps({"way": way, **result}), flush=True)
    rate = {way: r["rows_per_s"] for way, r in results.items()}
    print(json.dumps({"onnx_int8_vs_pytorch_fp32": round(rate["onnx_int8"] / rate["pytorch_fp32"], 2),
                      "onnx_fp32_vs_pytorch_fp32": round(rate["onnx_fp32"] / rate["pytorch_fp32"], 2),
                      "errors": sum(r["errors"] for r in results.values())}))  # fmt: skip


def admin(port: int, method: str, path: str, token: str, body: dict | None = None) -> tuple[int, float]:
    """An admin request: its status and seconds."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    start = time.perf_counter()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    connection.request(method, path, body=json.dumps(body) if body else None, headers=headers)
    response = connection.getresponse()
    response.read()
    connection.close()
    return response.status, time.perf_counter() - start


def live(specs: list[str], texts: list[str], args) -> None:
    """One server of `specs` with the admin endpoints: the load alone, then the same load while an adapter
    (each of the runs in turn, under a new name) is added every second and removed half a second later."""
    import secrets

    token = secrets.token_hex(16)
    root = Path(args.runs[0]).resolve().parent
    server, port = server_of(specs, args, ("--admin-token", token, "--runs-dir", str(root)))
    names = [spec.partition("=")[0] for spec in specs]
    load(port, names, texts, args.clients, args.warmup, args.texts)
    before = load(port, names, texts, args.clients, args.seconds, args.texts)
    changes, stop = [], threading.Event()

    def churn() -> None:
        i = 0
        while not stop.is_set():
            run = Path(args.runs[i % len(args.runs)]).resolve().relative_to(root)
            changes.append(("add", *admin(port, "POST", "/v1/adapters", token, {"run": str(run), "name": f"live{i}"})))
            stop.wait(0.5)
            changes.append(("remove", *admin(port, "DELETE", f"/v1/adapters/live{i}", token)))
            stop.wait(0.5)
            i += 1

    admin_thread = threading.Thread(target=churn)
    admin_thread.start()
    during = load(port, names, texts, args.clients, args.seconds, args.texts)
    stop.set()
    admin_thread.join()
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=60)
    adds = [seconds for kind, status, seconds in changes if kind == "add" and status == 201]
    print(json.dumps({"phase": "before", "adapters": len(specs), **before}), flush=True)
    print(json.dumps({"phase": "while adding", "adapters": len(specs), **during}), flush=True)
    print(json.dumps({"adds": len(adds), "removes": sum(1 for k, s, _ in changes if k == "remove" and s == 200),
                      "admin_errors": sum(1 for _, s, _ in changes if s not in (200, 201)),
                      "add_seconds_max": round(max(adds, default=float("nan")), 3),
                      "p99_while_adding_vs_before": round(during["p99_ms"] / before["p99_ms"], 2),
                      "rows_per_s_while_adding_vs_before": round(during["rows_per_s"] / before["rows_per_s"], 2),
                      "errors": before["errors"] + during["errors"]}))  # fmt: skip


def server_arguments(parser: argparse.ArgumentParser, adapters: int) -> None:
    """The runs, the clients, and the served adapters' count and batch: this bench's and serve_soak's."""
    parser.add_argument("runs", nargs="+", help="finished runs on one base")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--max-batch", type=int, default=32, help="the server's --max-batch")
    parser.add_argument("--adapters", type=int, default=adapters, help="adapters served (the runs repeated)")


def texts_of(run: str) -> list[str]:
    """The training texts of `run`, each text's token count noted (TOKENS) as the run reads it."""
    from loralab.data import load_labelled
    from loralab.modeling.model import load_tokenizer
    from loralab.runs.rundir import RunDir

    cfg = RunDir(Path(run)).read_config()
    texts = load_labelled(cfg.data.train, cfg.data).texts
    lengths = load_tokenizer(cfg.model.name)(texts, truncation=True, max_length=cfg.data.max_length)["input_ids"]
    TOKENS.update({text: len(ids) for text, ids in zip(texts, lengths)})
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    server_arguments(parser, adapters=8)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--warmup", type=float, default=10, help="seconds of the same load before measuring")
    parser.add_argument("--texts", type=int, default=1, help="texts per request (default 1)")
    parser.add_argument("--onnx", action="store_true", help="PyTorch fp32 against the run's ONNX fp32 and int8")
    parser.add_argument("--only-one", action="store_true", help="only the one-adapter server (precision auto)")
    parser.add_argument("--live", action="store_true", help="p99 before and while adapters are added and removed")
    args = parser.parse_args()

    from loralab import hardware

    print(f"{hardware.machine_line()}; fp32 GEMM {hardware.fp32_gemm_peak():.0f} GFLOP/s", file=sys.stderr)
    texts = texts_of(args.runs[0])
    if args.onnx:
        onnx_settings(args.runs[0], texts, args)
        return
    specs = [f"a{i}={args.runs[i % len(args.runs)]}" for i in range(args.adapters)]
    if args.live:
        live(specs, texts, args)
        return
    one = setting([f"a0={args.runs[0]}"], texts, args)
    print(json.dumps(one), flush=True)
    if args.only_one:
        return
    many = setting(specs, texts, args)
    print(json.dumps(many), flush=True)
    n = args.adapters
    print(
        json.dumps(
            {
                f"rows_per_s_{n}_mixed_vs_1": round(many["rows_per_s"] / one["rows_per_s"], 2),
                f"tokens_per_s_{n}_mixed_vs_1": round(many["tokens_per_s"] / one["tokens_per_s"], 2),
                f"rss_{n}_vs_1_at_start": round(many["rss_start_mib"] / one["rss_start_mib"], 3),
                "rss_growth_1": round(one["rss_end_mib"] / one["rss_start_mib"] - 1, 3),
                f"rss_growth_{n}": round(many["rss_end_mib"] / many["rss_start_mib"] - 1, 3),
                "errors": one["errors"] + many["errors"],
            }
        )
    )


if __name__ == "__main__":
    main()
