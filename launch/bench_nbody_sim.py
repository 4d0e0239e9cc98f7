"""The N-body integrators side by side: NumPy (scaleq.sources.nbody.simulate) against torch
(scaleq.sources.nbody_torch.simulate_torch) on the same initial states, best of --repeats.

    python launch/bench_nbody_sim.py                     # one thread, both published systems
    python launch/bench_nbody_sim.py --threads 2 --device cuda
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from scaleq.sources.nbody import draw_initial_states, protocol_params, simulate
from scaleq.sources.nbody_torch import simulate_torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"{'system':9s} {'bodies':>6s} {'traj':>5s} {'steps':>6s} {'numpy s':>8s} {'torch s':>8s} {'numpy/torch':>11s}")
    for system, count, steps in (("fastegnn", 50, 400), ("egnn", 500, 2000)):
        params = protocol_params(system, steps=steps)
        init = draw_initial_states(params, np.random.RandomState(43), count)
        numpy_s, torch_s = [], []
        for _ in range(args.repeats):  # alternate, so both see the same load
            start = time.perf_counter()
            simulate(params, init)
            numpy_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            simulate_torch(params, init, args.device)
            torch_s.append(time.perf_counter() - start)
        print(f"{system:9s} {params.num_particles:6d} {count:5d} {steps:6d} {min(numpy_s):8.2f} {min(torch_s):8.2f} "
              f"{min(numpy_s) / min(torch_s):11.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
