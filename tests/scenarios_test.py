import numpy as np
import pytest

from cljax import data


@pytest.mark.parametrize("order", [None, (3, 1, 4, 0, 5, 9, 2, 6, 8, 7)])
@pytest.mark.parametrize("incremental", ["class", "task"])
def test_class_splits_disjoint_and_complete(digits, order, incremental):
  s = data.class_splits(digits, 5, incremental=incremental, class_order=order,
                        val_fraction=0.1, seed=3)
  expected = np.arange(10) if order is None else np.asarray(order)
  np.testing.assert_array_equal(np.concatenate([t.classes for t in s.tasks]),
                                expected)
  n_train = 0
  for k, task in enumerate(s.tasks):
    for split in (task.train, task.val, task.test):
      assert set(np.unique(split.y)) <= set(task.classes.tolist())
      assert np.all(split.t == k)
    n_train += len(task.train) + len(task.val)
    assert abs(len(task.val) - 0.1 * (len(task.train) + len(task.val))) <= 1
  assert n_train == len(digits.train)
  assert sum(len(t.test) for t in s.tasks) == len(digits.test)


def test_given_task_sizes(digits):
  s = data.class_splits(digits, 3, task_sizes=(5, 3, 2))
  assert [len(t.classes) for t in s.tasks] == [5, 3, 2]
  with pytest.raises(ValueError, match="task_sizes"):
    data.class_splits(digits, 3, task_sizes=(5, 3, 1))
  with pytest.raises(ValueError, match="divide"):
    data.class_splits(digits, 3)
  with pytest.raises(ValueError, match="permutation"):
    data.class_splits(digits, 5, class_order=(0, 0, 1, 2, 3, 4, 5, 6, 7, 8))
  # It used to run 2 tasks while the config said 5.
  with pytest.raises(ValueError, match=r"num_tasks=5 contradicts task_sizes"):
    data.class_splits(digits, 5, task_sizes=(5, 5))
  with pytest.raises(ValueError, match="val_fraction must be a real number"):
    data.class_splits(digits, 5, val_fraction="0.1")  # a TypeError before


def _with_train(digits, **fields):
  return digits._replace(train=digits.train.replace(**fields))


@pytest.mark.parametrize("label", [10, -1])
def test_scenarios_refuse_labels_out_of_range(digits, label):
  # Labels >= C were dropped silently from class splits; -1 became class 9
  # in a permuted stream.
  y = digits.train.y.copy()
  y[3] = label
  bad = _with_train(digits, y=y)
  for build in (lambda: data.class_splits(bad, 5),
                lambda: data.permuted(bad, 2),
                lambda: data.two_task(bad, (0, 1), (2, 3))):
    with pytest.raises(ValueError, match=rf"digits train split: label "
                       rf"y\[3\] = {label} is outside \[0, 10\)"):
      build()


def test_scenarios_refuse_nonfinite_inputs(digits):
  x = digits.test.x.copy()
  x[11, 2, 2, 0] = np.nan
  bad = digits._replace(test=digits.test.replace(x=x))
  with pytest.raises(ValueError, match=r"digits test split: input x\[11\]"):
    data.rotated(bad, 2)


def test_stream_check_names_task_and_split(digits):
  s = data.class_splits(digits, 5)
  assert s.check() is s
  task = s.tasks[2]
  y = task.test.y.copy()
  y[4] = 10
  tasks = list(s.tasks)
  tasks[2] = task._replace(test=task.test.replace(y=y))
  with pytest.raises(ValueError, match=r"task 2 test split: label y\[4\] = "
                     "10"):
    s._replace(tasks=tuple(tasks)).check()
  tasks[2] = task._replace(train=task.train.take(np.arange(0)))
  with pytest.raises(ValueError, match="task 2 train split is empty"):
    s._replace(tasks=tuple(tasks)).check()


@pytest.mark.parametrize("kind", ["class", "task"])
def test_stream_check_refuses_labels_and_ids_of_another_task(digits, kind):
  # A hand-built stream with a label of another task trained silently in
  # class-IL (a loss of ~1e38 with no gradient) and failed mid-run in
  # task-IL; a wrong task id picked another head.
  s = data.class_splits(digits, 5, incremental=kind)
  task = s.tasks[1]
  tasks = list(s.tasks)
  y = task.train.y.copy()
  y[3] = s.tasks[0].classes[0]
  tasks[1] = task._replace(train=task.train.replace(y=y))
  with pytest.raises(ValueError, match=r"task 1 train split: label \d at "
                     r"index 3 is not among the task's classes"):
    s._replace(tasks=tuple(tasks)).check()
  t = task.test.t.copy()
  t[5] = 0
  tasks[1] = task._replace(test=task.test.replace(t=t))
  with pytest.raises(ValueError, match="task 1 test split: task id 0 at "
                     "index 5; every example of task 1 has task id 1"):
    s._replace(tasks=tuple(tasks)).check()
  with pytest.raises(ValueError, match="stream has no tasks"):
    s._replace(tasks=()).input_shape


