"""Checkpoints and resume: identity, atomic steps, corruption, mid-task."""

import os

import jax
import numpy as np
import optax
import pytest

from cljax import data, methods, models, train
from cljax.train import _checkpoint


class Crash(Exception):
  pass


def _crash_after_saves(monkeypatch, n):
  """Raises ``Crash`` right after the ``n``-th checkpoint is written (a
  kill at that moment: everything after it is lost)."""
  real, calls = _checkpoint.Checkpoints.save, []

  def save(self, items, record):
    out = real(self, items, record)
    calls.append(out)
    if len(calls) == n:
      raise Crash()
    return out

  monkeypatch.setattr(_checkpoint.Checkpoints, "save", save)


def _crashed(stream, tmp_path, monkeypatch, n, method=None, **kw) -> str:
  """A checkpoint directory left by a run killed after its ``n``-th save."""
  ckpt = str(tmp_path / "ck")
  _crash_after_saves(monkeypatch, n)
  with pytest.raises(Crash):
    _run(stream, method, ckpt=ckpt, **kw)
  monkeypatch.undo()
  return ckpt


@pytest.fixture(scope="module")
def stream(digits):
  return data.class_splits(digits, 3, task_sizes=(4, 3, 3))


def _run(stream, method=None, ckpt=None, lr=1e-2, **kw):
  kw = {"epochs": 2, "batch_size": 32, "progress": False, "eval_every": 4,
        **kw}
  model = models.build_model("mlp", stream.input_shape, 10, hidden=(16,))
  return train.run_stream(stream, method or methods.FineTune(), model,
                          optax.adam(lr), checkpoint_dir=ckpt, **kw)


def _same(a, b):
  """Bit-identical results: accuracies, curves, steps and parameters."""
  assert a["accuracy_matrix"] == b["accuracy_matrix"]
  assert a["curves"] == b["curves"]
  assert a["steps"] == b["steps"]
  jax.tree.map(np.testing.assert_array_equal,
               jax.device_get(a["final_state"].params),
               jax.device_get(b["final_state"].params))


@pytest.fixture(scope="module")
def full(stream):
  return _run(stream)


def test_resume_after_a_task_is_bit_identical(stream, full, tmp_path,
                                              monkeypatch):
  # Killed right after task 2's checkpoint.
  ckpt = _crashed(stream, tmp_path, monkeypatch, 2)
  _same(_run(stream, ckpt=ckpt), full)


@pytest.mark.parametrize("crash_at", [4, 8, 12])
def test_resume_inside_a_task_is_bit_identical(stream, full, tmp_path,
                                               monkeypatch, crash_at):
  # Tasks of 18, 13 and 13 steps an epoch, 2 epochs; saves every 7 steps
  # plus one per task: the 4th save is inside task 1's second epoch, the 8th
  # at the end of task 2's first epoch, the 12th inside task 3.
  ckpt = _crashed(stream, tmp_path, monkeypatch, crash_at, checkpoint_every=7)
  record = _checkpoint.Checkpoints(ckpt).latest_record()
  assert record["position"] is not None  # it did stop inside a task
  _same(_run(stream, ckpt=ckpt, checkpoint_every=7), full)


def test_resume_with_a_steps_budget_is_bit_identical(stream, tmp_path,
                                                     monkeypatch):
  want = _run(stream, task_steps=40)
  ckpt = _crashed(stream, tmp_path, monkeypatch, 6, checkpoint_every=7,
                  task_steps=40)
  _same(_run(stream, ckpt=ckpt, checkpoint_every=7, task_steps=40), want)


def test_resume_inside_a_phase_with_its_own_optimizer(stream, tmp_path,
                                                      monkeypatch):
  # LwF's head-only warm-up has an optimizer state of its own; the main one
  # is stashed in the checkpoint and restored after the phase.
  lwf = lambda: methods.LwF(warmup_epochs=2)
  want = _run(stream, lwf())
  # Killed inside task 2's warm-up (step 49).
  ckpt = _crashed(stream, tmp_path, monkeypatch, 8, lwf(),
                  checkpoint_every=7)
  pos = _checkpoint.Checkpoints(ckpt).latest_record()["position"]
  assert pos["task"] == 1 and pos["phase"] == 0 and pos["stash"]
  _same(_run(stream, lwf(), ckpt=ckpt, checkpoint_every=7), want)


def _steps(ckpt):
  return sorted(int(d) for d in os.listdir(ckpt) if d.isdigit())


def _largest_file(directory):
  files = [os.path.join(r, f) for r, _, fs in os.walk(directory) for f in fs]
  return max(files, key=os.path.getsize)


