"""Models by name, for configs."""

from flax import nnx

from cljax.models._functional import functional
from cljax.models._networks import CNN, MLP, reduced_resnet18, resnet32

# name -> what it is (``cljax list models``).
MODELS = {
    "mlp": "fully connected ReLU network; widths from model.hidden",
    "cnn": "small conv net: two 3x3 conv + max-pool blocks, a dense layer",
    "resnet32": "ResNet-32 for 32x32 images (He et al. 2016; iCaRL's "
                "CIFAR-100 net), 0.46M parameters, BatchNorm",
    "reduced_resnet18": "reduced ResNet-18 (Lopez-Paz & Ranzato 2017; "
                        "A-GEM), BatchNorm",
}


def build_model(name: str, input_shape, num_classes: int, *, seed: int = 0,
                hidden=(400, 400)):
  """Builds model ``name`` for ``(H, W, C)`` inputs and returns it functional."""
  rngs = nnx.Rngs(seed)
  h, w, c = input_shape
  if name == "mlp":
    module = MLP(h * w * c, tuple(hidden), num_classes, rngs=rngs)
  elif name == "cnn":
    module = CNN(c, num_classes, spatial=h, rngs=rngs)
  elif name == "resnet32":
    module = resnet32(c, num_classes, rngs=rngs)
  elif name == "reduced_resnet18":
    module = reduced_resnet18(c, num_classes, rngs=rngs)
  else:
    raise ValueError(f"model.name: unknown model {name!r}; expected one of "
                     f"{sorted(MODELS)}")
  return functional(module)
