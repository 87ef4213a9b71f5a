"""Speed of the simulation kernels alone (no store, no cluster), one core and one BLAS thread.

Usage::

    python benchmarks/simulate_kernel_speed.py [--muse 4096] [--desi 1000]

Prints spectra per second per core for the MUSE simulator and targets per second (with their exposures) for the
DESI simulator, with default configurations and built-in ingredients; compare with benchmarks/simulate_scale.py,
which adds Zarr writes and the block runner.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from threadpoolctl import threadpool_limits

from dzspec.kernels.simulate.desi import DesiSimConfig, simulate_desi_block
from dzspec.kernels.simulate.muse import MuseSimConfig, simulate_muse_block


def rate(simulate, config, n: int) -> float:
    simulate(np.arange(8), 0, config, None)  # instrument set-up, cached per process
    t0 = time.perf_counter()
    simulate(np.arange(n), 1, config, None)
    return n / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--muse", type=int, default=4096, help="MUSE spectra to simulate")
    parser.add_argument("--desi", type=int, default=1000, help="DESI targets to simulate")
    args = parser.parse_args()
    with threadpool_limits(1):
        muse = rate(simulate_muse_block, MuseSimConfig(), args.muse)
        desi = rate(simulate_desi_block, DesiSimConfig(), args.desi)
    print(f"MUSE kernel: {muse:.0f} spectra/s/core; DESI kernel: {desi:.0f} targets/s/core "
          f"({DesiSimConfig().nexp} exposures each)")


if __name__ == "__main__":
    main()
