"""What this machine computes natively, decided in one place: the device, the precision `auto` resolves to
(and why), what an explicitly asked half precision costs where it is emulated, and the machine's name and
measured fp32 peak that every speed figure is printed beside.

bf16 pays only where the hardware multiplies it: a CPU with AVX512-BF16 or AMX, or a CUDA device that
supports it. Elsewhere (AVX2 laptops and VMs, most CPUs people own) oneDNN emulates it, and a matmul runs
many times slower than in fp32, silently. So `auto` takes bf16 only where it is native.
"""

from __future__ import annotations

import os
import platform
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from functools import cache

import torch

from .errors import warn

# CPU flags (Linux /proc/cpuinfo) that mean bf16 products in hardware: x86's AVX512-BF16 and AMX, Arm's BF16.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def device() -> torch.device:
    """Where models run: the first visible CUDA device, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as the kernel lists them (empty where there is no /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def native_bf16(where: torch.device) -> tuple[bool, str]:
    """Whether `where` multiplies bf16 in hardware, and what says so."""
    if where.type == "cuda":
        name = torch.cuda.get_device_name(where)
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return True, f"{name} computes bf16 natively"
        return False, f"{name} has no native bf16"
    found = sorted(NATIVE_BF16_FLAGS & cpu_flags())
    if found:
        return True, f"the CPU has {'/'.join(found)}"
    return False, f"the CPU ({torch.backends.cpu.get_cpu_capability()}) has no AVX512-BF16 or AMX: bf16 is emulated"


@dataclass(frozen=True)
class Precision:
    """A precision as resolved for one device: `asked` is the setting, `used` what runs, `reason` why."""

    asked: str
    used: str
    reason: str

    def record(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        return (
            f"precision {self.used} ({self.asked}: {self.reason})"
            if self.asked in ("auto", "trained")
            else (f"precision {self.used} ({self.reason})")
        )


def resolve(
    asked: str, where: torch.device | None = None, width: int | None = None, trained: str | None = None
) -> Precision:
    """`auto` -> bf16 where `where` computes it natively, else fp32 (fp16 only where asked). An explicit
    bf16/fp16 on a device that would emulate it still runs, after one warning with its measured cost
    (a matmul of the model's `width`, timed here).

    `trained` (a saved run's answers): the precision the run trained in (`trained`, what it used), kept where
    this device computes it natively, since only the same precision gives back the run's own numbers; where it
    is emulated here, or the run's record does not say, `auto` decides and the reason says so."""
    where = where or device()
    native, why = native_bf16(where)
    if asked == "trained":
        fp16 = where.type == "cuda" or bool({"avx512_fp16", "amx_fp16"} & cpu_flags())
        if {"fp32": True, "bf16": native, "fp16": fp16}.get(trained, False):
            said = f"the run trained in {trained}" + (f"; {why}" if trained == "bf16" else "")
            return Precision(asked, trained, said)
        chosen = resolve("auto", where)
        said = "the run's record does not say" if trained is None else f"the run trained in {trained}, emulated here"
        return Precision(asked, chosen.used, f"{said}: auto chose {chosen.used} ({chosen.reason})")
    if asked == "auto":
        return Precision(asked, "bf16" if native else "fp32", why)
    if asked == "bf16" and not native:
        slower = emulation_slowdown(width or 768, torch.bfloat16, where)
        warn(
            f"precision bf16: {why}; a matmul of this model's width ran {slower:.1f}x slower than fp32 here. "
            "precision auto (the default) or fp32 runs at full speed"
        )
    if asked == "fp16" and where.type == "cpu" and not {"avx512_fp16", "amx_fp16"} & cpu_flags():
        slower = emulation_slowdown(width or 768, torch.float16, where)
        warn(f"precision fp16 on a CPU: a matmul of this model's width ran {slower:.1f}x slower than fp32 here")
    return Precision(asked, asked, "set explicitly")


def resolve_compile(asked: str, where: torch.device) -> tuple[bool, str]:
    """train.compile on a device, and the first line that says what was chosen and why."""
    if asked == "auto":  # off until a measurement shows it pays (docs/benchmarks.md: compiling the step on an H200)
        if where.type == "cuda":
            return False, ("compile off (auto: on the GPU measured, an H200, compiling cost more time than it won "
                           "back in runs of 300 and 1,200 steps; train.compile=on compiles)")  # fmt: skip
        return False, "compile off (auto: on a CPU, compiling the step was not measured to pay)"
    return asked == "on", f"compile {asked} (set explicitly)"


def compile_step(model, where: torch.device):
    """The model compiled for training steps of a few fixed shapes (the length buckets): on CUDA with CUDA graphs
    (mode reduce-overhead), elsewhere inductor's fused kernels."""
    return torch.compile(model, mode="reduce-overhead" if where.type == "cuda" else None, dynamic=False)


def autocast_for(precision: str, where: torch.device):
    """The autocast context of a resolved precision on a device (nothing for fp32): the one context in which
    training's validation pass and every later answer of the run run, so both round alike."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if dtype is None:
        return nullcontext
    return lambda: torch.autocast(where.type, dtype=dtype)


def emulation_slowdown(width: int, dtype: torch.dtype, where: torch.device) -> float:
    """How many times slower a (256 x width) @ (width x width) matmul runs in `dtype` than in fp32 on
    `where`: tens of milliseconds even where the half precision is emulated."""
    a = torch.randn(256, width, device=where)
    b = torch.randn(width, width, device=where)

    def timed(x, y) -> float:
        x @ y  # warm-up: kernel selection and packing
        if where.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        x @ y
        if where.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    fp32 = timed(a, b)
    return timed(a.to(dtype), b.to(dtype)) / max(fp32, 1e-9)


def fp32_gemm_peak(width: int = 768, seconds: float = 1.0) -> float:
    """This machine's measured fp32 GEMM rate in GFLOP/s on the model's width (a 2048 x width by width x
    4*width product, the shape of a feed-forward layer over a batch), at the threads torch uses now: the
    roof that speed figures are put under, so figures of two machines compare."""
    where = device()
    a = torch.randn(2048, width, device=where)
    b = torch.randn(width, 4 * width, device=where)
    a @ b
    runs, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or runs < 3:
        a @ b
        if where.type == "cuda":
            torch.cuda.synchronize()
        runs += 1
    return 2 * 2048 * width * 4 * width * runs / elapsed / 1e9


def machine() -> dict:
    """The machine a figure was measured on: CPU model and capability, threads, accelerator, versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    except OSError:
        pass
    found = sorted({"avx2", "avx512f", "avx512_vnni", "avx_vnni", *NATIVE_BF16_FLAGS} & cpu_flags())
    try:
        import onnxruntime

        ort = onnxruntime.__version__
    except ImportError:
        ort = None
    return {
        "cpu": cpu,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_flags": found,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "onnxruntime": ort,
    }


def machine_line(info: dict | None = None) -> str:
    """The machine in one line, for the head of every benchmark's output."""
    info = info or machine()
    parts = [
        f"cpu {info['cpu']} ({info['cpu_capability']}; {' '.join(info['cpu_flags']) or 'no AVX2'})",
        f"{info['cores']} cores, torch threads {info['torch_threads']}",
        f"gpu {info['gpu']}" if info["gpu"] else "no gpu",
        f"torch {info['torch']}",
        f"onnxruntime {info['onnxruntime']}" if info["onnxruntime"] else "no onnxruntime",
    ]
    return "machine: " + ", ".join(parts)
