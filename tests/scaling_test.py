"""experiments/scaling.py: the all-reduce bytes it reads and its model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from experiments import scaling
from mhkd_jax import parallel


def test_all_reduce_bytes_of_a_compiled_data_parallel_sum():
  # A gradient-like reduction over the batch axis: each device sums its
  # rows, then one all-reduce of a [3, 5] float32 and one of an int32 [].
  mesh = parallel.create_mesh(8)
  x = jax.device_put(np.ones((16, 3, 5), np.float32),
                     NamedSharding(mesh, P('data')))
  y = jax.device_put(np.ones((16,), np.int32), NamedSharding(mesh, P('data')))
  f = jax.jit(lambda x, y: (x.sum(0), y.sum()),
              out_shardings=NamedSharding(mesh, P()))
  compiled = f.lower(x, y).compile()
  sizes = scaling.all_reduces(compiled.as_text())
  assert sum(sizes) == 3 * 5 * 4 + 4
  out = f(x, y)
  np.testing.assert_array_equal(out[0], jnp.full((3, 5), 16.0))


def test_all_reduce_parser_on_tuples_and_async_starts():
  hlo = '\n'.join([
    '  %a = f32[128,64]{1,0} all-reduce(f32[128,64]{1,0} %p), to_apply=%s',
    '  %b = (f32[10]{0}, bf16[4,4]{1,0}) all-reduce-start(%q, %r)',
    '  %c = f32[7]{0} add(f32[7]{0} %x, f32[7]{0} %y)',
  ])
  assert scaling.all_reduces(hlo) == [128 * 64 * 4, 10 * 4 + 16 * 2]


def test_step_time_model_by_hand():
  chip = {'peak': 100e12, 'allreduce_bw': 100e9}
  # 1 chip: compute only, 50 GFLOP at 25% of 100 TFLOP/s = 2 ms.
  assert scaling.step_time(50e9, [10**6], 1, chip, 0.25, 1e-5) == (
    pytest.approx(2e-3), 0.0)
  # 4 chips, ring all-reduce: 2 * 3/4 * 1 MB / 100 GB/s = 15 us, + 10 us.
  compute, comm = scaling.step_time(50e9, [10**6], 4, chip, 0.25, 1e-5)
  assert compute == pytest.approx(2e-3)
  assert comm == pytest.approx(25e-6)
