"""Networks (flax NNX): each exposes ``features(x, train)`` and a ``head``.

All take NHWC inputs. The head is a single linear layer at the stream's total
class count (see ``_heads.py`` for masking).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from cljax.models._pooling import max_pool_2x2


class Classifier(nnx.Module):
  """Base: ``__call__ = head(features(x))``."""

  def features(self, x, train: bool = False):
    raise NotImplementedError

  def __call__(self, x, train: bool = False):
    return self.head(self.features(x, train=train))


class MLP(Classifier):
  """Fully connected ReLU network on flattened inputs.

  ``MLP(784, (400, 400), 10)`` is the 784-400-400-10 network of the benchmarks;
  ``MLP(784, (100, 100), 10)`` the GEM paper's MNIST network.
  """

  def __init__(self, in_features: int, hidden: Sequence[int], num_classes: int,
               *, rngs: nnx.Rngs):
    sizes = (in_features, *hidden)
    self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs)
                            for a, b in zip(sizes[:-1], sizes[1:])])
    self.head = nnx.Linear(sizes[-1], num_classes, rngs=rngs)

  def features(self, x, train: bool = False):
    h = x.reshape(x.shape[0], -1)
    for layer in self.layers:
      h = jax.nn.relu(layer(h))
    return h


class ModularLinear(nnx.Module):
  """A layer of ``M`` modules, each a ReLU linear layer of ``units`` units
  on the same input, their outputs summed (PathNet, Fernando et al. 2017,
  sec. 2): ``h = sum_m relu(x W_m + b_m)``; ``kernel (M, in, units)``,
  ``bias (M, units)``, each module initialised as ``nnx.Linear``."""

  def __init__(self, in_features: int, units: int, modules: int, *,
               rngs: nnx.Rngs):
    init = nnx.initializers.lecun_normal()
    self.kernel = nnx.Param(jax.vmap(lambda k: init(k, (in_features, units)))(
        jax.random.split(rngs.params(), modules)))
    self.bias = nnx.Param(jnp.zeros((modules, units)))

  def __call__(self, x):
    z = jnp.einsum("bi,miu->bmu", x, self.kernel[...]) + self.bias[...]
    return jnp.sum(jax.nn.relu(z), axis=1)


class ModularMLP(Classifier):
  """PathNet's super network of fully connected modules: hidden layer
  ``l`` is ``modules`` modules of ``hidden[l] // modules`` ReLU units each
  (``ModularLinear``), so it has the MLP's units per layer; the head reads
  the last layer's summed modules."""

  def __init__(self, in_features: int, hidden: Sequence[int], num_classes: int,
               *, modules: int = 10, rngs: nnx.Rngs):
    units = [h // modules for h in hidden]
    if min(units) < 1:
      raise ValueError(f"model.hidden {tuple(hidden)}: every layer needs at "
                       f"least {modules} units ({modules} modules)")
    sizes = (in_features, *units)
    self.layers = nnx.List([ModularLinear(a, b, modules, rngs=rngs)
                            for a, b in zip(sizes[:-1], sizes[1:])])
    self.head = nnx.Linear(sizes[-1], num_classes, rngs=rngs)

  def features(self, x, train: bool = False):
    h = x.reshape(x.shape[0], -1)
    for layer in self.layers:
      h = layer(h)
    return h


class CNN(Classifier):
  """Small CNN: two 3x3 conv + ReLU + 2x2 max-pool blocks, then a dense layer."""

  def __init__(self, in_channels: int, num_classes: int, *,
               channels: Sequence[int] = (32, 64), dense: int = 128,
               spatial: int = 28, rngs: nnx.Rngs):
    chans = (in_channels, *channels)
    self.convs = nnx.List([nnx.Conv(a, b, (3, 3), rngs=rngs)
                           for a, b in zip(chans[:-1], chans[1:])])
    side = spatial
    for _ in channels:
      side //= 2
    self.dense = nnx.Linear(side * side * chans[-1], dense, rngs=rngs)
    self.head = nnx.Linear(dense, num_classes, rngs=rngs)

  def features(self, x, train: bool = False):
    h = x
    for conv in self.convs:
      h = max_pool_2x2(jax.nn.relu(conv(h)))
    return jax.nn.relu(self.dense(h.reshape(h.shape[0], -1)))


def _bn(features, rngs):
  # PyTorch's BatchNorm2d defaults (momentum 0.1 of the new statistic), and
  # its two-pass variance mean((x - mean)^2): flax's default, E[x^2] -
  # E[x]^2 clamped at 0, cancels in float32 for channels whose mean is large
  # against their spread, so data-parallel steps (each device's moments,
  # averaged) departed from one device's by up to 6% in a gradient.
  return nnx.BatchNorm(features, momentum=0.9, epsilon=1e-5,
                       use_fast_variance=False, rngs=rngs)


class BasicBlock(nnx.Module):
  """Two 3x3 conv-BN layers with a residual connection (He et al. 2016).

  ``shortcut="A"``: parameter-free (subsample and zero-pad channels), as in the
  CIFAR ResNets; ``"B"``: 1x1 conv + BN projection when the shape changes.
  """

  def __init__(self, cin: int, cout: int, stride: int, shortcut: str, *,
               rngs: nnx.Rngs):
    conv = lambda a, b, s: nnx.Conv(a, b, (3, 3), strides=s, padding=1,
                                    use_bias=False, rngs=rngs)
    self.conv1, self.bn1 = conv(cin, cout, stride), _bn(cout, rngs)
    self.conv2, self.bn2 = conv(cout, cout, 1), _bn(cout, rngs)
    self.stride, self.pad = stride, cout - cin
    self.project = shortcut == "B" and (stride != 1 or cin != cout)
    if self.project:
      self.proj = nnx.Conv(cin, cout, (1, 1), strides=stride, use_bias=False,
                           rngs=rngs)
      self.proj_bn = _bn(cout, rngs)

  def __call__(self, x, train: bool):
    ura = not train
    h = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=ura))
    h = self.bn2(self.conv2(h), use_running_average=ura)
    if self.project:
      x = self.proj_bn(self.proj(x), use_running_average=ura)
    elif self.stride != 1 or self.pad:
      x = x[:, ::self.stride, ::self.stride, :]
      x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, self.pad)))
    return jax.nn.relu(h + x)


