"""Device mesh and shardings: one `data` axis over every device of every host.

The train step is jitted once with these shardings (no pmap), so the same
code runs on one CPU, 8 fake CPU devices, a GPU or a pod slice. Under jit a
BatchNorm over the sharded batch sees the whole global batch.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh over `devices` (default: all devices of all processes)."""
  return Mesh(np.asarray(devices or jax.devices()), ("data",))


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the devices."""
  return NamedSharding(mesh, P("data"))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(local_batch, mesh: Mesh):
  """This process's numpy batch -> global jax arrays sharded over `data`."""
  sharding = data_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
      local_batch)
