"""UCIR: learning a unified classifier incrementally via rebalancing (Hou et
al. 2019)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cljax import _validate
from cljax._distributed import on_mesh, one_device
from cljax.losses import less_forget_loss, margin_ranking_loss
from cljax.methods._rehearsal import (nme_predictors, Rehearsal,
                                      teacher_state, weighted_cross_entropy,
                                      with_teacher)
from cljax.regularizers import check_strength


class UCIR(Rehearsal):
  """UCIR: a cosine-normalised classifier (``cljax.models.CosineLinear``),
  the less-forget constraint and inter-class separation, on new data and a
  herding exemplar memory.

  ``L = L_CE + lambda L_dis^G + L_mr``: cross-entropy over the classes seen
  on the scaled cosines; ``L_dis^G`` (``less_forget_loss``) between the
  previous and the current model's features on every example, with the
  adaptive weight ``lambda = lambda_base sqrt(|C_old| / |C_new|)``; ``L_mr``
  (``margin_ranking_loss``) on the exemplars in the batch: the ground-truth
  cosine above the ``K`` hardest new-class cosines by ``m``. At the start
  of each task after the first, the new classes' weight vectors are
  imprinted: the normalised mean of their examples' normalised features
  (the authors' code, ``--imprint_weights``). Evaluated by the network
  (CNN) and by the nearest mean of exemplars (``accuracy_matrix_nme``).

  Args: ``lambda_base`` (5), ``k`` (2), ``margin`` (0.5), ``imprint``
  (True); the memory's as ``Rehearsal`` (herding; ``budget`` a fixed total
  or ``per_class``, as UCIR's ImageNet runs keep 20 a class), replaying
  in the proportion of the union of new data and exemplars
  (``replay="union"``), as the paper trains.
  """

  name = "ucir"
  head = "cosine"
  exemplars_only = True
  data_hparams = ("lambda_base", "margin")

  def __init__(self, memory_size: int = 2000, lambda_base: float = 5.0,
               k: int = 2, margin: float = 0.5, imprint: bool = True,
               selection: str = "herding", replay_size: int = 0,
               replay: str = "union", budget: str = "total",
               per_class: int = 0):
    super().__init__(memory_size, selection, budget, per_class,
                     replay_size=replay_size, replay=replay)
    check_strength("lambda_base", lambda_base)
    check_strength("margin", margin)
    _validate.check_integer("k", k, 1)
    self.lambda_base, self.k = float(lambda_base), int(k)
    self.margin, self.imprint = float(margin), bool(imprint)

  def check(self, stream):
    super().check(stream)
    fewest = min(len(t.classes) for t in stream.tasks[1:]) if (
        stream.num_tasks > 1) else self.k
    if self.k > fewest:
      raise ValueError(f"k={self.k} exceeds the {fewest} new classes of "
                       "the smallest incremental task")

  def init_state(self, model, stream):
    if "sigma" not in model.params["head"]:
      raise ValueError("ucir needs the cosine head (model.head='cosine', "
                       "the default for ucir)")
    c = stream.num_classes
    self._means = jax.jit(self._means_fn)
    self._imprinted = jax.jit(self._imprint_fn)
    return {**super().init_state(model, stream), **teacher_state(model, c),
            "new": jnp.zeros((c,), bool),
            "ratio": jnp.zeros(())}  # sqrt(|C_old| / |C_new|)

  def loss_fn(self, model):

    def loss(params, batch_stats, s, batch, masks, rng):
      (logits, feats), new_stats = model.apply(params, batch_stats,
                                               batch["x"], train=True)
      (_, old_feats), _ = model.apply(s["teacher"], s["teacher_stats"],
                                      batch["x"])
      ce = weighted_cross_entropy(logits, batch, masks)
      lf = less_forget_loss(feats, old_feats, batch["w"])
      mr = margin_ranking_loss(logits / params["head"]["sigma"], batch["y"],
                               s["old"], s["new"], self.margin, self.k,
                               batch["w"])
      lam = self.lambda_base * s["ratio"]
      return ce + lam * lf + mr, ({"ce": ce, "less_forget": lf,
                                   "margin_ranking": mr}, new_stats)

    return loss

  def on_task_start(self, ctx):
    s = ctx.method_state
    new = np.zeros(ctx.stream.num_classes, bool)
    new[ctx.stream.tasks[ctx.index].classes] = True
    n_old = int(np.sum(np.asarray(s["old"])))
    return {**s, "new": jnp.asarray(new),
            "ratio": jnp.asarray(np.sqrt(n_old / new.sum()), jnp.float32)}

  def _means_fn(self, params, batch_stats, x, counts):
    """``(G, D)``: each group's normalised mean of its real rows'
    normalised features."""
    g, n = x.shape[:2]
    f = self._features(params, batch_stats, x.reshape(g * n, *x.shape[2:]))
    f = f / jnp.maximum(jnp.linalg.norm(f, axis=-1, keepdims=True), 1e-12)
    real = (jnp.arange(n)[None] < counts[:, None]).reshape(-1, 1)
    mean = jnp.sum(jnp.where(real, f, 0).reshape(g, n, -1), 1)
    return mean / jnp.maximum(jnp.linalg.norm(mean, axis=-1, keepdims=True),
                              1e-12)

  @staticmethod
  def _imprint_fn(params, mean, counts, y):
    """The head with each group's class column set to its ``mean``."""
    kernel = params["head"]["kernel"]
    # Scaled to the old columns' mean norm (the cosine ignores the scale).
    scale = jnp.mean(jnp.linalg.norm(kernel, axis=0))
    y = jnp.where(counts > 0, y, kernel.shape[1])  # padding: dropped
    kernel = kernel.at[:, y].set((scale * mean).T, mode="drop")
    return {**params, "head": {**params["head"], "kernel": kernel}}

  def start_params(self, ctx):
    if ctx.index == 0 or not self.imprint:
      return None
    x, counts, y = self.grouped(ctx.stream, ctx.index)
    # The features' forward pass splits over a data-parallel mesh
    # (``on_devices``, the network placed there once); the means come back
    # to the hook's device.
    params, batch_stats = on_mesh(ctx.mesh, (ctx.params, ctx.batch_stats))
    mean = self.per_group(lambda x, counts: one_device(self.on_devices(
        ctx, self._means, params, batch_stats, x, counts)), x, counts)
    return self._imprinted(ctx.params, mean, counts, y), ctx.batch_stats

  def on_task_end(self, ctx):
    s = super().on_task_end(ctx)
    return with_teacher(s, ctx)

  def predictors(self, model):
    return nme_predictors(model)
