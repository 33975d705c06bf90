"""The default experiment (``cljax run`` with no arguments): a short, real
class-incremental stream on scikit-learn's bundled digits, fine-tuning vs
joint training. Every key any experiment may set is defined here; the files
in ``experiments/`` start from this and change what they need."""

import ml_collections
from ml_collections import config_dict

from cljax.methods import METHODS
from cljax.methods import hyperparameters
from cljax.methods import method_class


def method_entry(kind: str, **hparams) -> ml_collections.ConfigDict:
  """A ``config.method`` entry for method ``kind`` (a name or an import
  path): every hyperparameter with its default (read from the method's
  constructor), ``hparams`` applied, and ``lr`` / ``hidden`` / ``epochs``
  overriding ``train.lr`` / ``model.hidden`` / ``train.epochs`` for this
  entry when set."""
  defaults = hyperparameters(method_class(kind))
  unknown = sorted(set(hparams) - set(defaults) - {"lr", "hidden", "epochs"})
  if unknown:
    raise ValueError(f"method {kind!r} has no hyperparameter {unknown}; it "
                     f"has {sorted(defaults)}")
  entry = ml_collections.ConfigDict({
      "kind": kind, "lr": config_dict.placeholder(float),
      "hidden": config_dict.placeholder(tuple),
      "epochs": config_dict.placeholder(int), **defaults})
  entry.update(hparams)
  return entry


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "digits_class_incremental"
  c.seed = 0
  c.seeds = 1               # run every entry under seeds seed, seed+1, ...
  c.workdir = ""            # default: runs/<name>
  c.progress = True
  c.checkpoint_every = 0    # > 0: also checkpoint every this many steps

  # Metric logs under the workdir: tensorboard/<entry>/ (event files) and
  # metrics/<entry>.csv; loss terms every `every` steps.
  c.log = ml_collections.ConfigDict()
  c.log.tensorboard = True
  c.log.csv = True
  c.log.every = 50

  c.data = ml_collections.ConfigDict()
  c.data.name = "digits"    # digits | fashion_mnist | tfds:<name>
  c.data.path = ""          # directory of idx files (fashion_mnist)
  c.data.data_dir = ""      # tensorflow-datasets data_dir
  c.data.verify = True      # check known files (Fashion-MNIST) by SHA-256
  # tfds only: > 0 streams the images, decoded on access at this size
  # (ImageNet), never whole in memory; 0 loads the dataset into memory.
  c.data.image_size = 0
  # tfds only, with image_size 0: a dataset whose float32 copy in memory
  # (train and test splits) would exceed this many MB is streamed at its
  # images' own size, standardised as in memory (0: always streamed).
  c.data.stream_above_mb = 8192.0
  c.data.classes = ()       # tfds only: labels (or class names) to keep
  c.data.test_split = "test"  # tfds only: the split tested on

  c.scenario = ml_collections.ConfigDict()
  c.scenario.kind = "class_incremental"  # see cljax.data.SCENARIOS
  c.scenario.num_tasks = 5
  c.scenario.class_order = ()   # () = 0..C-1
  c.scenario.task_sizes = ()    # () = equal
  c.scenario.classes_a = (0, 1, 2, 3, 4)  # two_task
  c.scenario.classes_b = (5, 6, 7, 8, 9)
  c.scenario.two_task_head = "new"  # two_task: "new" head for B, or "shared"
  c.scenario.angles = ()        # rotated; () = uniform in [0, 180)
  c.scenario.identity_first = False  # permuted
  c.scenario.train_per_task = 0  # examples per task (a random subset); 0: all
  c.scenario.test_per_task = 0
  c.scenario.val_fraction = 0.1

  c.model = ml_collections.ConfigDict()
  c.model.name = "mlp"          # mlp | cnn | resnet32 | reduced_resnet18
  c.model.hidden = (100, 100)
  c.model.head = ""             # "" = the method's own (e.g. cosine for ucir); linear | cosine

  c.train = ml_collections.ConfigDict()
  c.train.epochs = 5
  c.train.steps_per_task = 0    # > 0: this many steps per task, not epochs
  c.train.batch_size = 32
  c.train.optimizer = "sgd"     # sgd | adam
  c.train.lr = 0.05
  c.train.first_task_lr = 0.0   # > 0: the first task's lr (later tasks: lr)
  c.train.first_task_epochs = 0  # > 0: the first task's epochs
  c.train.momentum = 0.9
  c.train.schedule = "constant"  # constant | multistep | cosine (per task)
  c.train.milestones = (0.5, 0.75)  # multistep: fractions of a task's steps
  c.train.decay = 0.1           # multistep: lr factor at each milestone
  c.train.warmup = 0.0          # cosine: linear warm-up, fraction of steps
  c.train.weight_decay = 0.0
  c.train.eval_every = 10       # steps between curve evaluations; 0 = off
  c.train.eval_batch_size = 1000  # at most; smaller splits: the largest
  c.train.eval_top_k = 0        # > 1: also top-k accuracy (e.g. 5)
  # float32 | bfloat16 (mixed precision: float32 parameters, optimizer
  # state and losses; the network computes in bfloat16)
  c.train.dtype = "float32"
  # How steps run (results are the same): "scan" keeps a task's data on the
  # device and runs jitted lax.scans of up to scan_chunk steps; "host" feeds
  # batches from the host; "auto": scan when the data fits device_data_mb.
  c.train.loop = "auto"
  c.train.scan_chunk = 100
  c.train.device_data_mb = 1024
  c.train.reset_optimizer = True
  c.train.augment = "none"      # none | crop_flip

  # Comma-separated run entries; each is a method name or a key of
  # c.method whose `kind` names the method (its other keys are the method's
  # hyperparameters; an `lr` key overrides train.lr for that entry).
  c.methods = "finetune,joint"
  # Entries named family__variant compete within their family on this
  # validation criterion (val_acc | val_score); only winners are summarised.
  c.select = "val_acc"
  # sweep.vmap: entries that differ only in hyperparameters their method
  # reads as data (e.g. ewc__lam1, ewc__lam100) train as one vmapped
  # program (cljax.train.run_sweep), not one after the other.
  # sweep.vmap_seeds: the `seeds` seeds of an entry (of a sweep group, with
  # sweep.vmap) train as one vmapped program, each member with its own
  # stream, initialisation and batches; every seed's stream is in memory
  # at once.
  c.sweep = ml_collections.ConfigDict()
  c.sweep.vmap = False
  c.sweep.vmap_seeds = False

  # Data parallelism: the global batch split over this many devices (1: one
  # device; 0: all of them, every process's in a distributed run).
  # BatchNorm statistics are synchronised over the devices, so results match
  # one device to float tolerance.
  c.parallel = ml_collections.ConfigDict()
  c.parallel.data = 1
  # Multi-process runs: jax.distributed.initialize with these (each left at
  # its default is auto-detected on TPU pods, SLURM, Open MPI); every
  # process runs the same command; process 0 writes the results.
  c.distributed = False
  c.cluster = ml_collections.ConfigDict()
  c.cluster.coordinator_address = ""   # host:port of process 0
  c.cluster.num_processes = 0
  c.cluster.process_id = -1
  # One entry per method, with every hyperparameter, so any of them can be
  # set from the command line: --config.method.ewc.lam=10.
  c.method = ml_collections.ConfigDict(
      {name: method_entry(name) for name in METHODS})

  if arg == "runlocal":
    c.train.epochs = 1
  return c