@pytest.mark.parametrize("damage", ["truncate", "flip", "record", "torn"])
def test_corrupt_latest_step_falls_back_to_the_previous(stream, full, tmp_path,
                                                        monkeypatch, damage):
  # A torn checkpoint (newer state, older progress) used to train a task
  # twice and exit 0; a damaged state.npz ended in BadZipFile.
  ckpt = _crashed(stream, tmp_path, monkeypatch, 2)
  latest = os.path.join(ckpt, str(_steps(ckpt)[-1]))
  if damage == "truncate":
    path = _largest_file(os.path.join(latest, "state"))
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)
  elif damage == "flip":  # one bit in every data file of the state
    for root, _, files in os.walk(os.path.join(latest, "state")):
      for name in files:
        if os.path.basename(root) == "d":
          path = os.path.join(root, name)
          raw = bytearray(open(path, "rb").read())
          raw[len(raw) // 2] ^= 0x10
          open(path, "wb").write(bytes(raw))
  elif damage == "record":
    path = os.path.join(latest, "record", "metadata")
    text = open(path).read().replace('"done": 2', '"done": 1')
    open(path, "w").write(text)
  else:  # the state written, the record not: a step without its record
    import shutil
    shutil.rmtree(os.path.join(latest, "record"))
  with pytest.warns(UserWarning, match=r"checkpoint step \d+ in .* is "
                    "corrupt .* falling back to the previous step"):
    resumed = _run(stream, ckpt=ckpt)
  _same(resumed, full)
  assert any(d.startswith("corrupt-") for d in os.listdir(ckpt))


def test_leftover_temporary_step_is_ignored(stream, full, tmp_path,
                                           monkeypatch):
  ckpt = _crashed(stream, tmp_path, monkeypatch, 1)
  # What a kill during orbax's write leaves: an uncommitted temporary step.
  os.makedirs(os.path.join(ckpt, "1.orbax-checkpoint-tmp-123", "state"))
  _same(_run(stream, ckpt=ckpt), full)


def test_a_step_without_orbax_metadata_resumes_without_its_warning(
    stream, full, tmp_path, monkeypatch, caplog):
  # A kill after the step's rename, before orbax wrote its metadata file:
  # the step verifies by its digests; orbax's warning leaked to the user.
  ckpt = _crashed(stream, tmp_path, monkeypatch, 2)
  os.remove(os.path.join(ckpt, str(max(_steps(ckpt))),
                         "_CHECKPOINT_METADATA"))
  with caplog.at_level("WARNING"):
    _same(_run(stream, ckpt=ckpt), full)
  assert "Metadata file does not exist" not in caplog.text


def test_every_step_corrupt_starts_afresh_with_a_warning(stream, full,
                                                         tmp_path,
                                                         monkeypatch):
  ckpt = _crashed(stream, tmp_path, monkeypatch, 2)
  for step in _steps(ckpt):
    os.remove(os.path.join(ckpt, str(step), "record", "metadata"))
  with pytest.warns(UserWarning, match="corrupt"):
    _same(_run(stream, ckpt=ckpt), full)


def test_checkpoint_of_another_run_is_refused_naming_the_keys(stream,
                                                             tmp_path):
  ckpt = str(tmp_path / "ck")
  _run(stream, methods.EWC(lam=1.0), ckpt=ckpt, epochs=1)
  with pytest.raises(ValueError, match=r"other settings.*\n  method.lam: 1.0 "
                     r"-> 10.0\n"):
    _run(stream, methods.EWC(lam=10.0), ckpt=ckpt, epochs=1)
  with pytest.raises(ValueError, match=r"run.epochs: 1 -> 2"):
    _run(stream, methods.EWC(lam=1.0), ckpt=ckpt, epochs=2)
  with pytest.raises(ValueError, match=r"run.task_lrs: null -> \[0.1, 0.1, "
                     r"0.1\]"):
    model = models.build_model("mlp", stream.input_shape, 10, hidden=(16,))
    train.run_stream(stream, methods.EWC(lam=1.0), model,
                     optax.inject_hyperparams(optax.adam)(learning_rate=0.1),
                     epochs=1, batch_size=32, progress=False, eval_every=4,
                     checkpoint_dir=ckpt, task_lrs=[0.1] * 3)
  # Another model (shapes differ): refused by identity, not set aside as
  # corrupt.
  model = models.build_model("mlp", stream.input_shape, 10, hidden=(8,))
  with pytest.raises(ValueError, match="model.digest"):
    train.run_stream(stream, methods.EWC(lam=1.0), model, optax.adam(1e-2),
                     epochs=1, batch_size=32, progress=False, eval_every=4,
                     checkpoint_dir=ckpt)
  assert not any(d.startswith("corrupt") for d in os.listdir(ckpt))


def test_other_data_is_refused(stream, digits, tmp_path):
  ckpt = str(tmp_path / "ck")
  _run(stream, ckpt=ckpt, epochs=1)
  x = digits.train.x.copy()
  x[0, 0, 0, 0] += 1.0  # one pixel of the same-sized data
  other = data.class_splits(digits._replace(train=digits.train.replace(x=x)),
                            3, task_sizes=(4, 3, 3))
  with pytest.raises(ValueError, match="stream.digest"):
    _run(other, ckpt=ckpt, epochs=1)


def test_old_format_is_refused(stream, tmp_path):
  ckpt = tmp_path / "ck"
  ckpt.mkdir()
  (ckpt / "progress.json").write_text("{}")
  with pytest.raises(ValueError, match="format of cljax < 0.2"):
    _run(stream, ckpt=str(ckpt))


def test_a_locked_checkpoint_directory_is_refused(stream, tmp_path):
  ckpt = str(tmp_path / "ck")
  with train.directory_lock(ckpt):
    with pytest.raises(train.LockedError, match=rf"pid {os.getpid()}"):
      _run(stream, ckpt=ckpt)


class _Rate:
  """A schedule as a callable object."""

  def __init__(self, rate):
    self.rate = rate

  def __call__(self, count):
    return self.rate


class _Scale:
  """An augmentation as a callable object (default ``repr``: its address)."""

  def __init__(self, s):
    self.s = s

  def __call__(self, key, x):
    return x * self.s


@pytest.mark.parametrize("first,second,key", [
    # Hyperparameters optax keeps in closures used to be invisible: the
    # second run reported the first run's accuracy.
    (optax.adam(1e-2), optax.adam(0.5), "optimizer.digest"),
    (optax.sgd(0.1, momentum=0.9), optax.sgd(0.1, momentum=0.5),
     "optimizer.digest"),
    (optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(0.1)),
     optax.chain(optax.add_decayed_weights(1e-3), optax.sgd(0.1)),
     "optimizer.digest"),
    # ... and in the attributes of objects (an object counted by its class).
    (optax.MultiSteps(optax.sgd(0.1), every_k_schedule=1
                      ).gradient_transformation(),
     optax.MultiSteps(optax.sgd(0.1), every_k_schedule=4
                      ).gradient_transformation(), "optimizer.digest"),
    (optax.sgd(_Rate(0.05)), optax.sgd(_Rate(0.5)), "optimizer.digest"),
])
def test_optimizer_of_another_run_is_refused(stream, tmp_path, first, second,
                                             key):
  ckpt = str(tmp_path / "ck")
  model = lambda: models.build_model("mlp", stream.input_shape, 10,
                                     hidden=(16,))
  kw = dict(epochs=1, batch_size=32, progress=False, checkpoint_dir=ckpt)
  train.run_stream(stream, methods.FineTune(), model(), first, **kw)
  with pytest.raises(ValueError, match=key):
    train.run_stream(stream, methods.FineTune(), model(), second, **kw)


