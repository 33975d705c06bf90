"""Pure loss terms on logits and features: no state, no models."""

from cljax.losses._cross_entropy import masked_cross_entropy
from cljax.losses._distillation import hinton_distillation_loss
from cljax.losses._distillation import icarl_loss
from cljax.losses._distillation import kd_loss
from cljax.losses._distillation import lwf_loss
from cljax.losses._distillation import sigmoid_classification
from cljax.losses._distillation import sigmoid_distillation
from cljax.losses._distillation import soft_cross_entropy
from cljax.losses._generative import replay_loss
from cljax.losses._generative import vae_loss
from cljax.losses._rebalancing import less_forget_loss
from cljax.losses._rebalancing import margin_ranking_loss
