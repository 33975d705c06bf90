"""A run's identity: everything that can change its result, as a flat dict.

Checkpoints record it; resuming from a checkpoint whose identity differs
stops with the differing keys (``_checkpoint.check_identity``). What the
runner can see for itself: the cljax version, the stream (name, kind, sizes
and a content digest), the method (class and public attributes, i.e. its
hyperparameters with their defaults), the model's initial state (a digest,
so architecture, width and seed), the optimizer's initial state (a digest:
the hyperparameters ``optax.inject_hyperparams`` keeps in it) and the run's
settings. Anything else the caller knows (a config file, say) comes in
``extra``.
"""

from __future__ import annotations

import numbers
from typing import Any, Mapping

import jax
import numpy as np

import cljax
from cljax.train._checkpoint import tree_digest


def jsonable(value) -> Any:
  """``value`` as plain JSON data (objects as their ``repr``)."""
  if value is None or isinstance(value, (bool, str)):
    return value
  if isinstance(value, numbers.Integral):
    return int(value)
  if isinstance(value, numbers.Real):
    return float(value)
  if isinstance(value, (np.ndarray, jax.Array)) and np.ndim(value) == 0:
    return np.asarray(value).item()
  if isinstance(value, (list, tuple)):
    return [jsonable(v) for v in value]
  if isinstance(value, Mapping):
    return {str(k): jsonable(v) for k, v in value.items()}
  if callable(value) and hasattr(value, "__qualname__"):
    return f"{getattr(value, '__module__', '')}.{value.__qualname__}"
  return repr(value)


def flatten(tree: Mapping, prefix: str = "") -> dict:
  """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (values made ``jsonable``)."""
  out = {}
  for k, v in tree.items():
    key = f"{prefix}{k}"
    if isinstance(v, Mapping) and v:
      out.update(flatten(v, key + "."))
    else:
      out[key] = jsonable(v)
  return out


def run_identity(stream, method, model, optimizer, settings: Mapping,
                 extra: Mapping | None = None) -> dict:
  """The flat identity of ``run_stream(stream, method, model, optimizer,
  **settings)``, merged with the caller's ``extra`` keys."""
  hparams = {k: v for k, v in vars(method).items() if not k.startswith("_")}
  opt_state = optimizer.init(model.params)
  return {
      **flatten(extra or {}),
      "cljax.version": cljax.__version__,
      "stream.name": stream.name,
      "stream.kind": stream.kind,
      "stream.num_classes": stream.num_classes,
      "stream.train_sizes": [len(t.train) for t in stream.tasks],
      "stream.test_sizes": [len(t.test) for t in stream.tasks],
      "stream.digest": stream.digest,
      "method.class": jsonable(type(method)),
      **flatten(hparams, "method."),
      "model.digest": tree_digest((model.params, model.batch_stats)),
      "optimizer.structure": str(jax.tree.structure(opt_state)),
      "optimizer.digest": tree_digest(opt_state),
      **flatten(settings, "run."),
  }
