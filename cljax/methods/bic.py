"""BiC: large scale incremental learning with a bias-correction layer (Wu et
al. 2019)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cljax import _validate
from cljax._distributed import one_device
from cljax.data._streamed import materialise
from cljax import memory as mem
from cljax.data._datasets import Split
from cljax.losses import masked_cross_entropy
from cljax.methods._distilled_rehearsal import DistilledRehearsal
from cljax.methods._rehearsal import group_rows
from cljax.models import bias_correct, mask_logits
from cljax.regularizers import check_strength


def fit_bias_layer(logits, labels, valid, active, new, alpha, beta,
                   reg: float = 0.1, steps: int = 30):
  """BiC's stage 2 (Wu et al. 2019): the ``(a, b)`` minimising the
  mean cross-entropy over the active classes of the corrected logits
  ``bias_correct(logits, alpha', beta')`` on a validation set, where
  ``alpha'``, ``beta'`` are ``a``, ``b`` on the new classes and ``alpha``,
  ``beta`` (the earlier steps' layers, fixed) elsewhere, plus ``reg ((a -
  1)^2 + b^2) / 2``.

  The cross-entropy is convex in ``(a, b)`` (a log-sum-exp of functions
  affine in them, minus one), so damped Newton steps with a backtracking
  line search from ``(1, 0)`` reach the minimum the paper's SGD approaches.
  The ridge toward the identity layer (FACIL's implementation puts
  ``0.1 beta^2 / 2`` on ``beta``) keeps that minimum finite: on a small
  validation set the new classes can be separable, and the cross-entropy
  then decreases without bound as ``a`` grows.

  Args:
    logits: ``(N, C)`` the model's outputs on the validation set.
    labels: ``(N,)`` int; valid: ``(N,)`` bool, the rows in use.
    active: ``(C,)`` bool, the classes seen; new: ``(C,)`` bool.
    alpha, beta: ``(C,)`` the current layers.
    reg: the ridge's weight (> 0 keeps the minimum finite).
    steps: Newton steps.
  Returns:
    ``(a, b)`` scalars.
  """
  w = valid.astype(jnp.float32)

  def loss(p):
    z = bias_correct(logits, jnp.where(new, p[0], alpha),
                     jnp.where(new, p[1], beta))
    ce = masked_cross_entropy(z, labels, active)
    return jnp.sum(w * ce) / jnp.maximum(jnp.sum(w), 1.0) + 0.5 * reg * (
        (p[0] - 1) ** 2 + p[1] ** 2)

  trials = 0.5 ** jnp.arange(16.0)

  def newton(p, _):
    f, g = jax.value_and_grad(loss)(p)
    h = jax.hessian(loss)(p) + 1e-8 * jnp.eye(2)
    d = -jnp.linalg.solve(h, g)
    d = jnp.where(jnp.all(jnp.isfinite(d)), d, -g)
    values = jax.vmap(lambda t: loss(p + t * d))(trials)
    ok = values <= f + 1e-4 * trials * (g @ d)
    t = jnp.where(jnp.any(ok), trials[jnp.argmax(ok)], 0.0)
    return p + t * d, None

  p, _ = jax.lax.scan(newton, jnp.array([1.0, 0.0]), None, length=steps)
  return p[0], p[1]


class BiC(DistilledRehearsal):
  """BiC: exemplars and distillation, then a two-parameter bias-correction
  layer for each step's new classes, fit on a small balanced validation set.

  The memory of ``memory_size`` slots is split: ``val_size``
  slots hold a class-balanced validation set (``val_size // classes seen``
  examples of each class: held out of the new classes' training data, never
  trained on), the rest the training exemplars (herding, a fixed total).
  Stage 1: ``(1 - lambda) L_CE + lambda L_KD``, ``lambda = n /
  (n + m)``, ``T = 2`` (``DistilledRehearsal``), on outputs with the earlier
  steps' bias layers applied (the teacher's too). Stage 2, after each task
  but the first, everything else frozen: the new classes' ``(alpha,
  beta)`` fit on the validation set by ``fit_bias_layer``. Reported as
  the ``bic`` predictor (``accuracy_matrix_bic``: the corrected outputs'
  argmax) beside the network's uncorrected argmax.

  Args: ``val_size`` (``round(0.1 memory_size)``: the paper's 9:1 split
  when 0); ``bias_reg`` (0.1, ``fit_bias_layer``'s ridge); as
  ``DistilledRehearsal`` otherwise (``memory_size``: both parts).
  """

  name = "bic"
  classifier = "bic"

  def __init__(self, memory_size: int = 2000, temperature: float = 2.0,
               val_size: int = 0, bias_reg: float = 0.1,
               selection: str = "herding",
               replay_size: int = 0, replay: str = "union"):
    check_strength("bias_reg", bias_reg)
    self.bias_reg = float(bias_reg)
    _validate.check_integer("val_size", val_size, 0)
    self.val_size = int(val_size) or max(1, round(0.1 * memory_size))
    if self.val_size >= memory_size:
      raise ValueError(f"val_size={self.val_size} leaves no exemplar of "
                       f"memory_size={memory_size}")
    super().__init__(memory_size, temperature, selection, replay_size,
                     replay)

  @property
  def capacity(self):
    return self.memory_size - self.val_size

  def check(self, stream):
    super().check(stream)
    if self.val_size < stream.num_classes:
      raise ValueError(f"val_size={self.val_size} is smaller than the "
                       f"stream's {stream.num_classes} classes: some would "
                       "have no validation example")

  def _held_out(self, stream, index: int):
    """Task ``index``'s validation rows per class (``val_size // classes
    seen`` of each, chosen at random with a fixed seed)."""
    seen = sum(len(t.classes) for t in stream.tasks[:index + 1])
    v = self.val_size // seen
    y = stream.tasks[index].train.y
    out = {}
    for c in stream.tasks[index].classes:
      idx = np.flatnonzero(y == c)
      if v >= len(idx):
        raise ValueError(f"val_size={self.val_size}: {v} validation examples "
                         f"of class {c} leave none of its {len(idx)} to "
                         "train on")
      out[c] = np.random.default_rng([index, int(c)]).permutation(idx)[:v]
    return out

  def train_split(self, stream, index):
    split = stream.tasks[index].train
    held = np.concatenate(list(self._held_out(stream, index).values()))
    keep = np.setdiff1d(np.arange(len(split)), held)
    return Split(split.x[keep], split.y[keep], split.t[keep])

  def init_state(self, model, stream):
    c = stream.num_classes
    self._vmax = self.val_size // min(len(t.classes) for t in stream.tasks)
    self._stage2 = jax.jit(self._stage2_fn)
    return {**super().init_state(model, stream),
            "val": mem.exemplar_memory(self.val_size, stream.input_shape),
            "alpha": jnp.ones((c,)), "beta": jnp.zeros((c,))}

  def outputs(self, model, params, batch_stats, s, x, train):
    (logits, feats), new_stats = model.apply(params, batch_stats, x,
                                             train=train)
    return (bias_correct(logits, s["alpha"], s["beta"]), feats), new_stats

  def _stage2_fn(self, params, batch_stats, val, x, y, t, keep, v, active,
                 new, alpha, beta, fit):
    """The validation memory shrunk to ``v`` per class plus the new
    classes' rows, and (when ``fit``) the new classes' layer fit on it."""
    val = mem.add_exemplars(mem.shrink(val, v), x, y, t, keep)
    logits, _ = self._outputs(params, batch_stats, val.x)
    a, b = fit_bias_layer(logits, val.y, val.valid, active, new, alpha,
                          beta, self.bias_reg)
    alpha = jnp.where(new & fit, a, alpha)
    beta = jnp.where(new & fit, b, beta)
    return val, alpha, beta

  def on_task_end(self, ctx):
    s, k = ctx.method_state, ctx.index
    held = self._held_out(ctx.stream, k)
    split = ctx.stream.tasks[k].train
    g = self._groups
    rows, keep, y = group_rows(held, g, self._vmax)
    new = np.zeros(ctx.stream.num_classes, bool)
    new[list(held)] = True
    v = next(iter(held.values())).shape[0]
    # The validation rows' forward pass splits over a data-parallel mesh
    # (``on_devices``); its results come back to the hook's device.
    val, alpha, beta = one_device(self.on_devices(
        ctx, self._stage2, ctx.params, ctx.batch_stats, s["val"],
        materialise(split.x[rows]), y, np.full(g, k), keep, v,
        np.asarray(ctx.masks[k]), new, s["alpha"], s["beta"], k > 0))
    s = {**s, "val": val, "alpha": alpha, "beta": beta}
    return super().on_task_end(ctx._replace(method_state=s))

  def predictors(self, model):

    def prepare(s, params, batch_stats):
      return s["alpha"], s["beta"]

    def predict(params, batch_stats, aux, x, active):
      logits = model.apply(params, batch_stats, x)[0][0]
      return jnp.argmax(mask_logits(bias_correct(logits, *aux), active),
                        axis=-1)

    return {"bic": (prepare, predict)}
