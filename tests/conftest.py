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
