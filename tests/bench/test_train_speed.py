"""`rankwise.bench.train_speed` on tiny settings: structure and bookkeeping, no timing claims."""

from __future__ import annotations

import json
import statistics

import pytest
import torch

from rankwise.bench.train_speed import (
    GOAL_OVERHEAD_PCT,
    ReferenceLoop,
    fashion_mnist_run,
    main,
    measure_augmentation_throughput,
    measure_train_throughput,
)
from rankwise.bench.train_speed_report import train_speed_markdown
from rankwise.data import make_synthetic
from rankwise.errors import DatasetNotFoundError

TINY = {"width": 2, "hidden": 8}  # smallcnn kwargs: a few hundred params


@pytest.fixture(scope="module")
def throughput():
    before = torch.get_num_threads()
    result = measure_train_throughput("smallcnn", batch_size=8, steps=3, threads=1, rounds=3,
                                      warmup_rounds=1, model_kwargs=TINY)
    assert torch.get_num_threads() == before  # the thread setting is restored
    assert (torch.tensor([1e-40]) * 1.0).item() != 0.0  # subnormals are no longer flushed
    return result


@pytest.fixture(scope="module")
def augmentation():
    return measure_augmentation_throughput(batch_size=16, size=40, rounds=3, threads=1)


def test_train_throughput_structure(throughput):
    t = throughput
    assert t["model"] == "smallcnn" and t["threads"] == 1 and t["augment"] is False
    assert t["flush_denormal"] is True
    assert t["model_kwargs"] == {"num_classes": 10, "in_channels": 1, **TINY}
    # both loops really ran: (warm-up + rounds) trainer epochs of `steps` steps, one more
    # reference round than trainer epochs (R T R T R T R T R)
    assert t["trainer_steps"] == (1 + 3) * 3
    assert t["reference_steps"] == (1 + 3 + 1) * 3
    assert len(t["trainer_round_s"]) == len(t["reference_round_s"]) == 3
    assert all(s > 0 for s in t["trainer_round_s"] + t["reference_round_s"])
    # the summary numbers follow from the per-round times
    images = 8 * 3
    assert t["trainer_images_per_s"] == pytest.approx(
        images / statistics.median(t["trainer_round_s"]))
    assert t["reference_images_per_s"] == pytest.approx(
        images / statistics.median(t["reference_round_s"]))
    ratios = [a / b for a, b in zip(t["trainer_round_s"], t["reference_round_s"], strict=True)]
    assert t["overhead_pct"] == pytest.approx(100 * (statistics.median(ratios) - 1))
    assert t["meets_goal"] == (t["overhead_pct"] <= GOAL_OVERHEAD_PCT)
    assert t["bookkeeping_s_per_epoch"] >= 0
    assert t["overhead_pct_full_epoch"] >= t["overhead_pct"]
    assert t["env"]["torch"] == torch.__version__
    json.dumps(t)


def test_reference_loop_trains():
    data = make_synthetic(True, size=64, shape=(1, 8, 8), num_classes=2, seed=0)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
    loop = ReferenceLoop(model, data, batch_size=16, lr=0.1, momentum=0.9, weight_decay=0.0)
    x = (data.images.float() - loop.mean) * loop.inv_std

    def loss() -> float:
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(model(x), data.labels))

    first = loss()
    assert loop.run(10) > 0  # 10 steps > one pass of 4 batches: the permutation wraps
    assert loop.steps_done == 10 and loss() < first


def test_augmentation_structure(augmentation):
    a = augmentation
    assert a["shape"] == [3, 32, 32] and a["threads"] == 1 and a["size"] == 40
    assert len(a["augment_round_s"]) == len(a["plain_round_s"]) == 3
    assert a["augment_images_per_s"] == pytest.approx(
        40 / statistics.median(a["augment_round_s"]))
    assert a["augment_us_per_image"] == pytest.approx(
        1e6 * (1 / a["augment_images_per_s"] - 1 / a["plain_images_per_s"]))


def test_markdown(throughput, augmentation):
    text = train_speed_markdown({"throughput": throughput, "augmentation": augmentation})
    assert "smallcnn" in text and "hand-written" in text
    assert f"{throughput['overhead_pct']:+.1f} %" in text
    assert f"{augmentation['augment_images_per_s']:,.0f}" in text
    assert "Fashion-MNIST" not in text
    assert train_speed_markdown({}).startswith("## Trainer speed")


def test_fashion_mnist_tiny_run(tmp_path, monkeypatch):
    monkeypatch.setenv("RANKWISE_OFFLINE", "1")  # a test never downloads
    try:
        r = fashion_mnist_run(epochs=1, batch_size=32, limit_train=128, limit_test=64,
                              threads=1, out_dir=tmp_path / "run", model_kwargs=TINY)
    except DatasetNotFoundError:
        pytest.skip("Fashion-MNIST is not installed")
    assert r["train_samples"] == 128 and r["test_samples"] == 64 and r["epochs"] == 1
    assert 0.0 <= r["test_acc"] <= 1.0 and r["wall_s"] > 0
    assert r["params"] < 5000 and (tmp_path / "run" / "model.json").is_file()
    text = train_speed_markdown({"fashion_mnist": r})
    assert "Fashion-MNIST" in text and f"{100 * r['test_acc']:.2f} %" in text


def test_main_writes_json_and_markdown(tmp_path, capsys):
    assert main(["--model", "smallcnn", "--batch-size", "8", "--steps", "2", "--rounds", "1",
                 "--threads", "1", "--no-augmentation", "--out", str(tmp_path)]) == 0
    saved = json.loads((tmp_path / "train_speed.json").read_text())
    assert set(saved) == {"throughput"} and saved["throughput"]["steps_per_round"] == 2
    assert (tmp_path / "train_speed.md").read_text() in capsys.readouterr().out
