"""Pure loss terms on logits and features: no state, no models."""

from cljax.losses._cross_entropy import masked_cross_entropy
