from rankwise.bench.overhead import measure_overheads, overhead_markdown


def test_overhead_rows_cover_every_method_and_count_macs():
    rows = measure_overheads("resnet20", batch_size=4, rounds=1, warmup=0, threads=1)
    by = {r["setup"]: r for r in rows}
    assert by["dense SGD"]["wall_vs_dense"] == 1.0
    assert {"TRP (m=1, λ=3e-4)", "SFW spectral-K-support"} <= set(by)
    # Dense-shaped methods keep the dense MACs; ELRT's are cut to ~its budget (or below).
    assert by["TRP (m=1, λ=3e-4)"]["macs_x"] == 1.0
    assert 1.9 <= by["ELRT tucker2 2× MACs"]["macs_x"] <= 2.6
    assert 3.8 <= by["ELRT tucker2 4× MACs"]["macs_x"] <= 5.0
    assert by["ELRT tucker2 4× MACs"]["params"] < by["dense SGD"]["params"] / 2
    md = overhead_markdown(rows)
    assert md.count("\n") == len(rows) + 2
