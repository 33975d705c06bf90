"""Multi-process runs on ``jax.distributed``: start-up and who writes.

Every process runs the same program on the same data (the same stream,
batch order and keys); the train step's global batch is split over all
processes' devices (``cljax.train.data_parallel``), each process gathering
only its own rows; the rest (evaluation, end-of-task work) runs on
replicated arrays, so every process holds the same state, with some of it
split over the devices too (``rows_mean`` inside the step: GEM's memory
gradients; ``rowwise`` under ``jax.set_mesh``: herding, nearest-mean class
means, IL2M's statistics, BiC's validation pass, UCIR's imprinting; EWC's
and MAS's importances: ``methods._regularized``). Checkpoints are written
collectively through orbax; the workdir's lock, logs, plots and
``results.json`` belong to process 0 alone.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P


# The data-parallel axis of the per-shard train step being traced (``None``
# outside one, or on one device); set by ``cljax.train.make_train_step``
# around the method's ``extra_args``.
_DATA_AXIS = contextvars.ContextVar("cljax_data_axis", default=None)


@contextlib.contextmanager
def data_axis(axis_name: str | None):
  """Within: method-side work traced for the per-shard step may split over
  ``axis_name`` (``rows_mean``)."""
  token = _DATA_AXIS.set(axis_name)
  try:
    yield
  finally:
    _DATA_AXIS.reset(token)


def rows_mean(fn, rows: tuple, axis: int = 0):
  """``fn(*rows)`` for an ``fn`` that averages equally over the rows (axis
  ``axis`` of every array in ``rows``), e.g. the gradient of a mean loss.

  Inside a data-parallel step (``data_axis``) whose device count divides
  the rows, each shard applies ``fn`` to its own contiguous share and the
  shares' results are averaged (``jax.lax.pmean``): the same mean as one
  device's, to float tolerance, at ``1 / devices`` of the work per device.
  Otherwise (one device, or rows that do not divide) ``fn(*rows)`` whole.
  """
  name = _DATA_AXIS.get()
  n = rows[0].shape[axis]
  if name is None or n % jax.lax.axis_size(name):
    return fn(*rows)
  per = n // jax.lax.axis_size(name)
  start = jax.lax.axis_index(name) * per
  share = [jax.lax.dynamic_slice_in_dim(r, start, per, axis) for r in rows]
  return jax.lax.pmean(fn(*share), name)


def rowwise(fn, x):
  """``fn(x)`` for a row-wise ``fn`` (each output row depends on its own
  input row only, e.g. a network's eval-mode forward pass), its outputs
  with a leading row axis too.

  Traced under ``jax.set_mesh`` of a mesh with a ``"data"`` axis whose size
  divides the rows (``data_axis_mesh``), ``x``'s rows are split over that
  axis, each device computing its share, and the outputs gathered
  (replicated) again: ``fn(x)`` at ``1 / devices`` of the work per device,
  equal to one device's to float tolerance. Otherwise ``fn(x)``."""
  mesh = jax.sharding.get_abstract_mesh()
  if (mesh.empty or "data" not in mesh.axis_names
      or x.shape[0] % mesh.shape["data"]):
    return fn(x)
  explicit = mesh.axis_types[mesh.axis_names.index("data")] == (
      jax.sharding.AxisType.Explicit)
  place = ((lambda a, spec: jax.sharding.reshard(a, spec)) if explicit else
           (lambda a, spec: jax.lax.with_sharding_constraint(a, spec)))
  out = fn(place(x, P("data")))
  return jax.tree.map(lambda a: place(a, P()), out)


@contextlib.contextmanager
def data_axis_mesh(mesh: jax.sharding.Mesh | None):
  """Within: ``rowwise`` work traced for ``mesh`` (``None``: one device)
  splits over its ``"data"`` axis (``jax.set_mesh``)."""
  if mesh is None:
    yield
    return
  with jax.set_mesh(mesh):
    yield


def initialize(coordinator_address: str = "", num_processes: int = 0,
               process_id: int = -1) -> None:
  """``jax.distributed.initialize`` with JAX's auto-detection (TPU pods,
  SLURM, Open MPI, ...) for every argument left at its default ("", 0,
  -1). Call before anything else touches a device."""
  kwargs = {}
  if coordinator_address:
    kwargs["coordinator_address"] = coordinator_address
  if num_processes:
    kwargs["num_processes"] = int(num_processes)
  if process_id >= 0:
    kwargs["process_id"] = int(process_id)
  jax.distributed.initialize(**kwargs)


def is_primary() -> bool:
  """Whether this process writes the run's files (process 0; the only
  process of a single-process run)."""
  return jax.process_index() == 0


@functools.lru_cache(maxsize=None)  # once per mesh and batch size
def process_share(mesh: jax.sharding.Mesh, axis_name: str, n: int) -> slice:
  """The rows of a global batch of ``n`` that this process's devices hold
  when it is split along ``axis_name`` of ``mesh`` (all of them in a
  one-process run). A process's devices must sit together along the axis
  (``cljax.experiment`` orders the mesh's devices by process)."""
  order = [d.process_index for d in mesh.devices.flat]
  mine = [i for i, p in enumerate(order) if p == jax.process_index()]
  if len(mine) == len(order):
    return slice(None)
  if mine != list(range(mine[0], mine[-1] + 1)):
    raise ValueError(f"process {jax.process_index()}'s devices are not "
                     f"contiguous along the mesh's {axis_name!r} axis")
  per = n // len(order)
  return slice(mine[0] * per, (mine[-1] + 1) * per)


def replicate(tree, replicated: NamedSharding):
  """``tree`` placed with the fully replicated sharding ``replicated``
  (arrays already placed so are kept). Across processes, a process-local
  array (e.g. what a method's hook returned) goes through the host, as
  devices of different processes do not exchange buffers directly; every
  process must pass the same values."""
  if jax.process_count() == 1:
    return jax.device_put(tree, replicated)

  def place(a):
    if isinstance(a, jax.Array) and a.sharding == replicated:
      return a
    if isinstance(a, jax.Array) and jax.dtypes.issubdtype(
        a.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(
          place(jax.random.key_data(a)), impl=jax.random.key_impl(a))
    return jax.make_array_from_process_local_data(replicated, np.asarray(a))
  return jax.tree.map(place, tree)


def on_mesh(mesh: jax.sharding.Mesh | None, tree):
  """``tree``'s arrays placed replicated on ``mesh`` (``replicate``;
  ``None``: ``tree`` as it is), where work traced under
  ``data_axis_mesh(mesh)`` reads them."""
  return tree if mesh is None else replicate(tree, NamedSharding(mesh, P()))


def split_rows(tree, split: NamedSharding):
  """Arrays with a common leading axis, every process holding all rows,
  placed with ``split`` (rows along the mesh's data axis): each process
  contributes only the rows its devices hold."""
  if jax.process_count() == 1:
    return jax.device_put(tree, split)
  mesh, axis = split.mesh, split.spec[0]
  return jax.tree.map(lambda a: jax.make_array_from_process_local_data(
      split, np.asarray(a)[process_share(mesh, axis, len(a))], a.shape),
                      tree)


def one_device(tree):
  """Arrays replicated over a mesh as single-device arrays on this
  process's first device (their first addressable shard), for eager work
  and host data that do not mix with arrays placed on the mesh."""
  def local(a):
    if not isinstance(a, jax.Array) or len(a.sharding.device_set) == 1:
      return a
    assert a.sharding.is_fully_replicated, a.sharding
    return a.addressable_data(0)
  return jax.tree.map(local, tree)
