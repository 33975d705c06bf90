"""Models by name, for configs."""

import jax.numpy as jnp
from flax import nnx

from cljax.models._cosine import CosineLinear
from cljax.models._functional import functional
from cljax.models._networks import (CNN, MLP, ModularMLP, reduced_resnet18,
                                    resnet18, resnet32)

# name -> what it is (``cljax list models``).
MODELS = {
    "mlp": "fully connected ReLU network; widths from model.hidden",
    "cnn": "small conv net: two 3x3 conv + max-pool blocks, a dense layer",
    "resnet32": "ResNet-32 for 32x32 images (He et al. 2016; iCaRL's "
                "CIFAR-100 net), 0.46M parameters, BatchNorm",
    "reduced_resnet18": "reduced ResNet-18 (Lopez-Paz & Ranzato 2017; "
                        "A-GEM), BatchNorm",
    "resnet18": "ResNet-18 for ImageNet-sized images (He et al. 2016; UCIR's "
                "and PODNet's ImageNet-100 net), 11.7M parameters, BatchNorm",
}


# head -> what it is (``model.head``; a method asks for its own:
# ``Method.head``).
HEADS = {
    "linear": "a linear layer at the stream's total class count",
    "cosine": "cosine-normalised classifier with a learnable scale (UCIR)",
    "gated": "a linear layer, and a learnable gate per unit of each hidden "
             "layer (params['gates']; HAT's task embedding, applied by the "
             "method: the network's own forward ignores it); mlp and cnn",
    "picking": "a linear layer, and a learnable real-valued mask beside "
               "each backbone kernel (params['pick']; CPG's picking mask, "
               "applied by the method); mlp and cnn",
    "modular": "a linear layer on PathNet's super network: each hidden "
               "layer of the mlp as 10 modules of a tenth of its units, "
               "summed (models.ModularMLP); mlp only",
}


def build_model(name: str, input_shape, num_classes: int, *, seed: int = 0,
                hidden=(400, 400), head: str = "linear",
                dtype: str = "float32"):
  """Builds model ``name`` with classifier ``head`` (``HEADS``) for
  ``(H, W, C)`` inputs and returns it functional, computing in ``dtype``
  (``"bfloat16"``: mixed precision, see ``functional``)."""
  if head not in HEADS:
    raise ValueError(f"model.head: unknown head {head!r}; expected one of "
                     f"{sorted(HEADS)}")
  rngs = nnx.Rngs(seed)
  h, w, c = input_shape
  if head == "modular":
    if name != "mlp":
      raise ValueError(f"model.head 'modular' is PathNet's modular mlp; "
                       f"model.name must be 'mlp', not {name!r}")
    return functional(ModularMLP(h * w * c, tuple(hidden), num_classes,
                                 rngs=rngs), dtype)
  if name == "mlp":
    module = MLP(h * w * c, tuple(hidden), num_classes, rngs=rngs)
  elif name == "cnn":
    module = CNN(c, num_classes, spatial=h, rngs=rngs)
  elif name == "resnet32":
    module = resnet32(c, num_classes, rngs=rngs)
  elif name == "resnet18":
    module = resnet18(c, num_classes, rngs=rngs)
  elif name == "reduced_resnet18":
    module = reduced_resnet18(c, num_classes, rngs=rngs)
  else:
    raise ValueError(f"model.name: unknown model {name!r}; expected one of "
                     f"{sorted(MODELS)}")
  if head == "cosine":
    module.head = CosineLinear(module.head.in_features, num_classes,
                               rngs=rngs)
  if head in ("gated", "picking"):
    if name not in ("mlp", "cnn"):
      raise ValueError(f"model.head {head!r} needs a network without "
                       f"BatchNorm (mlp or cnn), not {name!r}")
    layers = [*module.layers] if name == "mlp" else [*module.convs,
                                                      module.dense]
    if head == "gated":  # one per unit
      module.gates = nnx.List([nnx.Param(jnp.zeros((layer.out_features,)))
                               for layer in layers])
    else:  # one per weight of each kernel
      module.pick = nnx.List([nnx.Param(jnp.zeros(layer.kernel.shape))
                              for layer in layers])
  return functional(module, dtype)
