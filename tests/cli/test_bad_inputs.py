"""The CLI's bad-input contract: exit code 2, ONE line on stderr naming the problem, no traceback;
Ctrl-C exits 130 quietly; `--debug` shows the traceback; JSON printed stays valid JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rankwise import io
from rankwise.cli import main
from rankwise.models import create_model

TRAIN = ["train", "--model", "lenet5", "--dataset", "synthetic", "--epochs", "1",
         "--limit-train", "32", "--limit-test", "16", "--quiet"]


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse exits instead of returning
        rc = e.code if isinstance(e.code, int) else 1
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped main()")
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def assert_one_line_error(rc: int, out: str, err: str, *words: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in out + err, err
    assert rc == 2, (rc, err)
    assert len(lines) == 1, err
    assert lines[0].startswith("rankwise"), lines[0]
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """lenet5 (1×28×28) saved with its dataset recorded."""
    root = tmp_path_factory.mktemp("bad_inputs")
    torch.manual_seed(0)
    meta = {"dataset": {"name": "synthetic", "kwargs": {"size": 32, "shape": [1, 28, 28],
                                                         "num_classes": 10, "seed": 0}}}
    io.save(create_model("lenet5"), root / "lenet", arch="lenet5", input_shape=(1, 28, 28),
            meta=meta)
    # The same weights recorded with the wrong input shape: the data will not fit the model.
    io.save(create_model("lenet5"), root / "wrong_shape", arch="lenet5", input_shape=(3, 32, 32),
            meta={"dataset": {"name": "synthetic", "kwargs": {}}})
    (root / "a_file").write_text("not a directory")
    (root / "foreign").mkdir()
    (root / "foreign" / "notes.txt").write_text("keep me")
    return root


def cases(root: Path) -> dict[str, tuple[list[str], tuple[str, ...]]]:
    """name → (argv, words the error line must contain)."""
    lenet, file = str(root / "lenet"), str(root / "a_file")
    out = str(root / "out")
    tampered = root / "tampered"
    if not tampered.exists():
        tampered.mkdir()
        for f in ("model.safetensors", "model.json"):
            (tampered / f).write_bytes((root / "lenet" / f).read_bytes())
        cfg = json.loads((tampered / "model.json").read_text())
        cfg["arch_kwargs"] = {"num_classes": 1_000_000}
        (tampered / "model.json").write_text(json.dumps(cfg))
    return {
        "train --warmup inf": ([*TRAIN, "--out", out, "--warmup", "inf"], ("--warmup", "inf")),
        "train --lr nan": ([*TRAIN, "--out", out, "--lr", "nan"], ("--lr",)),
        "train --out FILE": ([*TRAIN, "--out", file], ("--out",)),
        "train --device cuda": ([*TRAIN, "--out", out, "--device", "cuda"], ("cuda",)),
        "bench --seeds a": (["bench", "quick", "--seeds", "a"], ("--seeds",)),
        "bench --seeds 0,x": (["bench", "quick", "--seeds", "0,x"], ("--seeds",)),
        "bench --seeds ,": (["bench", "quick", "--seeds", ","], ("--seeds", "at least one")),
        "bench --methods foo": (["bench", "quick", "--methods", "foo"], ("--methods", "foo")),
        "bench --compare foo": (["bench", "--compare", "foo"], ("--compare", "trp")),
        "bench without a suite": (["bench"], ("SUITE", "--compare")),
        "load --input-shape mismatch": (["load", lenet, "--input-shape", "3,32,32"],
                                        ("--input-shape",)),
        "load tampered model.json": (["load", str(tampered)], ("shape",)),
        "load a file": (["load", file], ("model.json",)),
        "load --map-location cuda": (["load", lenet, "--map-location", "cuda"], ("cuda",)),
        "eval shape mismatch": (["eval", str(root / "wrong_shape"), "--device", "cpu",
                                 "--dataset", "synthetic", "--limit", "8"], ("--dataset",)),
        "eval --device cuda": (["eval", lenet, "--device", "cuda"], ("cuda",)),
        "compress --out FILE": (["compress", lenet, "--quantize", "int8", "--out", file],
                                ("--out",)),
        "compress --out foreign dir": (["compress", lenet, "--dataset", "synthetic",
                                        "--limit-test", "8", "--out", str(root / "foreign")],
                                       ("non-empty",)),
        "compress --prune nan": (["compress", lenet, "--prune", "magnitude:nan", "--out", out],
                                 ("--prune",)),
        "decompose --out FILE": (["decompose", "--model", "lenet5", "--out", file], ("--out",)),
        "decompose --min-saving inf": (["decompose", "--model", "lenet5", "--min-saving", "inf",
                                        "--out", out], ("--min-saving",)),
        "decompose --warmup inf": (["decompose", "--model", "lenet5", "--warmup", "inf",
                                    "--out", out], ("--warmup",)),
        "profile --min-run-time nan": (["profile", "lenet5", "--min-run-time", "nan"],
                                       ("--min-run-time",)),
        "profile --device gpu": (["profile", "lenet5", "--device", "gpu"], ("gpu",)),
        "profile --input-shape mismatch": (["profile", "lenet5", "--input-shape", "3,32,32",
                                            "--no-latency"], ()),
        "analyze unknown model": (["analyze", "no-such-model"], ("no-such-model",)),
        "sweep --ratios a": (["sweep", lenet, "--ratios", "a", "--out", out], ("a",)),
        "sweep --out FILE": (["sweep", lenet, "--out", file], ("--out",)),
    }


NAMES = ["train --warmup inf", "train --lr nan", "train --out FILE", "train --device cuda",
         "bench --seeds a", "bench --seeds 0,x", "bench --seeds ,", "bench --methods foo",
         "bench --compare foo", "bench without a suite", "load --input-shape mismatch",
         "load tampered model.json", "load a file", "load --map-location cuda",
         "eval shape mismatch", "eval --device cuda", "compress --out FILE",
         "compress --out foreign dir", "compress --prune nan", "decompose --out FILE",
         "decompose --min-saving inf", "decompose --warmup inf", "profile --min-run-time nan",
         "profile --device gpu", "profile --input-shape mismatch", "analyze unknown model",
         "sweep --ratios a", "sweep --out FILE"]


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_gives_one_line_and_exit_2(name, saved, capsys):
    if "cuda" in name and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    argv, words = cases(saved)[name]
    assert_one_line_error(*run(argv, capsys), *words)
    assert (saved / "foreign" / "notes.txt").read_text() == "keep me"
    assert (saved / "a_file").read_text() == "not a directory"


def test_every_case_is_listed(saved):
    assert sorted(cases(saved)) == sorted(NAMES)


def test_debug_shows_the_traceback(saved, capsys):
    rc, out, err = run(["--debug", "load", str(saved / "a_file")], capsys)
    assert rc == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("rankwise")
    rc, out, err = run(["load", str(saved / "a_file"), "--debug"], capsys)  # accepted anywhere
    assert rc == 2 and "Traceback" in err


def test_ctrl_c_exits_130_quietly(saved, capsys, monkeypatch):
    import rankwise.cli.load

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(rankwise.cli.load, "load_command", interrupted)
    rc, out, err = run(["load", str(saved / "lenet")], capsys)
    assert rc == 130
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "interrupted" in err


def test_eval_json_of_a_diverged_model_is_valid_json(tmp_path, capsys):
    model = create_model("lenet5")
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    meta = {"dataset": {"name": "synthetic", "kwargs": {"size": 16, "shape": [1, 28, 28],
                                                         "num_classes": 10, "seed": 0}}}
    io.save(model, tmp_path / "nan", arch="lenet5", input_shape=(1, 28, 28), meta=meta)
    rc, out, err = run(["eval", str(tmp_path / "nan"), "--device", "cpu", "--json"], capsys)
    assert rc == 0, err

    def refuse(token):
        raise AssertionError(f"invalid JSON token {token} in {out}")

    result = json.loads(out, parse_constant=refuse)
    assert result["loss"] is None and result["samples"] == 16
