"""Benchmarks (``python -m benchmarks.<name>``); reports in benchmarks/results/."""
import os

# numpy (loaded with torch) starts OpenBLAS worker threads that spin while idle: with
# ``--clock cpu`` (process CPU time) they were measured tripling every other 2 ms call of
# mmd_batched on one thread (6 ms instead of 2, wall time unchanged).  wae_fast never calls
# numpy's BLAS, so one OpenBLAS thread changes nothing else.  Set before numpy is imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
