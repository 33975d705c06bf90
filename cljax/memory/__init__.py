"""Fixed-shape episodic memories and a reservoir buffer."""

from cljax.memory._episodic import episodic_memory
from cljax.memory._episodic import EpisodicMemory
from cljax.memory._episodic import select_examples
from cljax.memory._episodic import SELECTIONS
from cljax.memory._episodic import store_task
from cljax.memory._reservoir import reservoir_add
from cljax.memory._reservoir import reservoir_buffer
from cljax.memory._reservoir import ReservoirBuffer
