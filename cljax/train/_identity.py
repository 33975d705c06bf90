"""A run's identity: everything that can change its result, as a flat dict.

Checkpoints record it; resuming from a checkpoint whose identity differs
stops with the differing keys (``_checkpoint.check_identity``). What the
runner can see for itself: the cljax version, the stream (name, kind, sizes
and a content digest), the method (class and public attributes, i.e. its
hyperparameters with their defaults), the model's initial state (a digest,
so architecture, width and seed), the optimizer's initial state (a digest:
the hyperparameters ``optax.inject_hyperparams`` keeps in it), the
optimizer itself and the augmentation (``fingerprint``: code and closed-over
values, so hyperparameters that optax keeps in closures count too) and the
run's settings. Anything else the caller knows (a config file, say) comes in
``extra``.
"""

from __future__ import annotations

import functools
import hashlib
import numbers
import types
from typing import Any, Mapping

import jax
import numpy as np

import cljax
from cljax._hashing import array_digest
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
  if type(value).__repr__ is object.__repr__:  # (its memory address: no)
    return f"{type(value).__module__}.{type(value).__qualname__}"
  return repr(value)


def fingerprint(obj, _depth: int = 0, _seen=None) -> str:
  """A description of ``obj`` that changes whenever its behaviour can: for a
  function, its qualified name, a digest of its code (bytecode and
  constants) and, recursively, of the values it closes over and its
  defaults; for ``functools.partial`` its function and arguments; for
  containers (an optax ``GradientTransformation`` is a NamedTuple of
  functions) each element; arrays by shape, dtype and a digest of their
  values. So ``optax.adam(1e-2)`` and ``optax.adam(0.5)``, whose learning
  rates live in closures, differ."""
  seen = set() if _seen is None else _seen
  if _depth > 12 or id(obj) in seen:
    return "..."
  rec = lambda o: fingerprint(o, _depth + 1, seen)
  if obj is None or isinstance(obj, (bool, str, numbers.Number)):
    return repr(obj)
  if isinstance(obj, (np.ndarray, jax.Array, np.generic)):
    return f"array:{array_digest([np.asarray(obj)])[:16]}"
  seen.add(id(obj))
  if isinstance(obj, functools.partial):
    return (f"partial({rec(obj.func)}, {rec(obj.args)}, "
            f"{rec(sorted(obj.keywords.items()))})")
  if isinstance(obj, types.MethodType):
    return f"method({rec(obj.__func__)}, {rec(obj.__self__)})"
  if isinstance(obj, types.FunctionType):
    code = obj.__code__
    digest = hashlib.sha256(code.co_code + repr(
        [c for c in code.co_consts if not isinstance(c, types.CodeType)]
    ).encode()).hexdigest()[:16]
    cells = [rec(c.cell_contents) if _filled(c) else "<empty>"
             for c in obj.__closure__ or ()]
    return (f"{obj.__module__}.{obj.__qualname__}:{digest}"
            f"({', '.join(cells)}; defaults {rec(obj.__defaults__)})")
  if isinstance(obj, (list, tuple)):
    return f"{type(obj).__name__}({', '.join(rec(x) for x in obj)})"
  if isinstance(obj, Mapping):
    return "{" + ", ".join(f"{k!r}: {rec(v)}" for k, v in obj.items()) + "}"
  if isinstance(obj, type) or callable(obj) and hasattr(obj, "__qualname__"):
    return f"{getattr(obj, '__module__', '')}.{obj.__qualname__}"
  if isinstance(obj, types.ModuleType):
    return f"module {obj.__name__}"
  # Any other object (optax.MultiSteps, a callable schedule or augmentation
  # class): its class, the code of its __call__, and its attributes.
  cls = type(obj)
  call = getattr(cls, "__call__", None)
  attrs = (vars(obj) if hasattr(obj, "__dict__") else
           {k: getattr(obj, k) for k in getattr(cls, "__slots__", ())
            if hasattr(obj, k)})
  return (f"{cls.__module__}.{cls.__qualname__}("
          f"{rec(call) if isinstance(call, types.FunctionType) else ''}; "
          f"{rec(dict(sorted(attrs.items())))})")


def _filled(cell) -> bool:
  try:
    cell.cell_contents
  except ValueError:
    return False
  return True


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


def identity_defaults(method, extra_defaults: Mapping | None = None) -> dict:
  """The defaults of the identity's settings that have one: the method's
  hyperparameters (from its constructor) and the caller's
  ``extra_defaults`` (e.g. the default config), flat like the identity."""
  from cljax.methods import hyperparameters
  return {**flatten(extra_defaults or {}),
          **flatten(hyperparameters(type(method)), "method.")}


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
      # (BatchNorm's variance has been two-pass since this key: a
      # checkpoint of a BN model without it computed another one)
      **({"model.batch_norm_variance": "two-pass"}
         if jax.tree.leaves(model.batch_stats) else {}),
      # (absent for float32, as before the key existed)
      **({"model.dtype": model.dtype} if getattr(
          model, "dtype", "float32") != "float32" else {}),
      "optimizer.digest": _digest(optimizer),
      "optimizer.state_digest": tree_digest(opt_state),
      **flatten({**settings, "augment": _named_digest(settings.get(
          "augment"))}, "run."),
  }


def _digest(obj) -> str:
  return hashlib.sha256(fingerprint(obj).encode()).hexdigest()


def _named_digest(obj) -> str | None:
  """``module.name@digest`` of a callable (readable in a mismatch message,
  and different whenever its code or closed-over values are)."""
  return None if obj is None else f"{jsonable(obj)}@{_digest(obj)[:16]}"
