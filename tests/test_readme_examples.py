"""The README's Python examples run as written ("Python in five lines", "TRP in your own loop")."""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

import rankwise
from rankwise.layers.base import FactorizedLayer

README = Path(__file__).resolve().parents[1] / "README.md"


def section_code(title: str) -> str:
    """The first ```python block under the README heading `## {title}`."""
    text = README.read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    (code, *_) = re.findall(r"```python\n(.*?)```", text[start:end if end > 0 else None], re.S)
    return code


def run(code: str) -> dict:
    torch.manual_seed(0)
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)  # noqa: S102 - our own documentation
    return scope


def test_own_loop_example_runs_and_factorizes():
    scope = run(section_code("TRP in your own loop"))
    small, report, trp = scope["small"], scope["report"], scope["trp"]
    assert trp.trp_steps == len(scope["loader"])
    assert any(isinstance(m, FactorizedLayer) for m in small.modules())
    assert report["counting"]["rankwise"]["params_after"] < \
        report["counting"]["rankwise"]["params_before"]
    assert small(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_five_lines_example_halves_macs_and_reloads(tmp_path):
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        scope = run(section_code("Python in five lines"))
        again = rankwise.load(tmp_path / "r20-tucker2")
    finally:
        os.chdir(cwd)
    small, report, model = scope["small"], scope["report"], scope["model"]
    assert any(isinstance(m, FactorizedLayer) for m in small.modules())
    x = torch.randn(2, 3, 32, 32)
    small.eval()
    again.eval()
    assert torch.equal(small(x), again(x))
    assert report.model_macs_after <= 0.5 * report.model_macs_before
    assert report.model_params_after < sum(p.numel() for p in model.parameters())
