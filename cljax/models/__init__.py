"""Models (flax NNX) and incremental-head masking."""

from cljax.models._corrections import align_weights
from cljax.models._corrections import bias_correct
from cljax.models._corrections import il2m_ratio
from cljax.models._corrections import il2m_rectify
from cljax.models._cosine import cosine_logits
from cljax.models._cosine import CosineLinear
from cljax.models._functional import DTYPES
from cljax.models._functional import functional
from cljax.models._functional import FunctionalModel
from cljax.models._functional import sync_batch_norm
from cljax.models._heads import example_masks
from cljax.models._heads import mask_logits
from cljax.models._heads import masked_fill_value
from cljax.models._networks import BasicBlock
from cljax.models._networks import Classifier
from cljax.models._networks import CNN
from cljax.models._networks import MLP
from cljax.models._networks import reduced_resnet18
from cljax.models._networks import ResNet
from cljax.models._networks import resnet18
from cljax.models._networks import resnet32
from cljax.models._registry import build_model
from cljax.models._registry import HEADS
from cljax.models._registry import MODELS
