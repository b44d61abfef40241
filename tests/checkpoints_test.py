"""Teacher checkpoints: round trip of weights, heads and statistics."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mhkd_jax.models import create_model, heads
from mhkd_jax.run import checkpoints


def _weights(module):
  return jax.tree.leaves(nnx.state(module, (nnx.Param, nnx.BatchStat)))


def test_teacher_round_trip_after_direct_calls(tmp_path):
  model = create_model('resnet8', num_classes=10, rngs=nnx.Rngs(3))
  aux = heads.create_heads(
    'light', model, None, num_classes=10, input_shape=(1, 32, 32, 3),
    width=8, rngs=nnx.Rngs(4),
  )
  x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
  # A direct train-mode call moves the BatchNorm statistics and leaves sown
  # activations on the model; only the former belong in the checkpoint.
  model(x, train=True)
  assert nnx.state(model, nnx.Intermediate)
  checkpoints.save_teacher(
    str(tmp_path), model, aux, model_name='resnet8', num_classes=10
  )
  teacher = checkpoints.load_teacher(str(tmp_path))
  assert teacher.name == 'resnet8'
  assert teacher.heads.spec == aux.spec
  assert not nnx.state(teacher.model, nnx.Intermediate)
  for module, loaded in ((model, teacher.model), (aux, teacher.heads)):
    want, got = _weights(module), _weights(loaded)
    assert len(want) == len(got) > 0
    for w, g in zip(want, got):
      np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
  np.testing.assert_array_equal(
    teacher.model(x, train=False), model(x, train=False)
  )
  # The statistics were not those of a fresh model.
  fresh = create_model('resnet8', num_classes=10, rngs=nnx.Rngs(3))
  assert not jnp.allclose(
    nnx.state(teacher.model, nnx.BatchStat)['bn1']['mean'][...],
    nnx.state(fresh, nnx.BatchStat)['bn1']['mean'][...],
  )
