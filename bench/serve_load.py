"""`loralab serve` under load over loopback: one adapter, then 8 on one base, each request for a random one;
or (--onnx) the run served by PyTorch in fp32, then its ONNX fp32 and int8 exports.

    python bench/serve_load.py RUN [RUN ...] [--clients 16] [--seconds 60] [--texts 1]
    python bench/serve_load.py RUN --onnx       # PyTorch fp32 / ONNX fp32 / ONNX int8 servers, one after another

For each setting, a fresh `loralab serve` process; --clients client threads send requests of --texts
rows (texts of the run's training data, drawn at random) for --seconds, then stop. With fewer than 8
runs, the 8 adapters repeat them under 8 names: 8 adapters are loaded, each its own weights and head
(what memory and the mixed batches cost does not depend on the values in them). Prints one JSON line
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


def load(port: int, names: list[str], texts: list[str], clients: int, seconds: float, per_request: int) -> dict:
    latencies, errors, rows = [], [], [0]
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client(seed: int) -> None:
        rng = random.Random(seed)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while time.perf_counter() < stop_at:
            body = json.dumps({"adapter": rng.choice(names), "texts": rng.sample(texts, per_request)})
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
        "p50_ms": round(cuts[49] * 1000, 1),
        "p95_ms": round(cuts[94] * 1000, 1),
        "p99_ms": round(cuts[98] * 1000, 1),
        "errors": len(errors),
    }


def setting(specs: list[str], texts: list[str], args, extra: tuple[str, ...] = ()) -> dict:
    """A fresh server of `specs` (NAME=RUN or NAME=EXPORT) under the load of `args`."""
    command = [sys.executable, "-m", "loralab.cli", "serve", *specs, "--port", "0", "--max-batch", str(args.max_batch),
               *extra]  # fmt: skip
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = server.stdout.readline()
    if not line.startswith("serving"):
        raise SystemExit(server.stderr.read()[-3000:])
    port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
    names = [spec.partition("=")[0] for spec in specs]
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("GET", "/v1/adapters")
    served = json.loads(connection.getresponse().read())["adapters"][0]
    connection.close()
    # Warm-up at the same load: the memory "at the start" is that of a server already under this load (its
    # batches' working set), so the end is compared with it for growth, not with an idle server.
    load(port, names, texts, args.clients, args.warmup, args.texts)
    start_rss = rss_mib(server.pid)
    result = load(port, names, texts, args.clients, args.seconds, args.texts)
    end_rss = rss_mib(server.pid)
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=60)
    return {"adapters": len(specs), "clients": args.clients, "seconds": args.seconds, "texts_per_request": args.texts,
            **result, "rss_start_mib": start_rss, "rss_end_mib": end_rss, "engine": served["engine"],
            "device": served["device"], "precision": served["precision"]["used"]}  # fmt: skip


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="finished runs on one base")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--warmup", type=float, default=10, help="seconds of the same load before measuring")
    parser.add_argument("--texts", type=int, default=1, help="texts per request (default 1)")
    parser.add_argument("--max-batch", type=int, default=32, help="the server's --max-batch")
    parser.add_argument("--onnx", action="store_true", help="PyTorch fp32 against the run's ONNX fp32 and int8")
    parser.add_argument("--only-one", action="store_true", help="only the one-adapter server (precision auto)")
    args = parser.parse_args()

    from loralab import hardware
    from loralab.data import load_labelled
    from loralab.runs.rundir import RunDir

    print(f"{hardware.machine_line()}; fp32 GEMM {hardware.fp32_gemm_peak():.0f} GFLOP/s", file=sys.stderr)
    cfg = RunDir(Path(args.runs[0])).read_config()
    texts = load_labelled(cfg.data.train, cfg.data).texts
    if args.onnx:
        onnx_settings(args.runs[0], texts, args)
        return
    one = setting([f"a0={args.runs[0]}"], texts, args)
    print(json.dumps(one), flush=True)
    if args.only_one:
        return
    eight = setting([f"a{i}={args.runs[i % len(args.runs)]}" for i in range(8)], texts, args)
    print(json.dumps(eight), flush=True)
    print(
        json.dumps(
            {
                "rows_per_s_8_mixed_vs_1": round(eight["rows_per_s"] / one["rows_per_s"], 2),
                "rss_8_vs_1_at_start": round(eight["rss_start_mib"] / one["rss_start_mib"], 3),
                "rss_growth_1": round(one["rss_end_mib"] / one["rss_start_mib"] - 1, 3),
                "rss_growth_8": round(eight["rss_end_mib"] / eight["rss_start_mib"] - 1, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
