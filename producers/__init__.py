"""Producers: read imagery, cut it into chips, encode the chips, write embedding products."""

from eoembed._optional import require

# Every producer reads rasters, encodes with torch and runs on MPI.COMM_WORLD (one rank without
# mpirun): without the `produce` extra, importing any of them says so once, here.
for _module in ("rasterio", "torch", "mpi4py"):
    require(_module, extra="produce")
del _module
