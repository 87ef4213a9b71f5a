#!/usr/bin/env bash

#SBATCH -J dask-worker
#SBATCH -p regular
#SBATCH -A m1234
#SBATCH -n 1
#SBATCH --cpus-per-task=32
#SBATCH --mem=112G
#SBATCH -t 04:00:00
export OMP_NUM_THREADS=1
export OPENBLAS_NUM_THREADS=1
export MKL_NUM_THREADS=1
export NUMEXPR_NUM_THREADS=1
export VECLIB_MAXIMUM_THREADS=1
PYTHON -m distributed.cli.dask_worker SCHEDULER --name dummy-name --nthreads 1 --memory-limit 3.49GiB --nworkers 32 --nanny --death-timeout 60 --local-directory $TMPDIR
