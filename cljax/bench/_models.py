"""The reference steps ``cljax bench`` measures methods against: a
hand-written JAX step and a plain PyTorch step of the same model.

Both take one SGD step of softmax cross-entropy on a batch already in memory,
with nothing of cljax's train step around it (no masks, no NaN check, no
method state), so the ratio of cljax's fine-tuning step to the JAX one is the
framework's overhead.
"""

from __future__ import annotations

import jax
import numpy as np
import optax

# name -> (input shape, classes, tasks) of the synthetic stream each model is
# timed on (Fashion-MNIST-shaped for the MLP and CNN, CIFAR-100-shaped for
# ResNet-32).
SHAPES = {"mlp": ((28, 28, 1), 10, 5), "cnn": ((28, 28, 1), 10, 5),
          "resnet32": ((32, 32, 3), 100, 10)}


def jax_step(model, lr: float):
  """``(step, state)``: a jitted SGD step on the functional model's own
  ``apply`` (BatchNorm statistics carried), ``state = (params, batch_stats,
  opt_state)``."""
  opt = optax.sgd(lr)

  def loss(params, batch_stats, x, y):
    (logits, _), stats = model.apply(params, batch_stats, x, train=True)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return ce, stats

  def step(state, x, y):
    params, batch_stats, opt_state = state
    grads, stats = jax.grad(loss, has_aux=True)(params, batch_stats, x, y)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), stats, opt_state

  params, stats = jax.tree.map(np.array, (model.params, model.batch_stats))
  return step, (params, stats, opt.init(params))


def torch_model(name: str, input_shape, num_classes: int, hidden):
  """The PyTorch twin of cljax's model ``name`` (same layers and widths)."""
  import torch
  from torch import nn
  h, w, c = input_shape
  if name == "mlp":
    sizes = (h * w * c, *hidden)
    layers = [nn.Flatten()]
    for a, b in zip(sizes[:-1], sizes[1:]):
      layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(sizes[-1], num_classes))
  if name == "cnn":
    return nn.Sequential(
        nn.Conv2d(c, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear((h // 4) * (w // 4) * 64, 128), nn.ReLU(),
        nn.Linear(128, num_classes))
  if name != "resnet32":
    raise ValueError(f"no PyTorch twin of model {name!r}")

  class Block(nn.Module):  # option-A shortcut, as cljax's resnet32
    def __init__(self, cin, cout, stride):
      super().__init__()
      self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
      self.b1 = nn.BatchNorm2d(cout)
      self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
      self.b2 = nn.BatchNorm2d(cout)
      self.stride, self.pad = stride, cout - cin

    def forward(self, x):
      out = self.b2(self.c2(torch.relu(self.b1(self.c1(x)))))
      if self.stride != 1 or self.pad:
        x = nn.functional.pad(x[:, :, ::self.stride, ::self.stride],
                              (0, 0, 0, 0, 0, self.pad))
      return torch.relu(out + x)

  blocks, cin = [], 16
  for stage, width in enumerate((16, 32, 64)):
    for b in range(5):
      blocks.append(Block(cin, width, 2 if stage and not b else 1))
      cin = width
  return nn.Sequential(nn.Conv2d(c, 16, 3, 1, 1, bias=False),
                       nn.BatchNorm2d(16), nn.ReLU(), *blocks,
                       nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                       nn.Linear(64, num_classes))


def torch_runner(name: str, input_shape, num_classes: int, hidden, x, y,
                 lr: float, backend: str):
  """``(run, info)``: a runner ``run(n)`` of ``n`` plain PyTorch SGD steps on
  ``x`` (NHWC, moved to NCHW) and ``y`` on the same kind of device as JAX's
  ``backend`` (``RuntimeError`` if torch has none: never a CPU step against
  a GPU one), with float32 matmuls in TF32 on a GPU as JAX's default
  precision does; ``info``: torch's version, device and that precision."""
  import torch
  device = {"cpu": "cpu", "gpu": "cuda"}.get(backend)
  if device is None or (device == "cuda" and not torch.cuda.is_available()):
    raise RuntimeError(f"torch {torch.__version__} has no {backend} device "
                       "here (install a build for it)")
  if device == "cuda":
    torch.set_float32_matmul_precision("high")  # TF32, as JAX's default
  torch.manual_seed(0)
  model = torch_model(name, input_shape, num_classes, hidden).to(device)
  opt = torch.optim.SGD(model.parameters(), lr=lr)
  xt = torch.from_numpy(np.array(x.transpose(0, 3, 1, 2))).to(device)
  yt = torch.from_numpy(y.astype(np.int64)).to(device)
  lossf = torch.nn.CrossEntropyLoss()

  def run(n):
    for _ in range(n):
      opt.zero_grad(set_to_none=True)
      lossf(model(xt), yt).backward()
      opt.step()
    if device == "cuda":
      torch.cuda.synchronize()

  return run, {"version": torch.__version__, "device": device,
               "float32_matmul_precision":
                   torch.get_float32_matmul_precision()}
