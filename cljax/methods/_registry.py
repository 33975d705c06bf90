"""Methods by name, for configs."""

from cljax.methods.distill import KD, LwF
from cljax.methods.ewc import EWC, L2, OnlineEWC
from cljax.methods.finetune import FineTune
from cljax.methods.gem import AGEM, GEM
from cljax.methods.independent import Independent
from cljax.methods.joint import Joint
from cljax.methods.mas import MAS
from cljax.methods.si import SI

METHODS = {cls.name: cls for cls in (FineTune, Joint, L2, EWC, OnlineEWC, SI,
                                     MAS, KD, LwF, GEM, AGEM, Independent)}


def build_method(name: str, **hparams):
  """Instantiates method ``name`` with its hyperparameters."""
  if name not in METHODS:
    raise ValueError(f"methods: unknown method {name!r}; expected one of "
                     f"{sorted(METHODS)}")
  try:
    return METHODS[name](**hparams)
  except TypeError as e:
    raise ValueError(f"method {name!r}: bad hyperparameters {hparams}: {e}")
