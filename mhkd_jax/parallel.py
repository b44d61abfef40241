"""Device mesh and shardings: data parallelism through ``jax.jit``.

State is replicated (``P()``) and each batch is split over the ``'data'``
axis; XLA inserts the gradient all-reduce. BatchNorm therefore normalises
with global-batch statistics (SyncBN), where PyTorch DDP's default is
per-GPU statistics.
"""

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mhkd_jax.run import errors

DATA_AXIS = 'data'


def create_mesh(num_devices: int | None = None) -> Mesh:
  """A 1-D ('data',) mesh over all (or the first ``num_devices``) devices."""
  devices = jax.devices()
  if num_devices is not None:
    if num_devices > len(devices):
      raise errors.ConfigError(
        f'Asked for {num_devices} devices; only {len(devices)} are present.'
      )
    devices = devices[:num_devices]
  # Auto axes: shardings are propagated by XLA, not carried in types.
  return jax.make_mesh(
    (len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,),
    devices=devices,
  )


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicate(tree, mesh: Mesh):
  """Puts a host pytree (identical on every process) on all devices."""
  sharding = replicated(mesh)

  def put(x):
    x = np.asarray(x) if not isinstance(x, jax.Array) else x
    if isinstance(x, jax.Array):
      return jax.device_put(x, sharding)
    return jax.make_array_from_process_local_data(sharding, x)

  return jax.tree.map(put, tree)


def process_rows(sharding: NamedSharding, batch_size: int) -> np.ndarray:
  """The rows of a global batch that this process's devices hold, sorted.

  A host-fed input reads and sends only these; with one process they are
  all rows.
  """
  index_map = sharding.addressable_devices_indices_map((batch_size,))
  rows = set()
  for index in index_map.values():
    rows.update(range(*index[0].indices(batch_size)))
  return np.asarray(sorted(rows), np.int64)


def global_batch(
  local: np.ndarray, sharding: NamedSharding, batch_size: int
) -> jax.Array:
  """This process's rows of a batch (``process_rows``) -> the global array."""
  return jax.make_array_from_process_local_data(
    sharding, local, (batch_size,) + local.shape[1:]
  )
