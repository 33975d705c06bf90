"""Continual-learning methods: each a small composition of the pure pieces."""

from cljax.methods._base import head_only
from cljax.methods._base import Method
from cljax.methods._base import Phase
from cljax.methods._base import TaskContext
from cljax.methods._base import task_cross_entropy
from cljax.methods._registry import build_method
from cljax.methods._registry import description
from cljax.methods._registry import hyperparameters
from cljax.methods._registry import method_class
from cljax.methods._registry import METHODS
from cljax.methods.distill import KD
from cljax.methods.distill import LwF
from cljax.methods.der import DER
from cljax.methods.der import DERpp
from cljax.methods.er import ER
from cljax.methods.ewc import EWC
from cljax.methods.ewc import L2
from cljax.methods.ewc import OnlineEWC
from cljax.methods.finetune import FineTune
from cljax.methods.gem import AGEM
from cljax.methods.gem import GEM
from cljax.methods.icarl import ICaRL
from cljax.methods.independent import Independent
from cljax.methods.joint import Joint
from cljax.methods.mas import MAS
from cljax.methods.si import SI
