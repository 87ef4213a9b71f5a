#!/usr/bin/env bash

#PBS -N dask-worker
#PBS -q workq
#PBS -A astro
#PBS -l select=1:ncpus=36:mem=180GB
#PBS -l walltime=04:00:00
export OMP_NUM_THREADS=1
export OPENBLAS_NUM_THREADS=1
export MKL_NUM_THREADS=1
export NUMEXPR_NUM_THREADS=1
export VECLIB_MAXIMUM_THREADS=1
PYTHON -m distributed.cli.dask_worker SCHEDULER --name dummy-name --nthreads 1 --memory-limit 4.66GiB --nworkers 36 --nanny --death-timeout 60
