"""Methods by name, for configs: the built-in ones and a user's by import
path (``"mypkg.mymod:MyMethod"``)."""

from __future__ import annotations

import importlib
import inspect

from cljax.methods._base import Method
from cljax.methods.bic import BiC
from cljax.methods.cpg import CPG
from cljax.methods.distill import KD, LwF
from cljax.methods.den import DEN
from cljax.methods.der import DER, DERpp
from cljax.methods.dgr import DGR, DGRDistill
from cljax.methods.e2eil import E2EIL
from cljax.methods.er import ER
from cljax.methods.ewc import EWC, L2, OnlineEWC
from cljax.methods.finetune import FineTune
from cljax.methods.gem import AGEM, GEM
from cljax.methods.gss import GSS
from cljax.methods.hat import HAT
from cljax.methods.icarl import ICaRL
from cljax.methods.il2m import IL2M
from cljax.methods.independent import Independent
from cljax.methods.joint import Joint
from cljax.methods.mas import MAS
from cljax.methods.mir import MIR
from cljax.methods.packnet import PackNet
from cljax.methods.pathnet import PathNet
from cljax.methods.rwalk import RWalk
from cljax.methods.si import SI
from cljax.methods.ucir import UCIR
from cljax.methods.wa import WA

METHODS = {cls.name: cls for cls in (FineTune, Joint, L2, EWC, OnlineEWC, SI,
                                     MAS, KD, LwF, GEM, AGEM, Independent,
                                     ER, DER, DERpp, ICaRL, E2EIL, UCIR,
                                     BiC, IL2M, WA, RWalk, MIR, GSS,
                                     DGR, DGRDistill, PackNet, HAT,
                                     PathNet, CPG, DEN)}


def hyperparameters(cls: type) -> dict:
  """A method class's hyperparameters and their defaults, read from its
  constructor (and, through ``**kwargs``, its bases' constructors)."""
  out = {}
  for klass in cls.__mro__:
    init = klass.__dict__.get("__init__")
    if init is None or klass is object:
      continue
    params = inspect.signature(init).parameters.values()
    for p in params:
      if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
        out.setdefault(p.name, None if p.default is p.empty else p.default)
    if not any(p.kind is p.VAR_KEYWORD for p in params):
      break
  return out


def description(cls: type) -> str:
  """A method class's one-line summary: its docstring's first paragraph."""
  return " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())


def method_class(name: str) -> type:
  """The class of method ``name``: a built-in name (``METHODS``) or an
  import path ``"package.module:Class"`` of a ``Method`` subclass."""
  if name in METHODS:
    return METHODS[name]
  if ":" not in name:
    raise ValueError(f"methods: unknown method {name!r}; expected one of "
                     f"{sorted(METHODS)} or an import path "
                     "'package.module:Class'")
  module, _, attr = name.partition(":")
  try:
    cls = getattr(importlib.import_module(module), attr)
  except (ImportError, AttributeError) as e:
    raise ValueError(f"methods: cannot import {name!r}: {e}") from None
  if not (isinstance(cls, type) and issubclass(cls, Method)):
    raise ValueError(f"methods: {name!r} is not a subclass of "
                     "cljax.methods.Method")
  return cls


def build_method(name: str, **hparams):
  """Instantiates method ``name`` (see ``method_class``) with its
  hyperparameters."""
  cls = method_class(name)
  try:
    return cls(**hparams)
  except TypeError as e:
    raise ValueError(f"method {name!r}: bad hyperparameters {hparams}: {e}")