def test_augmentation_of_another_run_is_refused(stream, tmp_path):
  ckpt = str(tmp_path / "ck")
  kw = dict(ckpt=ckpt, epochs=1)
  _run(stream, augment=lambda key, x: x, **kw)
  with pytest.raises(ValueError, match="run.augment"):
    _run(stream, augment=lambda key, x: x * 2.0, **kw)
  # A callable object: refused with other attributes (it was reused), and
  # another instance with the same ones resumes (its address made the
  # identity differ before).
  kw["ckpt"] = str(tmp_path / "obj")
  _run(stream, augment=_Scale(1.0), **kw)
  with pytest.raises(ValueError, match="run.augment"):
    _run(stream, augment=_Scale(0.0), **kw)
  _run(stream, augment=_Scale(1.0), **kw)


def test_a_setting_added_since_matches_at_its_default():
  # Adding a config key (or a method hyperparameter) used to make every
  # earlier checkpoint unusable.
  old = {"config.train.lr": 0.1}
  new = {"config.train.lr": 0.1, "config.train.schedule": "constant"}
  defaults = {"config.train.schedule": "constant"}
  assert _checkpoint.identity_diff(old, new, defaults) == []
  changed = {**new, "config.train.schedule": "cosine"}
  assert _checkpoint.identity_diff(old, changed, defaults) == [
      'config.train.schedule: "<absent>" -> "cosine"']
  assert _checkpoint.identity_diff(old, new) != []  # no default known
  assert _checkpoint.identity_diff(new, old, defaults) == []  # removed
  method_defaults = train.identity_defaults(methods.LwF())
  assert method_defaults["method.heads"] == "auto"


def test_a_setting_that_left_the_identity_is_not_compared():
  # sweep.vmap was part of the identity, then became a presentation key:
  # checkpoints written with sweep.vmap=True were refused ("true ->
  # <absent>"). Presentation keys are ignored on both sides, with
  # everything under them.
  from cljax import experiment
  defaults = train.identity_defaults(methods.FineTune(),
                                     experiment._config_defaults())
  old = {"config.train.lr": 0.1, "config.sweep.vmap": True,
         "config.log.csv": False}
  new = {"config.train.lr": 0.1, "config.log.csv": True}
  assert _checkpoint.identity_diff(old, new, defaults) == []
  assert _checkpoint.identity_diff(old, {**new, "config.train.lr": 0.2},
                                   defaults) == [
      "config.train.lr: 0.1 -> 0.2"]
