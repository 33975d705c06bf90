"""Tables and plots of results."""

from cljax.report._plots import plot_accuracy_matrix
from cljax.report._plots import plot_curves
from cljax.report._plots import plot_over_tasks
from cljax.report._table import accuracy_table
from cljax.report._table import summary_table
from cljax.report._seeds import aggregate_seeds
from cljax.report._selection import CRITERIA
from cljax.report._selection import NOT_JUDGED
from cljax.report._selection import select
from cljax.report._selection import selection_table
from cljax.report._writers import CSVWriter
from cljax.report._writers import MetricWriter
from cljax.report._writers import MultiWriter
from cljax.report._writers import TensorBoardWriter
