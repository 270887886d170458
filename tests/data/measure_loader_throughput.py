"""Manual measurement (not a test): BatchLoader images/s on CIFAR-10 (or synthetic) shapes.

Run: `OMP_NUM_THREADS=2 python tests/data/measure_loader_throughput.py [--synthetic]`.
"""

from __future__ import annotations

import argparse
import time

import torch

from rankwise.data import BatchLoader, load_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--synthetic", action="store_true", help="50k synthetic 3x32x32 images")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    if args.synthetic:
        ds = load_dataset("synthetic", True, size=50_000, shape=(3, 32, 32))
    else:
        ds = load_dataset("cifar10", True)
    for augment in (False, True):
        for batch_size in (128, 512):
            loader = BatchLoader(ds, batch_size, augment=augment, seed=0)
            rates, cpu_rates = [], []
            for epoch in range(args.epochs):
                loader.set_epoch(epoch)
                start, cpu, n = time.perf_counter(), time.process_time(), 0
                for _, y in loader:
                    n += len(y)
                rates.append(n / (time.perf_counter() - start))
                cpu_rates.append(n / max(time.process_time() - cpu, 1e-9))
            print(f"augment={augment!s:5} batch={batch_size:4}: best {max(rates):9,.0f} "
                  f"median {sorted(rates)[len(rates) // 2]:9,.0f} images/s wall, "
                  f"{max(cpu_rates):9,.0f} per CPU-second ({torch.get_num_threads()} threads; "
                  f"the machine is shared, so wall numbers vary with load)")


if __name__ == "__main__":
    main()
