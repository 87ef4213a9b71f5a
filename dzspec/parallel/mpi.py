"""``python -m dzspec.parallel.mpi CONFIG [--resume|--overwrite]``: a pipeline in MPI batch mode with dask-mpi.

Every rank of an ``srun``/``mpirun`` launch runs this module: :func:`dask_mpi.initialize` makes rank 0 the scheduler
and ranks 2 and up workers (one thread each), and rank 1 carries on here as the client, runs the config's steps
(:func:`dzspec.parallel.pipeline.run_pipeline`) and then shuts the whole cluster down. The config's ``[cluster]``
must say ``kind = "mpi"``. Needs ``dask-mpi`` and ``mpi4py`` built against the site's MPI.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from dzspec.parallel.pipeline import ConfigError, load_config, run_pipeline


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dzspec.parallel.mpi", description=__doc__)
    parser.add_argument("config")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true")
    mode.add_argument("--overwrite", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    config = load_config(args.config)  # every rank checks it, so a bad config stops the launch at once
    if config.cluster.get("kind") != "mpi":
        raise ConfigError(f"{config.path}: 'cluster.kind' must be 'mpi' for MPI batch mode")
    try:
        import dask_mpi
    except ImportError:
        raise ImportError("MPI batch mode needs dask-mpi and mpi4py: pip install dask-mpi mpi4py") from None
    from distributed import Client

    from dzspec.cluster import WorkerTuning

    dask_mpi.initialize(nthreads=1, dashboard=False)  # ranks other than 1 stay inside until the run ends
    with Client() as client:
        client.register_plugin(WorkerTuning())
        run_pipeline(config, client, resume=args.resume, overwrite=args.overwrite,
                     progress=False if args.no_progress else None)  # None: bars only on a terminal
    return 0


if __name__ == "__main__":
    sys.exit(main())
