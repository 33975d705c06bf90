"""Deep Generative Replay (Shin, Lee, Kim & Kim 2017, "Continual Learning
with Deep Generative Replay", NeurIPS), with a VAE generator and the
previous model's labels, as van de Ven & Tolias (2019, "Three scenarios for
continual learning") run it: DGR with hard labels, DGR+distill with soft
targets."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cljax import _validate
from cljax.data._streamed import materialise
from cljax.losses._generative import replay_loss, vae_loss
from cljax.methods._base import Method, task_cross_entropy
from cljax.models._heads import example_masks
from cljax.losses._cross_entropy import masked_cross_entropy
from cljax.models._vae import init_vae, vae_decode, vae_encode

# Rows of a task's training inputs read for their value range.
_RANGE_ROWS = 10_000


def replay_groups(stream, index: int):
  """``(student_groups, teacher_groups)``, bool ``(T, C)``, of task
  ``index``'s replay (``losses.replay_loss``): in task-IL row ``j < index``
  is task ``j``'s classes for both; otherwise row 0 holds the classes the
  model trains over now (student) and those the previous model had learned
  (teacher); the other rows are empty. All empty for the first task."""
  t, c = stream.num_tasks, stream.num_classes
  student, teacher = np.zeros((t, c), bool), np.zeros((t, c), bool)
  if index > 0:
    if stream.kind == "task":
      student[:index] = teacher[:index] = stream.logit_masks(index)[:index]
    else:  # one head: every row of the masks is the same
      student[0] = stream.logit_masks(index)[0]
      teacher[0] = stream.logit_masks(index - 1)[0]
  return student, teacher


class DGR(Method):
  """Deep Generative Replay: a VAE trained alongside the classifier
  generates inputs of the earlier tasks, labelled by the previous model.

  From the second task ``t`` (1-based) on, each step draws a replay batch
  as large as the current one from the previous task's generator
  (``sigmoid(decode(z))``, ``z ~ N(0, I)``), labels it with the previous
  classifier (``losses.replay_loss``: its argmax here, its softened outputs
  in ``dgr_distill``; per earlier task in task-IL, over all classes seen in
  class-IL, the new classes' targets 0) and minimises ``(1/t) CE(current) +
  (1 - 1/t) L_replay``. The generator takes a step on the same batches
  with the same weights, ``(1/t) vae_loss(current) + (1 - 1/t)
  vae_loss(replay)`` (``losses.vae_loss``), with the run's optimizer (as
  van de Ven & Tolias's same Adam and rate), in a state of its own, reset
  at each task's start when the classifier's is (``train.reset_optimizer``;
  ``train.first_task_lr`` does not reach it).
  At each task's end both models are copied as the next task's teacher and
  generator.

  The VAE models the inputs rescaled to ``[0, 1]`` by the range (per
  channel) of the first task's training inputs, the pixel range of
  standardised images, and its samples are mapped back. The current and
  replayed examples share one forward pass of the classifier (BatchNorm
  sees their union; van de Ven & Tolias run two). The first task trains
  without replay (``lax.cond`` skips its work).

  Args:
    z_dim: latent size (100, van de Ven & Tolias's).
    gen_units, gen_layers: the VAE's hidden widths (the classifier's in the
      paper: 400 on split MNIST, 1000 on permuted), ``gen_layers`` of them
      in the encoder and mirrored in the decoder.
  """

  name = "dgr"
  soft = False
  temperature = 2.0  # soft targets only (DGRDistill)

  def __init__(self, z_dim: int = 100, gen_units: int = 400,
               gen_layers: int = 2):
    _validate.check_integer("z_dim", z_dim, 1)
    _validate.check_integer("gen_units", gen_units, 1)
    _validate.check_integer("gen_layers", gen_layers, 1)
    self.z_dim, self.gen_units = int(z_dim), int(gen_units)
    self.gen_layers = int(gen_layers)

  def optimizer(self, base, params):
    self._gen_optimizer = base  # the generator trains with the same one
    return base

  def init_state(self, model, stream):
    if not hasattr(self, "_gen_optimizer"):
      raise RuntimeError("dgr: optimizer() comes before init_state() (the "
                         "generator takes the run's optimizer)")
    x = materialise(stream.tasks[0].train.x[:_RANGE_ROWS])
    axes = tuple(range(x.ndim - 1))
    # Shapes only: on_task_start draws the weights from the run's seed.
    gen = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), jax.eval_shape(
        lambda: self._init_generator(0, x.shape[1:])))
    student, teacher = replay_groups(stream, 0)
    return {"gen": gen, "gen_opt": self._gen_optimizer.init(gen),
            "prev_gen": gen, "teacher": model.params,
            "teacher_stats": model.batch_stats,
            "student_groups": jnp.asarray(student),
            "teacher_groups": jnp.asarray(teacher),
            "rnt": jnp.ones(()),
            "lo": jnp.asarray(x.min(axis=axes), jnp.float32),
            "hi": jnp.asarray(x.max(axis=axes), jnp.float32)}

  def _init_generator(self, seed: int, input_shape):
    return init_vae(jax.random.fold_in(jax.random.key(seed), 0x64677200),
                    int(np.prod(input_shape)),
                    (self.gen_units,) * self.gen_layers, self.z_dim)

  def on_task_start(self, ctx):
    s = ctx.method_state
    if ctx.index == 0:  # the generator's initial weights, from the run's seed
      gen = self._init_generator(ctx.seed, ctx.stream.input_shape)
      s = {**s, "gen": gen, "prev_gen": gen}
    if ctx.index == 0 or ctx.reset_optimizer:  # as the classifier's
      s = {**s, "gen_opt": self._gen_optimizer.init(s["gen"])}
    student, teacher = replay_groups(ctx.stream, ctx.index)
    return {**s, "student_groups": jnp.asarray(student),
            "teacher_groups": jnp.asarray(teacher),
            "rnt": jnp.asarray(1.0 / (ctx.index + 1), jnp.float32)}

  def on_task_end(self, ctx):
    s = ctx.method_state
    return {**s, "prev_gen": s["gen"], "teacher": ctx.params,
            "teacher_stats": ctx.batch_stats}

  @staticmethod
  def _to_unit(s, x):
    """Inputs ``(B, ...)`` rescaled to ``[0, 1]`` and flattened."""
    u = (x - s["lo"]) / jnp.maximum(s["hi"] - s["lo"], 1e-12)
    return jnp.clip(u, 0.0, 1.0).reshape(x.shape[0], -1)

  def batch_fn(self, s, batch, rng, shard):
    """Appends ``x_replay``: this shard's part of a replay batch as large
    as the global batch, drawn with the key every shard shares (nothing
    drawn while ``rnt = 1``, the first task)."""
    x = batch["x"]
    b, (index, count) = x.shape[0], shard

    def draw():
      z = jax.random.normal(rng, (b * count, self.z_dim))
      z = jax.lax.dynamic_slice_in_dim(z, index * b, b)
      u = jax.nn.sigmoid(vae_decode(s["prev_gen"], z)).reshape(x.shape)
      return (s["lo"] + (s["hi"] - s["lo"]) * u).astype(x.dtype)

    replay = jax.lax.cond(s["rnt"] < 1, draw, lambda: jnp.zeros_like(x))
    return {**batch, "x_replay": replay}

  def loss_fn(self, model):

    def with_replay(params, batch_stats, s, batch, masks):
      x, x_replay = batch["x"], batch["x_replay"]
      b = x.shape[0]
      (logits, _), new_stats = model.apply(
          params, batch_stats, jnp.concatenate([x, x_replay]), train=True)
      ce = jnp.mean(masked_cross_entropy(
          logits[:b], batch["y"], example_masks(masks, batch["t"])))
      (teacher, _), _ = model.apply(s["teacher"], s["teacher_stats"],
                                    x_replay)
      replay = replay_loss(logits[b:], teacher, s["student_groups"],
                           s["teacher_groups"], self.temperature,
                           self.soft)
      total = s["rnt"] * ce + (1 - s["rnt"]) * replay
      return total, ({"ce": ce, "replay": replay}, new_stats)

    def first_task(params, batch_stats, s, batch, masks):
      ce, _, new_stats = task_cross_entropy(model, params, batch_stats,
                                            batch, masks)
      return ce, ({"ce": ce, "replay": jnp.zeros_like(ce)}, new_stats)

    def loss(params, batch_stats, s, batch, masks, rng):
      # One step for the whole stream (the same phase, so the same batches
      # as every other method); the first task skips the replay's work.
      return jax.lax.cond(s["rnt"] < 1, with_replay, first_task, params,
                          batch_stats, s, batch, masks)

    return loss

  def update_method_state(self, s, old_params, new_params, grads, info):
    """One step of the generator on the global batch (gathered, so every
    shard takes the same step) and its replay, weighted ``1/t`` and
    ``1 - 1/t``; the reparameterisation noise from the shared key."""
    x = self._to_unit(s, info.gather(info.batch["x"]))
    x_replay = self._to_unit(s, info.gather(info.batch["x_replay"]))
    rnt = s["rnt"]

    def objective(gen, inputs, key):
      mean, logvar = vae_encode(gen, inputs)
      z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape)
      return jnp.mean(vae_loss(vae_decode(gen, z), inputs, mean, logvar))

    k_cur, k_rep = jax.random.split(info.rng)

    def with_replay(gen):
      return (rnt * objective(gen, x, k_cur) +
              (1 - rnt) * objective(gen, x_replay, k_rep))

    def current_only(gen):
      return objective(gen, x, k_cur)

    grad = jax.lax.cond(rnt < 1, jax.grad(with_replay),
                        jax.grad(current_only), s["gen"])
    updates, gen_opt = self._gen_optimizer.update(grad, s["gen_opt"],
                                                  s["gen"])
    gen = jax.tree.map(lambda p, u: p + u, s["gen"], updates)
    return {**s, "gen": gen, "gen_opt": gen_opt}


class DGRDistill(DGR):
  """DGR+distill: generative replay whose replayed inputs are trained on
  the previous model's softened outputs at temperature ``T`` (knowledge
  distillation, ``T^2``-scaled; van de Ven & Tolias 2019) instead of its
  argmax labels.

  Args: ``temperature`` (2, the paper's), and DGR's.
  """

  name = "dgr_distill"
  soft = True
  data_hparams = ("temperature",)

  def __init__(self, temperature: float = 2.0, z_dim: int = 100,
               gen_units: int = 400, gen_layers: int = 2):
    super().__init__(z_dim, gen_units, gen_layers)
    _validate.check_positive("temperature", temperature)
    self.temperature = float(temperature)
