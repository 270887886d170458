"""`rankwise bench cifar10 --action run`: a queue that runs each unfinished step once, after
the runs it reads, with `--resume` for stopped trainings, skipping steps another queue holds."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from rankwise.bench.cifar10 import suite_rows
from rankwise.bench.cifar10_queue import run_queue, runnable
from rankwise.train.rundir import RunLock

ROWS = suite_rows(("r20",), schedule="cpu60")
MARKERS = {s.out: s.done for r in ROWS for s in r.steps}


class FakeCli:
    """Stands in for `python -m rankwise ARGV`: writes the step's marker file (and a TRP
    run's report), records the calls, fails the runs named in `fail`."""

    def __init__(self, runs: Path, fail: Sequence[str] = ()) -> None:
        self.runs, self.fail, self.calls = runs, set(fail), []

    def __call__(self, argv: Sequence[str]) -> int:
        self.calls.append(list(argv))
        out = Path(argv[list(argv).index("--out") + 1])
        assert out.parent == self.runs
        if out.name in self.fail:
            return 2
        out.mkdir(parents=True, exist_ok=True)
        if "trp" in argv:
            counts = {"macs_after": 1000, "macs_before": 4000}
            (out / "trp_report.json").write_text(json.dumps({"counting": {"rankwise": counts}}))
        (out / MARKERS[out.name]).write_text("{}")
        return 0


def _order(cli: FakeCli) -> list[str]:
    return [Path(c[c.index("--out") + 1]).name for c in cli.calls]


def test_every_step_runs_once_after_the_runs_it_reads(tmp_path: Path) -> None:
    cli = FakeCli(tmp_path)
    ran = run_queue(ROWS, tmp_path, execute=cli, log=lambda _: None)
    order = _order(cli)
    assert sorted(order) == sorted(MARKERS) and len(order) == len(set(order))
    assert all(rc == 0 for rc in ran.values())
    assert order.index("r20-dense-cpu60") < order.index("r20-decomp-nc-ft-cpu60")
    assert order.index("r20-dense-cpu60") < order.index("r20-trpnu-nc-ft-cpu60")  # --init
    assert order.index("r20-sfw-ksup-cpu60") < order.index("r20-sfw-ksup-cpu60-sweep")
    assert order.index("r20-decomp-vh-ft-cpu60") < order.index("r20-pipeline-cpu60")
    matched = cli.calls[order.index("r20-decomp-nc-ft-at-trpnu-nc-cpu60")]
    assert order.index("r20-trpnu-nc-cpu60") < order.index("r20-decomp-nc-ft-at-trpnu-nc-cpu60")
    assert "budget:macs=0.2500" in matched and not any("{" in a for a in matched)
    assert run_queue(ROWS, tmp_path, execute=cli, log=lambda _: None) == {}  # all done


def test_a_stopped_training_resumes_and_a_failed_step_blocks_only_its_dependents(
        tmp_path: Path) -> None:
    (tmp_path / "r20-elrt-2x-cpu60").mkdir()
    (tmp_path / "r20-elrt-2x-cpu60" / "checkpoint.pt").write_bytes(b"")
    cli = FakeCli(tmp_path, fail=["r20-dense-cpu60"])
    ran = run_queue(ROWS, tmp_path, execute=cli, log=lambda _: None)
    assert ran["r20-dense-cpu60"] == 2 and _order(cli).count("r20-dense-cpu60") == 1
    elrt = cli.calls[_order(cli).index("r20-elrt-2x-cpu60")]
    assert elrt[-1] == "--resume"
    assert "--resume" not in cli.calls[_order(cli).index("r20-elrt-4x-cpu60")]
    assert "r20-decomp-nc-ft-cpu60" not in ran and "r20-dense-cpu60-sweep" not in ran
    assert "r20-trpnu-nc-cpu60" in ran and "r20-decomp-nc-ft-at-trpnu-nc-cpu60" not in ran
    waiting = {r.step.out for r in runnable(ROWS, tmp_path)}
    assert waiting == {"r20-dense-cpu60"}  # what is left can only start once dense exists


