"""Benchmark: how many synthetic phantoms per second one CPU core renders at 128 px.

The synthetic clinics must stay cheap enough to generate on the fly (the target is at least 500
images/s on one core), so this prints the figure rather than asserting it in a timed test.
The one-core figure is CPU time of a single-threaded process, which other processes on a shared
machine do not distort; wall-clock time is printed beside it.
Run: `python -m experiments.phantom_throughput [--count N] [--size PX] [--repeats R]`.
"""

from __future__ import annotations

import argparse
import os

# One core: BLAS and torch must not fan out, and the variables only count before numpy loads.
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_variable] = "1"

import time  # noqa: E402

import torch  # noqa: E402

from hxr_model.data.phantoms import generate_phantoms, site_style  # noqa: E402


def measure(count: int, size: int, repeats: int) -> tuple[float, float]:
    """Best-of-`repeats` (CPU, wall) images per second for batches of `count` phantoms from a
    non-neutral site, so blur, heel effect and marker are all exercised."""
    style = site_style(1)
    generate_phantoms(min(count, 32), size, seed=0, style=style)  # warm caches and lookup tables
    cpu, wall = float("inf"), float("inf")
    for repeat in range(repeats):
        cpu_start, wall_start = time.process_time(), time.perf_counter()
        generate_phantoms(count, size, seed=repeat, style=style)
        cpu = min(cpu, time.process_time() - cpu_start)
        wall = min(wall, time.perf_counter() - wall_start)
    return count / cpu, count / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cpu_rate, wall_rate = measure(args.count, args.size, args.repeats)
    print(
        f"synthetic phantoms: {cpu_rate:.0f} images/s at {args.size} px on one core "
        f"(CPU time; wall clock {wall_rate:.0f} images/s)"
    )


if __name__ == "__main__":
    main()