def test_split_arrays_are_read_only(digits):
  # The content digest is computed once: a change in place went unnoticed.
  split = data.class_splits(digits, 5).tasks[0].train
  for a in (split.x, split.y, split.t):
    with pytest.raises(ValueError, match="read-only"):
      a[0] = 0


def test_stream_digest_follows_content(digits):
  a, b = data.class_splits(digits, 5), data.class_splits(digits, 5)
  assert a.digest == b.digest
  assert data.class_splits(digits, 5, seed=1, val_fraction=0.1).digest != \
      data.class_splits(digits, 5, seed=2, val_fraction=0.1).digest
  assert data.class_splits(digits, 5, incremental="task").digest != a.digest


def test_logit_masks(digits):
  ci = data.class_splits(digits, 5, incremental="class")
  m = ci.logit_masks(1)
  assert m.shape == (5, 10)
  assert np.all(m == np.isin(np.arange(10), [0, 1, 2, 3])[None])
  ti = data.class_splits(digits, 5, incremental="task")
  m = ti.logit_masks(1)
  for k in range(5):
    np.testing.assert_array_equal(np.flatnonzero(m[k]), [2 * k, 2 * k + 1])
  pm = data.permuted(digits, 2)
  assert pm.logit_masks(0).all()


def test_determinism(digits):
  a = data.permuted(digits, 3, seed=7, train_per_task=100, val_fraction=0.2)
  b = data.permuted(digits, 3, seed=7, train_per_task=100, val_fraction=0.2)
  c = data.permuted(digits, 3, seed=8, train_per_task=100, val_fraction=0.2)
  for ta, tb, tc in zip(a.tasks, b.tasks, c.tasks):
    np.testing.assert_array_equal(ta.train.x, tb.train.x)
    np.testing.assert_array_equal(ta.val.y, tb.val.y)
  assert not np.array_equal(a.tasks[1].train.x, c.tasks[1].train.x)


def test_permuted_applies_one_permutation_per_task(digits):
  s = data.permuted(digits, 3, identity_first=True, seed=1)
  flat = digits.test.x.reshape(len(digits.test), -1)
  np.testing.assert_array_equal(s.tasks[0].test.x.reshape(len(flat), -1), flat)
  cols = lambda a: sorted(map(tuple, a.T))
  for task in s.tasks[1:]:
    got = task.test.x.reshape(len(flat), -1)
    np.testing.assert_array_equal(task.test.y, digits.test.y)
    assert not np.array_equal(got, flat)
    # The same pixel columns, reordered: one permutation for all images.
    assert cols(got) == cols(flat)
  assert not np.array_equal(s.tasks[1].test.x, s.tasks[2].test.x)


def test_rotated(digits):
  s = data.rotated(digits, 3, angles=(0.0, 90.0, 180.0))
  x = digits.test.x
  np.testing.assert_allclose(s.tasks[0].test.x, x, atol=1e-5)
  np.testing.assert_allclose(s.tasks[1].test.x, np.rot90(x, 1, axes=(1, 2)),
                             atol=1e-4)
  np.testing.assert_allclose(s.tasks[2].test.x, x[:, ::-1, ::-1], atol=1e-4)
  r = data.rotated(digits, 4, seed=2)
  assert r.num_tasks == 4
  with pytest.raises(ValueError, match="angles"):
    data.rotated(digits, 2, angles=(10.0,))


def test_train_per_task(digits):
  s = data.permuted(digits, 2, train_per_task=100, test_per_task=50)
  assert [len(t.train) for t in s.tasks] == [100, 100]
  assert [len(t.test) for t in s.tasks] == [50, 50]


