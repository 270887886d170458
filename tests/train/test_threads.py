"""Training threads: the number asked for, else the idle cores of this process's affinity."""

from __future__ import annotations

import pytest
import torch

import rankwise.train.threads as threads

HEAD = "cpu  100 0 100 800 0 0 0 0 0 0\n"


def _stat(tmp_path, busy: dict[int, int], idle: dict[int, int]):
    """A /proc/stat with per-CPU user and idle ticks."""
    path = tmp_path / f"stat{len(list(tmp_path.iterdir()))}"
    path.write_text(HEAD + "".join(f"cpu{c} {busy[c]} 0 0 {idle[c]} 0 0 0 0 0 0\n"
                                   for c in sorted(busy)) + "intr 1 2 3\nctxt 5\n")
    return path


@pytest.fixture
def two_cpus(monkeypatch, tmp_path):
    """CPUs 0 and 1 allowed; /proc/stat moves from `before` to `after` during the sample."""
    monkeypatch.setattr(threads, "allowed_cpus", lambda: {0, 1})
    files = {}

    def use(before, after):
        files["b"], files["a"] = _stat(tmp_path, *before), _stat(tmp_path, *after)
        monkeypatch.setattr(threads, "PROC_STAT", files["b"])
        monkeypatch.setattr(threads.time, "sleep",
                            lambda s: monkeypatch.setattr(threads, "PROC_STAT", files["a"]))
    return use


def test_a_core_busy_with_another_process_is_not_counted(two_cpus) -> None:
    start = ({0: 0, 1: 0}, {0: 0, 1: 0})
    two_cpus(start, ({0: 0, 1: 10}, {0: 10, 1: 0}))  # cpu1 busy the whole sample
    assert threads.free_cores() == 1
    two_cpus(start, ({0: 0, 1: 0}, {0: 10, 1: 10}))
    assert threads.free_cores() == 2
    two_cpus(start, ({0: 10, 1: 10}, {0: 0, 1: 0}))
    assert threads.free_cores() == 1  # never fewer than one


def test_set_threads_obeys_the_request_the_environment_and_the_free_cores(
        monkeypatch, two_cpus) -> None:
    old = torch.get_num_threads()
    try:
        assert threads.set_threads(2) == 2
        two_cpus(({0: 0, 1: 0}, {0: 0, 1: 0}), ({0: 0, 1: 10}, {0: 10, 1: 0}))
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert threads.set_threads(None) == 2  # the user's environment wins
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert threads.set_threads(None) == 1  # one core busy: one thread
    finally:
        torch.set_num_threads(old)


def test_unreadable_proc_stat_leaves_torch_alone(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(threads, "PROC_STAT", tmp_path / "missing")
    assert threads.free_cores() is None
