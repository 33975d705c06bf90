"""Fixed-shape memories: per-task episodic, class-balanced exemplars with
herding and nearest-mean classification, and a reservoir buffer."""

from cljax.memory._episodic import episodic_memory
from cljax.memory._episodic import EpisodicMemory
from cljax.memory._episodic import select_examples
from cljax.memory._episodic import SELECTIONS
from cljax.memory._episodic import store_task
from cljax.memory._gss import cosine_max
from cljax.memory._gss import gss_insert
from cljax.memory._reservoir import reservoir_add
from cljax.memory._reservoir import reservoir_buffer
from cljax.memory._reservoir import ReservoirBuffer
from cljax.memory._exemplars import add_exemplars
from cljax.memory._exemplars import BUDGETS
from cljax.memory._exemplars import EXEMPLAR_SELECTIONS
from cljax.memory._exemplars import exemplar_memory
from cljax.memory._exemplars import ExemplarMemory
from cljax.memory._exemplars import herding_classes
from cljax.memory._exemplars import herding_selection
from cljax.memory._exemplars import per_class_budget
from cljax.memory._exemplars import sample
from cljax.memory._exemplars import shrink
from cljax.memory._nme import class_means
from cljax.memory._nme import nme_predict
