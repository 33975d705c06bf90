"""Step timing: ``cljax bench`` and the helpers the scripts in
``benchmarks/`` share."""

from cljax.bench._suite import bench_group
from cljax.bench._suite import run_bench
from cljax.bench._timing import interleaved_medians
from cljax.bench._timing import machine
from cljax.bench._timing import method_state
from cljax.bench._timing import method_steps
from cljax.bench._timing import repeat
from cljax.bench._timing import train_steps