def test_short_steps_go_before_full_trainings(tmp_path: Path) -> None:
    dense = tmp_path / "r20-dense-cpu60"
    dense.mkdir()
    (dense / MARKERS[dense.name]).write_text("{}")
    kinds = [r.step.argv[0] for r in runnable(ROWS, tmp_path)]
    assert "train" in kinds and {"decompose", "sweep"} <= set(kinds)
    assert kinds == sorted(kinds, key=lambda k: k == "train")  # every training after the rest
    cli = FakeCli(tmp_path)
    run_queue(ROWS, tmp_path, execute=cli, log=lambda _: None)
    assert cli.calls[0][0] in ("decompose", "sweep")  # the dense run's steps did not wait


def test_a_run_another_process_writes_is_left_to_it(tmp_path: Path) -> None:
    from rankwise.bench.cifar10_queue import being_written

    dense = tmp_path / "r20-dense-cpu60"
    dense.mkdir()
    (dense / MARKERS[dense.name]).write_text("{}")
    assert not being_written(tmp_path / "r20-decomp-vh-ft-cpu60")
    assert not (tmp_path / "r20-decomp-vh-ft-cpu60").exists()  # looking creates nothing
    cli = FakeCli(tmp_path)
    # a training left running by a stopped queue, and a decomposition fine-tuning by hand
    with RunLock(tmp_path / "r20-trp-vh-cpu60"), \
            RunLock(tmp_path / "r20-decomp-vh-ft-cpu60" / "finetune"):
        assert being_written(tmp_path / "r20-trp-vh-cpu60")
        ran = run_queue(ROWS, tmp_path, execute=cli, log=lambda _: None)
    assert "r20-trp-vh-cpu60" not in ran and "r20-decomp-vh-ft-cpu60" not in ran
    assert "r20-trpnu-vh-cpu60" in ran and all(rc == 0 for rc in ran.values())
    assert not being_written(tmp_path / "r20-trp-vh-cpu60")  # released: the next queue runs it


def test_a_decomposition_stopped_while_fine_tuning_resumes(tmp_path: Path) -> None:
    dense = tmp_path / "r20-dense-cpu60"
    dense.mkdir()
    (dense / MARKERS[dense.name]).write_text("{}")
    stopped = tmp_path / "r20-decomp-vh-ft-cpu60" / "finetune"
    stopped.mkdir(parents=True)
    (stopped / "checkpoint.pt").write_bytes(b"")
    cli = FakeCli(tmp_path)
    run_queue(ROWS, tmp_path, execute=cli, log=lambda _: None)
    order = _order(cli)
    assert "r20-dense-cpu60" not in order
    assert cli.calls[order.index("r20-decomp-vh-ft-cpu60")][-1] == "--resume"
    assert "--resume" not in cli.calls[order.index("r20-decomp-nc-ft-cpu60")]  # never started


def test_a_step_another_queue_holds_is_left_to_it(tmp_path: Path) -> None:
    cli = FakeCli(tmp_path)
    with RunLock(tmp_path / "r20-dense-cpu60.queue"):
        ran = run_queue(ROWS, tmp_path, execute=cli, log=lambda _: None)
    assert "r20-dense-cpu60" not in ran and "r20-decomp-vh-ft-cpu60" not in ran
    assert "r20-trp-vh-cpu60" in ran
    assert not (tmp_path / ".r20-trp-vh-cpu60.queue.lock").exists()  # claims are released


def test_cli_runs_the_queue_in_subprocesses_and_exits_1_when_a_step_failed(
        tmp_path: Path, monkeypatch, capsys) -> None:
    import rankwise.bench.cifar10_queue as queue
    from rankwise.cli import main

    assert queue._subprocess(["bench", "cifar10", "--action", "commands", "--models", "r20"]) == 0
    cli = FakeCli(tmp_path, fail=["r20-elrt-4x-cpu60"])
    monkeypatch.setattr(queue, "_subprocess", cli)
    assert main(["bench", "cifar10", "--action", "run", "--models", "r20", "--schedule", "cpu60",
                 "--out", str(tmp_path), "--results", str(tmp_path / "none")]) == 1
    assert "r20-elrt-4x-cpu60: failed (exit 2)" in capsys.readouterr().err
    assert (tmp_path / "r20-pipeline-cpu60" / "report.json").is_file()
