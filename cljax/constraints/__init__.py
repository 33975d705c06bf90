"""Gradient-space constraints: GEM's on-device QP, GEM and A-GEM projections
(also as optax transformations)."""

from cljax.constraints._project import agem_project
from cljax.constraints._project import gem_project
from cljax.constraints._qp import nonneg_qp
from cljax.constraints._transforms import agem
from cljax.constraints._transforms import gem
