"""The precision `auto` resolves to, decided from what the CPU reports: the capability probe replaced both ways."""

import pytest
import torch

from loralab import hardware

CPU = torch.device("cpu")
AVX2_ONLY = frozenset({"sse4_2", "avx", "avx2", "fma"})


@pytest.mark.parametrize(
    "flags, used",
    [
        (AVX2_ONLY, "fp32"),  # a first-generation EPYC or a laptop: bf16 would be emulated
        (AVX2_ONLY | {"avx512f", "avx512bw", "avx512_vnni"}, "fp32"),  # AVX-512 without its bf16 extension
        (AVX2_ONLY | {"avx512f", "avx512_bf16"}, "bf16"),
        (AVX2_ONLY | {"amx_tile", "amx_bf16"}, "bf16"),
        (frozenset({"fp", "asimd", "bf16"}), "bf16"),  # Arm with BF16 (Graviton 3, Neoverse V1)
    ],
)
def test_auto_takes_bf16_only_where_the_cpu_multiplies_it(monkeypatch, capsys, flags, used):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: flags)
    precision = hardware.resolve("auto", CPU)
    assert (precision.asked, precision.used) == ("auto", used)
    assert ("emulated" in precision.reason) == (used == "fp32")
    assert capsys.readouterr().err == ""  # auto never warns: it chose the fast path


def test_bf16_asked_on_an_emulating_cpu_runs_after_one_line_with_its_measured_cost(monkeypatch, capsys):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: AVX2_ONLY)
    monkeypatch.setattr(hardware, "emulation_slowdown", lambda width, dtype, where: 6.5 if width == 384 else 0.0)
    precision = hardware.resolve("bf16", CPU, width=384)
    assert precision.used == "bf16"  # asked for: it still runs
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("loralab: warning: precision bf16:")
    assert "ran 6.5x slower than fp32 here" in err[0] and "precision auto" in err[0]
    monkeypatch.setattr(hardware, "cpu_flags", lambda: AVX2_ONLY | {"avx512_bf16"})
    assert hardware.resolve("bf16", CPU, width=384).used == "bf16"
    assert capsys.readouterr().err == ""  # native: nothing to warn of


def test_the_emulation_probe_times_a_real_matmul_in_well_under_a_second():
    import time

    start = time.perf_counter()
    slower = hardware.emulation_slowdown(768, torch.bfloat16, CPU)
    assert slower > 0 and time.perf_counter() - start < 5  # a 256x768 by 768x768 product, twice per precision


def test_the_machine_line_names_cpu_threads_and_versions():
    info = hardware.machine()
    line = hardware.machine_line(info)
    assert info["torch"] == torch.__version__ and info["torch_threads"] == torch.get_num_threads()
    assert line.startswith("machine: cpu ") and f"torch {torch.__version__}" in line
    assert f"torch threads {torch.get_num_threads()}" in line