class ResNet(Classifier):
  """A ResNet of ``BasicBlock`` stages and a global average pool. Its stem:
  ``"cifar"``, one 3x3 conv (the CIFAR ResNets); ``"imagenet"``, a 7x7
  stride-2 conv and a 3x3 stride-2 max-pool (He et al. 2016, Table 1)."""

  def __init__(self, in_channels: int, num_classes: int, *,
               widths: Sequence[int], blocks: Sequence[int], shortcut: str,
               stem: str = "cifar", rngs: nnx.Rngs):
    if stem not in ("cifar", "imagenet"):
      raise ValueError(f"stem must be 'cifar' or 'imagenet', got {stem!r}")
    self.pool = stem == "imagenet"
    self.stem = (nnx.Conv(in_channels, widths[0], (7, 7), strides=2,
                          padding=3, use_bias=False, rngs=rngs) if self.pool
                 else nnx.Conv(in_channels, widths[0], (3, 3), padding=1,
                               use_bias=False, rngs=rngs))
    self.stem_bn = _bn(widths[0], rngs)
    layers, cin = [], widths[0]
    for stage, (width, n) in enumerate(zip(widths, blocks)):
      for b in range(n):
        stride = 2 if stage > 0 and b == 0 else 1
        layers.append(BasicBlock(cin, width, stride, shortcut, rngs=rngs))
        cin = width
    self.blocks = nnx.List(layers)
    self.head = nnx.Linear(cin, num_classes, rngs=rngs)

  def features(self, x, train: bool = False):
    h = jax.nn.relu(self.stem_bn(self.stem(x), use_running_average=not train))
    if self.pool:
      h = nnx.max_pool(h, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    for block in self.blocks:
      h = block(h, train)
    return h.mean(axis=(1, 2))


def resnet32(in_channels: int, num_classes: int, *, rngs: nnx.Rngs) -> ResNet:
  """ResNet-32 for CIFAR (He et al. 2016, sec. 4.2: 6n+2 layers, n=5; widths
  16/32/64, option-A shortcuts), as used by iCaRL, E2EIL and UCIR."""
  return ResNet(in_channels, num_classes, widths=(16, 32, 64), blocks=(5, 5, 5),
                shortcut="A", rngs=rngs)


def resnet18(in_channels: int, num_classes: int, *, rngs: nnx.Rngs) -> ResNet:
  """ResNet-18 for ImageNet (He et al. 2016, Table 1): the 7x7 stem and
  max-pool, widths 64/128/256/512, two blocks a stage, 1x1 projection
  shortcuts (11,689,512 parameters at 1,000 classes, as torchvision's), as
  used by UCIR, PODNet and PyCIL on ImageNet-100."""
  return ResNet(in_channels, num_classes, widths=(64, 128, 256, 512),
                blocks=(2, 2, 2, 2), shortcut="B", stem="imagenet", rngs=rngs)


def reduced_resnet18(in_channels: int, num_classes: int, *, nf: int = 20,
                     rngs: nnx.Rngs) -> ResNet:
  """The GEM paper's reduced ResNet-18 (Lopez-Paz & Ranzato 2017, CIFAR-100):
  ResNet-18 with ``nf=20`` base filters (widths 20/40/80/160), 1x1 projection
  shortcuts, stride-1 stem."""
  return ResNet(in_channels, num_classes, widths=(nf, 2 * nf, 4 * nf, 8 * nf),
                blocks=(2, 2, 2, 2), shortcut="B", rngs=rngs)
