"""Fixed-shape episodic memories."""

from cljax.memory._episodic import episodic_memory
from cljax.memory._episodic import EpisodicMemory
from cljax.memory._episodic import select_examples
from cljax.memory._episodic import SELECTIONS
from cljax.memory._episodic import store_task
