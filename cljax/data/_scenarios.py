"""Continual-learning scenarios: a dataset cut into a stream of tasks.

Every scenario is deterministic given its arguments (and ``seed``). Labels stay
in the dataset's global label space and the model's head is allocated at the
stream's total class count; what differs between scenarios is which logits
are *active* for an example, given by ``Stream.logit_masks``:

* class-incremental (van de Ven & Tolias 2019): a single head; after task
  ``i`` every example is classified among all classes seen so far.
* task-incremental: multi-head; the task id is given and logits are masked to
  that task's classes.
* domain-incremental (permuted / rotated inputs): the same classes in every
  task, all logits active.

The two-task "trained model + new task with a new head" setting is a
two-task task-incremental stream (``two_task``).
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple, Sequence

import numpy as np

from cljax import _validate
from cljax.data._datasets import Dataset, Split

# name (config.scenario.kind) -> what it is (``cljax list scenarios``).
SCENARIOS = {
    "class_incremental": "split classes into tasks; one head over all "
                         "classes seen, no task id at test time",
    "task_incremental": "split classes into tasks; the task id selects its "
                        "classes' logits (multi-head)",
    "domain_incremental": "split classes into tasks, relabelled 0..k-1 "
                          "within each task: one k-way head, no task id "
                          "(van de Ven & Tolias's split domain-IL)",
    "permuted": "every task permutes the pixels with its own fixed "
                "permutation; all classes in every task (domain-IL)",
    "permuted_task_incremental": "permuted, each task's classes its own, a "
                                 "head per task (task id given)",
    "permuted_class_incremental": "permuted, each task's classes its own, "
                                  "one head over all classes seen",
    "rotated": "every task rotates the images by its own angle "
               "(domain-IL)",
    "two_task": "task A then task B (classes_a, classes_b), with a new head "
                "or the one head shared (scenario.two_task_head)",
}


class Task(NamedTuple):
  """One task of a stream.

  Attributes:
    train: training examples (``t`` set to this task's index).
    val: validation examples carved from the training data (may be empty).
    test: this task's test examples.
    classes: ``(K,)`` labels this task contains (in the stream's label
      space).
    source_classes: the dataset's labels of those classes where a scenario
      relabels them (split domain-IL), else ``None``.
  """
  train: Split
  val: Split
  test: Split
  classes: np.ndarray
  source_classes: np.ndarray | None = None


class Stream(NamedTuple):
  """A sequence of tasks sharing one label space.

  Attributes:
    name: e.g. ``"class_incremental/digits"``.
    kind: ``"class"``, ``"task"`` or ``"domain"`` incremental.
    tasks: the tasks, in training order.
    num_classes: size of the model's (single, masked) head.
  """
  name: str
  kind: str
  tasks: tuple
  num_classes: int

  @property
  def num_tasks(self) -> int:
    return len(self.tasks)

  @property
  def input_shape(self) -> tuple:
    if not self.tasks:
      raise ValueError("stream has no tasks")
    return self.tasks[0].train.x.shape[1:]

  @property
  def digest(self) -> str:
    """SHA-256 of the stream: its name, kind, class count, every task's
    classes and the content of every split (each split hashed once)."""
    h = hashlib.sha256(f"{self.name}|{self.kind}|{self.num_classes}".encode())
    for task in self.tasks:
      h.update(np.asarray(task.classes, np.int64).tobytes())
      for split in (task.train, task.val, task.test):
        h.update(split.digest.encode())
    return h.hexdigest()

  def check(self) -> "Stream":
    """Raises ``ValueError`` naming the task and split unless every task has
    training and test examples of one input shape, labels in ``[0,
    num_classes)`` and among the task's ``classes``, its own index as task
    id, and finite inputs."""
    if not self.tasks:
      raise ValueError("stream has no tasks")
    if self.kind not in ("class", "task", "domain"):
      raise ValueError(f"stream kind must be 'class', 'task' or 'domain', "
                       f"got {self.kind!r}")
    for k, task in enumerate(self.tasks):
      for part in ("train", "val", "test"):
        split, name = getattr(task, part), f"task {k} {part} split"
        if part != "val" and len(split) == 0:
          raise ValueError(f"{name} is empty")
        if len(split) and split.x.shape[1:] != self.input_shape:
          raise ValueError(f"{name}: inputs of shape {split.x.shape[1:]}, "
                           f"task 0's are {self.input_shape}")
        split.check(self.num_classes, name)
        if not len(split):
          continue
        if (split.t != k).any():
          i = int(np.argmax(split.t != k))
          raise ValueError(f"{name}: task id {split.t[i]} at index {i}; "
                           f"every example of task {k} has task id {k}")
        outside = ~np.isin(split.y, task.classes)
        if outside.any():  # (a class-IL loss of ~1e38, a task-IL NaN)
          i = int(np.argmax(outside))
          raise ValueError(f"{name}: label {split.y[i]} at index {i} is not "
                           f"among the task's classes "
                           f"{np.asarray(task.classes).tolist()}")
    return self

  def logit_masks(self, current: int) -> np.ndarray:
    """``(T, C)`` bool: row ``k`` marks the logits active for task-``k`` data.

    Args:
      current: index of the task being trained (or just finished); for
        class-incremental streams every row is the union of the classes of
        tasks ``0..current``.
    """
    t, c = self.num_tasks, self.num_classes
    masks = np.zeros((t, c), bool)
    if self.kind == "domain":
      masks[:] = True
    elif self.kind == "task":
      for k, task in enumerate(self.tasks):
        masks[k, task.classes] = True
    else:
      seen = np.concatenate([task.classes for task in self.tasks[:current + 1]])
      masks[:, seen] = True
    return masks


def _check_order(class_order, num_classes):
  if class_order is None:
    return np.arange(num_classes)
  order = np.asarray(class_order)
  if sorted(order.tolist()) != list(range(num_classes)):
    raise ValueError(f"class_order must be a permutation of 0..{num_classes-1}, "
                     f"got {list(order)}")
  return order


def _group_sizes(num_classes, num_tasks, task_sizes):
  if task_sizes is not None and num_tasks != len(task_sizes):
    raise ValueError(f"num_tasks={num_tasks} contradicts task_sizes "
                     f"{list(task_sizes)} ({len(task_sizes)} tasks)")
  if task_sizes is None:
    if num_tasks < 1 or num_classes % num_tasks:
      raise ValueError(f"num_tasks={num_tasks} does not divide "
                       f"{num_classes} classes; give task_sizes")
    return [num_classes // num_tasks] * num_tasks
  sizes = [int(s) for s in task_sizes]
  if any(s < 1 for s in sizes) or sum(sizes) != num_classes:
    raise ValueError(f"task_sizes {sizes} must be positive and sum to "
                     f"{num_classes}")
  return sizes


def _carve(split: Split, val_fraction: float, rng: np.random.Generator):
  _validate.check_value("val_fraction", val_fraction,
                        lambda v: (v >= 0) & (v < 1), "in [0, 1)")
  idx = rng.permutation(len(split))
  n_val = int(round(val_fraction * len(split)))
  return split.take(np.sort(idx[n_val:])), split.take(np.sort(idx[:n_val]))


def _limit(split: Split, n: int | None, rng) -> Split:
  if n is None or n >= len(split):
    return split
  return split.take(np.sort(rng.permutation(len(split))[:n]))


def _with_task(split: Split, k: int) -> Split:
  return split.replace(t=np.full(len(split), k, np.int32))


def _class_tasks(data: Dataset, groups, val_fraction, seed,
                 train_per_task=None, test_per_task=None) -> tuple:
  rng = np.random.default_rng(seed)
  tasks = []
  for k, classes in enumerate(groups):
    classes = np.asarray(classes)
    tr = data.train.take(np.flatnonzero(np.isin(data.train.y, classes)))
    te = data.test.take(np.flatnonzero(np.isin(data.test.y, classes)))
    if len(tr) == 0 or len(te) == 0:
      raise ValueError(f"task {k} (classes {classes.tolist()}) is empty")
    tr, te = _limit(tr, train_per_task, rng), _limit(te, test_per_task, rng)
    tr, va = _carve(tr, val_fraction, rng)
    tasks.append(Task(_with_task(tr, k), _with_task(va, k), _with_task(te, k),
                      classes))
  return tuple(tasks)


def class_splits(data: Dataset, num_tasks: int, *, incremental: str = "class",
                 class_order: Sequence[int] | None = None,
                 task_sizes: Sequence[int] | None = None,
                 train_per_task: int | None = None,
                 test_per_task: int | None = None,
                 val_fraction: float = 0.0, seed: int = 0) -> Stream:
  """Splits a dataset's classes into tasks (class-, task- or domain-IL).

  Args:
    data: the dataset.
    num_tasks: number of tasks (equal sizes unless ``task_sizes`` is given).
    incremental: ``"class"`` (one head over every class seen), ``"task"``
      (the task id selects its classes: multi-head) or ``"domain"`` (each
      task's classes relabelled ``0..k-1`` in their order within the task,
      one ``k``-way head shared by all tasks, no task id: van de Ven &
      Tolias 2019's split domain-IL; ``k`` is the largest task's size).
    class_order: a permutation of the labels; task ``k`` takes the next
      ``task_sizes[k]`` classes in this order. Defaults to ``0..C-1``.
    task_sizes: classes per task, summing to ``data.num_classes``.
    train_per_task, test_per_task: keep at most this many training
      (before the validation carve-out) and test examples per task, a
      random subset drawn with ``seed`` (e.g. for a quick run).
    val_fraction: fraction of each task's training data held out as its
      validation split.
    seed: seeds the validation carve-out.
  """
  if incremental not in ("class", "task", "domain"):
    raise ValueError("incremental must be 'class', 'task' or 'domain', got "
                     f"{incremental!r}")
  data.check()
  order = _check_order(class_order, data.num_classes)
  sizes = _group_sizes(data.num_classes, num_tasks, task_sizes)
  groups = np.split(order, np.cumsum(sizes)[:-1])
  tasks = _class_tasks(data, groups, val_fraction, seed, train_per_task,
                       test_per_task)
  name = f"{incremental}_incremental/{data.name}"
  if incremental == "domain":
    return Stream(name, "domain", tuple(map(_relabel, tasks)), max(sizes))
  return Stream(name, incremental, tasks, data.num_classes)


def _relabel(task: Task) -> Task:
  """A task with its classes renamed ``0..k-1`` (in their order)."""
  lookup = {int(c): i for i, c in enumerate(task.classes)}
  new = lambda s: s.replace(y=np.asarray([lookup[int(y)] for y in s.y],
                                         np.int32).reshape(-1))
  return Task(new(task.train), new(task.val), new(task.test),
              np.arange(len(task.classes)), task.classes)


def two_task(data: Dataset, classes_a: Sequence[int], classes_b: Sequence[int],
             *, head: str = "new", train_per_task: int | None = None,
             test_per_task: int | None = None, val_fraction: float = 0.1,
             seed: int = 0) -> Stream:
  """The seeds' setting: a model trained on task A, then task B.

  ``head="new"``: task B gets a head of its own (logits masked to each
  task's classes, the task id given): a two-task task-incremental stream.
  ``head="shared"``: the one head is extended to task B's outputs and every
  example is classified among all classes seen, without task identity (the
  seed's own setup): a two-task class-incremental stream.
  ``train_per_task`` and ``test_per_task`` as in ``class_splits``.
  """
  if head not in ("new", "shared"):
    raise ValueError(f"head must be 'new' or 'shared', got {head!r}")
  data.check()
  a, b = np.asarray(classes_a), np.asarray(classes_b)
  for name, c in (("classes_a", a), ("classes_b", b)):
    if c.ndim != 1 or not c.size or not np.issubdtype(c.dtype, np.integer):
      raise ValueError(f"{name} must be a non-empty list of class ids, got "
                       f"{c.tolist()}")
    if c.min() < 0 or c.max() >= data.num_classes:
      raise ValueError(f"{name} {c.tolist()} has ids outside the dataset's "
                       f"classes 0..{data.num_classes - 1}")
  if np.intersect1d(a, b).size:
    raise ValueError("classes_a and classes_b must be disjoint")
  tasks = _class_tasks(data, [a, b], val_fraction, seed, train_per_task,
                       test_per_task)
  return Stream(f"two_task_{head}_head/{data.name}",
                "task" if head == "new" else "class", tasks, data.num_classes)


def _domain_stream(name, data, num_tasks, transforms, train_per_task,
                   test_per_task, val_fraction, seed,
                   incremental="domain") -> Stream:
  """Tasks that transform the whole dataset. ``incremental="domain"``: one
  head over the dataset's classes, shared by every task; ``"task"`` /
  ``"class"``: task ``k``'s labels become ``k * C + y`` (``C`` classes
  each, ``T * C`` in all), with a head per task (the task id given) or one
  head over every class seen (van de Ven & Tolias 2019's permuted task- and
  class-IL)."""
  if num_tasks < 1:
    raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
  if incremental not in ("domain", "task", "class"):
    raise ValueError("incremental must be 'domain', 'task' or 'class', got "
                     f"{incremental!r}")
  if not isinstance(data.train.x, np.ndarray):
    raise ValueError(f"{name} streams transform every image up front and "
                     f"need {data.name} in memory; it is streamed (data."
                     "image_size > 0, or above data.stream_above_mb: raise "
                     "that)")
  data.check()
  rng = np.random.default_rng(seed)
  c = data.num_classes
  shift = 0 if incremental == "domain" else c
  tasks = []
  for k, transform in enumerate(transforms):
    tr = _limit(data.train, train_per_task, rng)
    te = _limit(data.test, test_per_task, rng)
    tr, va = _carve(tr, val_fraction, rng)
    apply = lambda s: _with_task(s.replace(x=transform(s.x),
                                           y=s.y + k * shift), k)
    tasks.append(Task(apply(tr), apply(va), apply(te),
                      np.arange(c) + k * shift))
  if incremental == "domain":
    return Stream(f"{name}/{data.name}", "domain", tuple(tasks), c)
  return Stream(f"{name}_{incremental}_incremental/{data.name}", incremental,
                tuple(tasks), c * num_tasks)


def permute_pixels(x: np.ndarray, perm: np.ndarray) -> np.ndarray:
  """Applies one fixed permutation to the flattened pixels of every image."""
  flat = x.reshape(x.shape[0], int(np.prod(x.shape[1:])))
  return flat[:, perm].reshape(x.shape)


def permuted(data: Dataset, num_tasks: int, *, identity_first: bool = False,
             train_per_task: int | None = None,
             test_per_task: int | None = None, val_fraction: float = 0.0,
             seed: int = 0, incremental: str = "domain") -> Stream:
  """Permuted stream (Goodfellow et al. 2013; GEM's MNIST-permutations).

  Task ``k`` applies its own random pixel permutation (drawn from ``seed``) to
  every image; ``identity_first`` keeps task 0 unpermuted. With
  ``train_per_task`` each task gets its own random subset (GEM uses 1,000).
  ``incremental``: ``"domain"`` (one head shared by all tasks), ``"task"``
  or ``"class"`` (each task's classes distinct; see ``_domain_stream``).
  """
  rng = np.random.default_rng([seed, 1])
  size = int(np.prod(data.train.x.shape[1:]))
  perms = [rng.permutation(size) for _ in range(num_tasks)]
  if identity_first:
    perms[0] = np.arange(size)
  transforms = [lambda x, p=p: permute_pixels(x, p) for p in perms]
  return _domain_stream("permuted", data, num_tasks, transforms,
                        train_per_task, test_per_task, val_fraction, seed,
                        incremental)


def rotate_images(x: np.ndarray, degrees: float) -> np.ndarray:
  """Rotates ``(N, H, W, C)`` images by ``degrees`` (bilinear, same size)."""
  from scipy import ndimage
  if x.size == 0:
    return x
  fill = float(x.min())  # the standardised background value
  return ndimage.rotate(x, degrees, axes=(1, 2), reshape=False, order=1,
                        mode="constant", cval=fill).astype(np.float32)


def rotated(data: Dataset, num_tasks: int, *,
            angles: Sequence[float] | None = None,
            train_per_task: int | None = None,
            test_per_task: int | None = None, val_fraction: float = 0.0,
            seed: int = 0) -> Stream:
  """Rotated stream (GEM's MNIST-rotations): task ``k`` rotates every image.

  Args:
    angles: one angle in degrees per task; by default drawn uniformly from
      [0, 180) with ``seed``, as in the GEM paper.
  """
  if angles is None:
    angles = np.random.default_rng([seed, 2]).uniform(0.0, 180.0, num_tasks)
  if len(angles) != num_tasks:
    raise ValueError(f"angles has {len(angles)} entries for {num_tasks} tasks")
  transforms = [lambda x, a=float(a): rotate_images(x, a) for a in angles]
  return _domain_stream("rotated", data, num_tasks, transforms, train_per_task,
                        test_per_task, val_fraction, seed)
