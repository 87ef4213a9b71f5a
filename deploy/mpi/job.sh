#!/bin/bash
# One allocation, no scheduler service: dask-mpi turns the MPI ranks into a Dask cluster for one pipeline run.
#SBATCH -J dzspec-mpi
#SBATCH -N 4
#SBATCH --ntasks-per-node=32
#SBATCH -t 04:00:00
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
srun python -m dzspec.parallel.mpi pipeline.toml --resume --no-progress