def test_two_task(digits):
  s = data.two_task(digits, (0, 1, 2, 3, 4), (5, 6, 7, 8, 9), val_fraction=0.1)
  assert s.kind == "task" and s.num_tasks == 2
  assert set(np.unique(s.tasks[1].train.y)) == {5, 6, 7, 8, 9}
  assert len(s.tasks[0].val) > 0
  with pytest.raises(ValueError, match="disjoint"):
    data.two_task(digits, (0, 1), (1, 2))
  # The seed's own setup: one head extended to B, no task identity.
  shared = data.two_task(digits, (0, 1, 2, 3, 4), (5, 6, 7, 8, 9),
                         head="shared")
  assert shared.kind == "class"
  assert shared.logit_masks(0)[0].sum() == 5
  assert shared.logit_masks(1).all()  # A's examples compete with B's classes
  with pytest.raises(ValueError, match="head must be"):
    data.two_task(digits, (0,), (1,), head="both")
  # Ids outside the dataset used to end in an IndexError 15 s in.
  with pytest.raises(ValueError, match=r"classes_b \[5, 12\] has ids "
                     "outside the dataset's classes 0..9"):
    data.two_task(digits, (0, 1), (5, 12))


def test_batches(digits):
  split = digits.train
  bs = list(data.train_batches(split, 64, np.random.default_rng(0)))
  assert len(bs) == len(split) // 64
  assert all(b["x"].shape == (64, 8, 8, 1) for b in bs)
  seen = np.concatenate([b["y"] for b in bs])
  assert len(seen) == 64 * len(bs)
  ev = list(data.eval_batches(split, 500))
  assert sum(b["w"].sum() for b in ev) == len(split)
  assert all(b["x"].shape[0] == 500 for b in ev)
  with pytest.raises(ValueError, match="fewer than"):
    list(data.train_batches(split.take(np.arange(10)), 64,
                            np.random.default_rng(0)))


def test_random_crop_flip():
  import jax
  x = jax.random.normal(jax.random.key(0), (8, 32, 32, 3))
  y = data.random_crop_flip(jax.random.key(1), x)
  assert y.shape == x.shape
  # Each output is a shifted (maybe flipped) window of the zero-padded input.
  xp = np.pad(np.asarray(x), ((0, 0), (4, 4), (4, 4), (0, 0)))
  for i in range(8):
    found = any(np.allclose(w, np.asarray(y[i]))
                for dy in range(9) for dx in range(9)
                for w in [xp[i, dy:dy + 32, dx:dx + 32],
                          xp[i, dy:dy + 32, dx:dx + 32][:, ::-1]])
    assert found


def test_split_domain_incremental(digits):
  s = data.class_splits(digits, 5, incremental="domain",
                        class_order=(3, 1, 4, 0, 5, 9, 2, 6, 8, 7))
  assert s.kind == "domain" and s.num_classes == 2
  assert s.logit_masks(3).all()  # one 2-way head, no task id needed
  flat = data.class_splits(digits, 5, class_order=(3, 1, 4, 0, 5, 9, 2, 6, 8,
                                                    7))
  for k, (task, ref) in enumerate(zip(s.tasks, flat.tasks)):
    np.testing.assert_array_equal(task.classes, [0, 1])
    np.testing.assert_array_equal(task.source_classes, ref.classes)
    for split, ref_split in ((task.train, ref.train), (task.test, ref.test)):
      # the same examples, each class renamed by its position in the task
      np.testing.assert_array_equal(split.x, ref_split.x)
      np.testing.assert_array_equal(split.y,
                                    (ref_split.y == ref.classes[1]).astype(int))
  assert s.check() is s


def test_domain_incremental_runs_from_the_config(tmp_path):
  from cljax import experiment
  from cljax.default_config import get_config
  c = get_config("runlocal")
  c.workdir, c.progress = str(tmp_path / "w"), False
  c.scenario.kind = "domain_incremental"
  res = experiment.run_experiment(c)
  assert res["stream"]["classes"][0] == [0, 1]  # the dataset's labels
  assert len(res["runs"]["joint"]["accuracy_matrix"]) == 5


@pytest.mark.parametrize("incremental", ["task", "class"])
def test_permuted_with_distinct_classes_per_task(digits, incremental):
  dom = data.permuted(digits, 3)
  s = data.permuted(digits, 3, incremental=incremental)
  assert s.kind == incremental and s.num_classes == 30
  for k, (a, b) in enumerate(zip(s.tasks, dom.tasks)):
    np.testing.assert_array_equal(a.train.x, b.train.x)  # same images
    np.testing.assert_array_equal(a.train.y, b.train.y + 10 * k)
    np.testing.assert_array_equal(a.classes, np.arange(10) + 10 * k)
  m = s.logit_masks(1)
  if incremental == "task":
    assert m[0].sum() == 10 and m[0, :10].all() and not m[0, 10:].any()
  else:
    assert m.sum(axis=1).tolist() == [20, 20, 20]  # the classes seen
  assert s.check() is s
