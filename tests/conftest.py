import os

import pytest

from cljax.data import DEBIAN_FASHION_MNIST

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
