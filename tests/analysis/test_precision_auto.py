"""`--precision auto`: bf16 autocast only where the CPU computes bf16 natively; a warning when
bf16 is asked for on a CPU that emulates it."""

from __future__ import annotations

import json
import warnings

import pytest

import rankwise.analysis.precision as precision
from rankwise.analysis.precision import emulated_bf16, native_bf16, resolve_precision
from rankwise.errors import EmulatedPrecisionWarning
from rankwise.train import TrainConfig

AVX2 = {"fpu", "sse2", "avx", "avx2", "fma"}


@pytest.mark.parametrize(("flags", "native"), [
    (AVX2, False), (AVX2 | {"avx512f", "avx512bw"}, False), (AVX2 | {"avx512_bf16"}, True),
    (AVX2 | {"amx_bf16", "amx_tile"}, True), ({"fp", "asimd", "bf16"}, True)])
def test_auto_is_bf16_only_with_native_bf16_instructions(monkeypatch, flags, native) -> None:
    monkeypatch.setattr(precision, "_cpu_flags", lambda: set(flags))
    assert native_bf16("cpu") is native
    assert resolve_precision("auto", "cpu") == ("bf16" if native else "fp32")
    assert resolve_precision("bf16", "cpu") == "bf16" and resolve_precision("fp32") == "fp32"
    assert TrainConfig(precision="auto").precision == ("bf16" if native else "fp32")
    assert (emulated_bf16("bf16", "cpu") is None) is native
    assert emulated_bf16("fp32", "cpu") is None


def test_cpu_flags_are_read_from_proc_cpuinfo_here() -> None:
    flags = precision._cpu_flags()
    if flags is None:
        pytest.skip("no /proc/cpuinfo on this system")
    assert flags and native_bf16("cpu") is any(f in flags for f in precision.BF16_CPU_FLAGS)


def test_training_in_emulated_bf16_warns_once_in_one_cli_line(monkeypatch, tmp_path,
                                                              capsys) -> None:
    from rankwise.cli import main

    monkeypatch.setattr(precision, "_cpu_flags", lambda: set(AVX2))
    args = ["train", "--model", "lenet5", "--dataset", "synthetic", "--synthetic-size", "32",
            "--epochs", "1", "--batch-size", "32", "--schedule", "none", "--quiet"]
    assert main([*args, "--precision", "bf16", "--out", str(tmp_path / "bf16")]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert err == [f"rankwise train: warning: {emulated_bf16('bf16', 'cpu')}"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", EmulatedPrecisionWarning)
        assert main([*args, "--precision", "auto", "--out", str(tmp_path / "auto")]) == 0
    config = json.loads((tmp_path / "auto" / "config.json").read_text())
    assert config["train"]["precision"] == "fp32"  # what ran, not "auto"


def test_suites_ask_for_auto_and_the_quick_report_says_what_it_became() -> None:
    from rankwise.bench.cifar10 import suite_rows
    from rankwise.bench.quick import SUITES
    from rankwise.bench.report import suite_header

    trainings = [s for r in suite_rows() for s in r.steps if s.argv[0] in ("train", "decompose")]
    for step in trainings:
        assert step.argv[step.argv.index("--precision") + 1] == "auto", step.out
    settings = {"train_options": dict(SUITES["quick"].train_options)}
    header = suite_header("quick", [{"params": {"settings": settings},
                                     "env": {"precision_auto": "fp32"}}])
    assert "training in auto: fp32;" in header


@pytest.mark.parametrize(("flags", "warns"), [(AVX2, True), (AVX2 | {"amx_bf16"}, False)])
def test_timing_bf16_on_a_cpu_that_emulates_it_warns(monkeypatch, flags, warns) -> None:
    from torch import nn

    from rankwise.analysis.latency import measure_latency

    monkeypatch.setattr(precision, "_cpu_flags", lambda: set(flags))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        measure_latency(nn.Linear(4, 4), (4,), 1, min_run_time=0.001, precision="bf16")
        measure_latency(nn.Linear(4, 4), (4,), 1, min_run_time=0.001, precision="fp32")
    emulated = [str(w.message) for w in seen if w.category is EmulatedPrecisionWarning]
    assert len(emulated) == int(warns)
    assert all("emulated kernels' times" in m for m in emulated)


def test_a_run_started_by_auto_resumes_in_its_own_precision_elsewhere(monkeypatch, tmp_path,
                                                                      capsys) -> None:
    from rankwise.cli import main

    args = ["train", "--model", "lenet5", "--dataset", "synthetic", "--synthetic-size", "32",
            "--batch-size", "32", "--schedule", "none", "--quiet", "--out", str(tmp_path / "r")]
    monkeypatch.setattr(precision, "_cpu_flags", lambda: AVX2 | {"avx512_bf16"})
    assert main([*args, "--precision", "auto", "--epochs", "1"]) == 0  # a bf16 machine
    monkeypatch.setattr(precision, "_cpu_flags", lambda: set(AVX2))  # then an AVX2 one
    capsys.readouterr()
    assert main([*args, "--precision", "fp32", "--epochs", "2", "--resume"]) == 2
    assert "precision" in capsys.readouterr().err  # an explicit other precision is refused
    assert main([*args, "--precision", "auto", "--epochs", "2", "--resume"]) == 0
    assert "warning: precision bf16" in capsys.readouterr().err  # continues in bf16, says so
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["train"]["precision"] == "bf16"
    assert TrainConfig(precision="auto").precision == "fp32"  # a new run here: fp32
