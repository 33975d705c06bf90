"""IL2M: class-incremental learning with dual memory (Belouadah & Popescu
2019)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cljax._distributed import on_mesh, one_device
from cljax.methods.er import ER
from cljax.models import il2m_ratio, il2m_rectify, mask_logits

SCORES = ("softmax", "logits")


class IL2M(ER):
  """IL2M: fine-tuning with a class-balanced exemplar memory (as ER), plus a
  second memory of statistics that rectifies old classes' scores at
  inference; no extra training.

  After each task (state ``N``), with the trained model: ``mu^P(c)``, the
  mean score of each new class ``c`` on its training images (kept for
  later states); ``M(N)``, the mean top-1 score on the new classes'
  training images; ``mu^N(c)``, each old class's mean score on its
  exemplars. At inference, when the top-1 active class is new, old
  classes' scores are multiplied by ``(mu^P(c) / mu^N(c)) (M(N) / M(P(c)))``
  (``cljax.models.il2m_rectify``). Reported as the ``il2m``
  predictor (``accuracy_matrix_il2m``) beside the network's argmax.

  Args: as ``Rehearsal`` (``replay="union"``: the union of new data and
  exemplars, as the paper trains); ``scores``: ``"softmax"``
  (probabilities over the active classes, positive so the multiplicative
  rescaling keeps its meaning) or ``"logits"`` (raw outputs, as FACIL's
  implementation).
  """

  name = "il2m"
  classifier = "il2m"
  exemplars_only = True

  def __init__(self, memory_size: int = 2000, selection: str = "herding",
               budget: str = "total", per_class: int = 0,
               replay_size: int = 0, replay: str = "union",
               scores: str = "softmax"):
    super().__init__(memory_size, selection, budget, per_class, replay_size,
                     replay)
    if scores not in SCORES:
      raise ValueError(f"scores must be one of {SCORES}, got {scores!r}")
    self.scores = scores

  def _score(self, logits, active):
    return (jax.nn.softmax(mask_logits(logits, active), axis=-1)
            if self.scores == "softmax" else logits)

  def init_state(self, model, stream):
    c, t = stream.num_classes, stream.num_tasks
    self._stats = jax.jit(self._stats_fn)
    self._exemplar_means = jax.jit(self._exemplar_means_fn)
    return {**super().init_state(model, stream),
            "init_means": jnp.ones((c,)), "confidence": jnp.ones((t,)),
            "class_state": jnp.zeros((c,), jnp.int32),
            "ratio": jnp.ones((c,)), "new": jnp.zeros((c,), bool)}

  def _stats_fn(self, params, batch_stats, x, counts, y, active):
    """Per group of ``x`` (``(G, N, ...)``): the mean score of its class and
    the sum of top-1 scores over its real rows (``(G,)`` each)."""
    g, n = x.shape[:2]
    logits, _ = self._outputs(params, batch_stats,
                              x.reshape(g * n, *x.shape[2:]))
    scores = self._score(logits, active).reshape(g, n, -1)
    real = jnp.arange(n)[None] < counts[:, None]
    own = jnp.take_along_axis(scores, y[:, None, None], axis=2)[..., 0]
    class_mean = jnp.sum(jnp.where(real, own, 0), 1) / jnp.maximum(counts, 1)
    top_sum = jnp.sum(jnp.where(real, jnp.max(jnp.where(
        active, scores, -jnp.inf), axis=-1), 0), 1)
    return class_mean, top_sum

  def _exemplar_means_fn(self, params, batch_stats, memory, active):
    """``(C,)``: each class's mean score on its exemplars."""
    mem_logits, _ = self._outputs(params, batch_stats, memory.x)
    mem_scores = self._score(mem_logits, active)
    mem_own = jnp.take_along_axis(mem_scores, memory.y[:, None], 1)[:, 0]
    onehot = jax.nn.one_hot(memory.y, active.shape[0]) * memory.valid[:, None]
    return (onehot.T @ mem_own) / jnp.maximum(onehot.sum(0), 1)

  def on_task_end(self, ctx):
    s, k = ctx.method_state, ctx.index
    classes = np.asarray(ctx.stream.tasks[k].classes)
    x, counts, y = self.grouped(ctx.stream, k)
    active = np.asarray(ctx.masks[k])
    # The forward passes split over a data-parallel mesh (``on_devices``,
    # the network placed there once); the statistics come back to the
    # hook's device.
    params, batch_stats = on_mesh(ctx.mesh, (ctx.params, ctx.batch_stats))
    class_mean, top_sum = self.per_group(
        lambda x, counts, y: one_device(self.on_devices(
            ctx, self._stats, params, batch_stats, x, counts, y, active)),
        x, counts, y)
    exemplar_mean = one_device(self.on_devices(
        ctx, self._exemplar_means, params, batch_stats, s["memory"], active))
    g = len(classes)
    init_means = s["init_means"].at[classes].set(class_mean[:g])
    confidence = s["confidence"].at[k].set(jnp.sum(top_sum) / counts.sum())
    class_state = s["class_state"].at[classes].set(k)
    old = np.asarray(active).copy()
    old[classes] = False
    new = np.zeros_like(old)
    new[classes] = True
    # The exemplars as trained on (before this task's selection).
    ratio = il2m_ratio(init_means, jnp.where(old, exemplar_mean, 1.0),
                       confidence, class_state, k, old)
    s = {**s, "init_means": init_means, "confidence": confidence,
         "class_state": class_state, "ratio": ratio, "new": jnp.asarray(new)}
    return super().on_task_end(ctx._replace(method_state=s))

  def predictors(self, model):

    def prepare(s, params, batch_stats):
      return s["ratio"], s["new"]

    def predict(params, batch_stats, aux, x, active):
      ratio, new = aux
      logits = model.apply(params, batch_stats, x)[0][0]
      return jnp.argmax(il2m_rectify(self._score(logits, active), ratio, new,
                                     active), axis=-1)

    return {"il2m": (prepare, predict)}
