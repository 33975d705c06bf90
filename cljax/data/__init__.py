"""Datasets (offline), continual-learning scenarios and batching."""

from cljax.data._batching import AUGMENTATIONS
from cljax.data._batching import eval_batches
from cljax.data._batching import num_batches
from cljax.data._batching import random_crop_flip
from cljax.data._batching import train_batches
from cljax.data._datasets import concat
from cljax.data._datasets import Dataset
from cljax.data._datasets import DEBIAN_FASHION_MNIST
from cljax.data._datasets import load_dataset
from cljax.data._datasets import load_digits
from cljax.data._datasets import load_fashion_mnist
from cljax.data._datasets import make_split
from cljax.data._datasets import read_idx
from cljax.data._datasets import Split
from cljax.data._scenarios import class_splits
from cljax.data._scenarios import permute_pixels
from cljax.data._scenarios import permuted
from cljax.data._scenarios import rotate_images
from cljax.data._scenarios import rotated
from cljax.data._scenarios import SCENARIOS
from cljax.data._scenarios import Stream
from cljax.data._scenarios import Task
from cljax.data._scenarios import two_task
from cljax.data._tfds import load_tfds
from cljax.data._tfds import prepare_tfds
from cljax.data._tfds import restore_fashion_mnist_gzip_headers
