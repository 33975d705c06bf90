"""Parameter-space regularisation: importance estimates and penalties."""

from cljax.regularizers._importance import FISHER_ESTIMATORS
from cljax.regularizers._importance import example_keys
from cljax.regularizers._importance import fisher_diagonal
from cljax.regularizers._importance import mas_importance
from cljax.regularizers._importance import mean_per_example
from cljax.regularizers._layerwise import layerwise_fisher_diagonal
from cljax.regularizers._layerwise import layerwise_mas_importance
from cljax.regularizers._layerwise import per_example_grad_sum
from cljax.regularizers._penalties import check_strength
from cljax.regularizers._penalties import ewc_merge
from cljax.regularizers._penalties import ewc_penalty
from cljax.regularizers._penalties import ewc_penalty_grad
from cljax.regularizers._penalties import l2_penalty
from cljax.regularizers._penalties import multi_ewc_penalty
from cljax.regularizers._penalties import online_ewc_update
from cljax.regularizers._penalties import si_accumulate
from cljax.regularizers._penalties import si_consolidate
from cljax.regularizers._rwalk import minmax_normalise
from cljax.regularizers._rwalk import rwalk_fisher
from cljax.regularizers._rwalk import rwalk_score_step
from cljax.regularizers._transforms import add_quadratic_penalty
