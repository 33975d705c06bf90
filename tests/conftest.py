import os
import shutil
import tempfile

import pytest

# One persistent XLA compilation cache for the whole test run, shared by the
# xdist workers and the subprocesses tests start (both inherit this process's
# environment): many tests compile the same programs (same model, method and
# shapes), and a hit skips only XLA's backend compilation. Tracing still
# happens, so the compile-count tests (trace counters, ``_cache_size``) are
# unaffected. Fresh for each run and removed at its end.
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(
      prefix="cljax-test-xla-cache-")
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"

# Compilation, not execution, is most of this suite's time, and a third of
# it is LLVM optimising XLA:CPU's kernels (level 3 by default); the tests'
# programs are small, so they run about as fast unoptimised, and the suite
# takes about 30% less time at level 0 (level 1 saves nothing). The level
# is LLVM's: the HLO passes (fusion, layout) are the same, so only the
# machine code of the same kernels changes (rounding too, where LLVM would
# contract a multiply and an add into an FMA); a test comparing two programs
# compiles both at the same level.
# ``XLA_FLAGS=--xla_backend_optimization_level=3 python -m pytest`` runs it
# at XLA's default. Subprocesses inherit the flag (those that set their own
# XLA_FLAGS append to it).
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = " ".join(filter(None, (
      os.environ.get("XLA_FLAGS"), "--xla_backend_optimization_level=0")))


def pytest_unconfigure(config):
  if _OWN_CACHE and not hasattr(config, "workerinput"):
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


from cljax.data import DEBIAN_FASHION_MNIST  # noqa: E402

needs_fashion_mnist = pytest.mark.skipif(
    not os.path.isdir(DEBIAN_FASHION_MNIST),
    reason="Debian's dataset-fashion-mnist is not installed")


@pytest.fixture(scope="session")
def digits():
  from cljax.data import load_digits
  return load_digits()


@pytest.fixture(scope="session")
def fashion_mnist():
  if not os.path.isdir(DEBIAN_FASHION_MNIST):
    pytest.skip("Debian's dataset-fashion-mnist is not installed")
  from cljax.data import load_fashion_mnist
  return load_fashion_mnist()
