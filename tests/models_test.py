"""Tests for the model zoo.

Ground truth is ``repdistiller_models.json`` (PyTorch state_dict names and
shapes, trainable parameter counts and ``forward(x, is_feat=True)`` feature
shapes of every RepDistiller model), plus torchvision's parameter counts
for the ImageNet ResNets. Shapes are checked without compute
(``nnx.eval_shape``/abstract forwards); a few small models run for real to
check values that shapes cannot (pre- vs post-ReLU features, train mode).
"""

import functools
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mhkd_jax.models import MODEL_NAMES, create_model, layers, vgg, wrn

_SPEC_NAME = 'repdistiller_models.json'
_REPO = pathlib.Path(__file__).resolve().parents[1]


def _find_spec() -> pathlib.Path:
  """The JSON lives in the shared specs; a copy in the repo wins."""
  candidates = [
    os.environ.get('MHKD_SPECS_DIR', ''),
    _REPO / 'tests' / 'testdata',
    _REPO / 'specs',
    _REPO / 'shared' / 'specs',
    _REPO.parent / 'shared' / 'specs',
  ]
  for directory in candidates:
    if directory and (pathlib.Path(directory) / _SPEC_NAME).is_file():
      return pathlib.Path(directory) / _SPEC_NAME
  raise FileNotFoundError(f'{_SPEC_NAME} not found in {candidates}')


SPEC = json.loads(_find_spec().read_text())
CIFAR_NAMES = tuple(SPEC)
# torchvision's counts with 1000 classes.
IMAGENET_PARAMS = {
  'imagenet_resnet18': 11_689_512,
  'imagenet_resnet34': 21_797_672,
}
IMAGENET_BLOCKS = {
  'imagenet_resnet18': (2, 2, 2, 2),
  'imagenet_resnet34': (3, 4, 6, 3),
}
CIFAR_INPUT = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
IMAGENET_INPUT = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)


@functools.cache
def _abstract(name: str, num_classes: int = 100) -> nnx.Module:
  """The model with ShapeDtypeStructs for arrays: no init compute."""
  return nnx.eval_shape(
    lambda: create_model(name, num_classes=num_classes, rngs=nnx.Rngs(0))
  )


def _unwrap(captured: nnx.State) -> dict[str, jax.Array]:
  """Sown values come back as 1-tuples (inside Variables)."""
  out = {}
  for name, value in captured.items():
    value = value.get_value() if hasattr(value, 'get_value') else value
    assert isinstance(value, tuple) and len(value) == 1, (name, value)
    out[name] = value[0]
  return out


def _forward(model, x, *, train: bool = False):
  """(logits, features) of one forward, features unwrapped."""
  logits, captured = nnx.capture(
    lambda m, inputs: m(inputs, train=train), nnx.Intermediate
  )(model, x)
  return logits, _unwrap(captured)


@functools.cache
def _abstract_forward(name: str, input_shape: tuple[int, ...]):
  """Shapes of logits and every feature, from an abstract forward."""
  x = jax.ShapeDtypeStruct(input_shape, jnp.float32)
  logits, feats = nnx.eval_shape(_forward, _abstract(name), x)
  return logits.shape, {k: tuple(v.shape) for k, v in feats.items()}


def _num_params(model: nnx.Module) -> int:
  return sum(v.size for v in jax.tree.leaves(nnx.state(model, nnx.Param)))


# --- The NNX <-> PyTorch state_dict name map (what the importer relies on).

# NNX leaf name -> PyTorch leaf name, per variable type.
_PARAM_LEAF = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias'}
_STAT_LEAF = {'mean': 'running_mean', 'var': 'running_var'}


def _torch_shape(leaf: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  """HWIO -> OIHW (I is in_channels/groups); (in, out) -> (out, in)."""
  if leaf == 'kernel' and len(shape) == 4:
    h, w, i, o = shape
    return (o, i, h, w)
  if leaf == 'kernel' and len(shape) == 2:
    return (shape[1], shape[0])
  return tuple(shape)


def torch_state_dict_shapes(model: nnx.Module) -> dict[str, tuple]:
  """The PyTorch state_dict (minus num_batches_tracked) the model implies.

  Every path element (attribute name or container index) is joined with
  '.' after str(); only the leaf is renamed.
  """
  out = {}
  for kind, leaves in ((nnx.Param, _PARAM_LEAF), (nnx.BatchStat, _STAT_LEAF)):
    for path, var in nnx.to_flat_state(nnx.state(model, kind)):
      *prefix, leaf = path
      assert leaf in leaves, (path, kind)
      key = '.'.join([str(p) for p in prefix] + [leaves[leaf]])
      assert key not in out, f'two NNX variables map onto {key}'
      out[key] = _torch_shape(leaf, tuple(var.shape))
  return out


def _json_state_dict(name: str) -> dict[str, tuple]:
  return {
    key: tuple(shape)
    for key, shape, _ in SPEC[name]['state_dict']
    if not key.endswith('num_batches_tracked')
  }


def _torchvision_resnet_state_dict(
  blocks: tuple[int, ...], num_classes: int
) -> dict[str, tuple]:
  """torchvision's BasicBlock ResNet state_dict, written from its layout."""

  def bn(prefix, c):
    return {
      f'{prefix}.{leaf}': (c,)
      for leaf in ('weight', 'bias', 'running_mean', 'running_var')
    }

  sd = {'conv1.weight': (64, 3, 7, 7), **bn('bn1', 64)}
  inplanes = 64
  for i, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks)):
    for b in range(n):
      p = f'layer{i + 1}.{b}'
      sd[f'{p}.conv1.weight'] = (planes, inplanes, 3, 3)
      sd.update(bn(f'{p}.bn1', planes))
      sd[f'{p}.conv2.weight'] = (planes, planes, 3, 3)
      sd.update(bn(f'{p}.bn2', planes))
      if b == 0 and i > 0:
        sd[f'{p}.downsample.0.weight'] = (planes, inplanes, 1, 1)
        sd.update(bn(f'{p}.downsample.1', planes))
      inplanes = planes
  sd['fc.weight'] = (num_classes, 512)
  sd['fc.bias'] = (num_classes,)
  return sd


# --- Registry.


def test_registry_has_every_model():
  assert set(MODEL_NAMES) == set(CIFAR_NAMES) | set(IMAGENET_PARAMS)


def test_unknown_model_lists_valid_names():
  with pytest.raises(ValueError, match='nope') as info:
    create_model('nope', num_classes=10, rngs=nnx.Rngs(0))
  for name in ('resnet8', 'wrn_40_2', 'vgg13', 'ShuffleV2', 'ResNet50'):
    assert name in str(info.value)


# --- Parameter counts, state_dict map, features: every CIFAR model.


@pytest.mark.parametrize('name', CIFAR_NAMES)
def test_num_params_match_repdistiller(name):
  assert _num_params(_abstract(name)) == SPEC[name]['num_params']


@pytest.mark.parametrize('name', CIFAR_NAMES)
def test_state_maps_one_to_one_onto_state_dict(name):
  model = _abstract(name)
  # Nothing but Params and BatchStats: an importer that fills those two
  # leaves no variable at its init value.
  other = nnx.state(model, nnx.Not(nnx.Any(nnx.Param, nnx.BatchStat)))
  assert not jax.tree.leaves(other)
  assert torch_state_dict_shapes(model) == _json_state_dict(name)


@pytest.mark.parametrize('name', CIFAR_NAMES)
def test_features_match_repdistiller(name):
  logits_shape, feats = _abstract_forward(name, CIFAR_INPUT.shape)
  assert list(logits_shape) == SPEC[name]['logits_shape']
  expected = SPEC[name]['features']
  names = (
    ['stem'] + [f'stage{i}' for i in range(1, len(expected) - 1)] + ['pooled']
  )
  # Every stage also sows its pre-activation (AB's feature), of its shape.
  preacts = [n.replace('stage', 'preact') for n in names[1:-1]]
  assert set(feats) == set(names + preacts)
  for feat_name, nchw in zip(names, expected):
    nhwc = (
      tuple(nchw) if len(nchw) == 2 else tuple(nchw[i] for i in (0, 2, 3, 1))
    )
    assert feats[feat_name] == nhwc, feat_name
    preact = feat_name.replace('stage', 'preact')
    if preact in preacts:
      assert feats[preact] == nhwc, preact


# --- ImageNet ResNets (torchvision layout).


@pytest.mark.parametrize('name', sorted(IMAGENET_PARAMS))
def test_imagenet_resnet_params_and_names(name):
  model = _abstract(name, 1000)
  assert _num_params(model) == IMAGENET_PARAMS[name]
  assert torch_state_dict_shapes(model) == _torchvision_resnet_state_dict(
    IMAGENET_BLOCKS[name], 1000
  )


@pytest.mark.parametrize('name', sorted(IMAGENET_PARAMS))
def test_imagenet_resnet_features(name):
  logits_shape, feats = _abstract_forward(name, IMAGENET_INPUT.shape)
  assert logits_shape == (2, 100)
  stages = {
    'stage1': (2, 56, 56, 64),
    'stage2': (2, 28, 28, 128),
    'stage3': (2, 14, 14, 256),
    'stage4': (2, 7, 7, 512),
  }
  assert feats == {
    'stem': (2, 112, 112, 64),  # before the max-pool
    **stages,
    **{k.replace('stage', 'preact'): v for k, v in stages.items()},
    'pooled': (2, 512),
  }


# --- Real forwards of small models: values shapes cannot show.


def _images(seed: int = 0) -> jax.Array:
  return jax.random.normal(jax.random.key(seed), CIFAR_INPUT.shape)


def _materialize(name: str, seed: int = 0) -> nnx.Module:
  """A concrete model filled from numpy, skipping the slow eager init.

  Eager init compiles one random op per distinct shape (~0.2 s each on
  CPU); He-scaled kernels with identity BatchNorms give the same
  qualitative activations, which is all these tests look at.
  """
  graphdef, state = nnx.split(_abstract(name))
  rng = np.random.default_rng(seed)

  def fill(path, x):
    leaf = [p.key for p in path if isinstance(p, jax.tree_util.DictKey)][-1]
    if leaf == 'kernel':
      fan_in = int(np.prod(x.shape[:-1]))
      value = rng.normal(0, np.sqrt(2 / fan_in), x.shape)
    elif leaf in ('scale', 'var'):
      value = np.ones(x.shape)
    else:
      value = np.zeros(x.shape)
    return jnp.asarray(value, x.dtype)

  return nnx.merge(graphdef, jax.tree.map_with_path(fill, state))


def _run(model: nnx.Module, x: jax.Array, *, train: bool):
  """Jitted ``_forward`` (eager op-by-op dispatch is slow); updates model."""
  graphdef, state = nnx.split(model)

  @jax.jit
  def run(state, x):
    m = nnx.merge(graphdef, state)
    out = _forward(m, x, train=train)
    return out, nnx.state(m)

  out, new_state = run(state, x)
  nnx.update(model, new_state)
  return out


@functools.cache
def _eval_run(name: str):
  return _run(_materialize(name), _images(), train=False)


@pytest.mark.parametrize('name', ['wrn_16_1', 'vgg8', 'MobileNetV2'])
def test_eval_forward_is_finite_and_matches_abstract_shapes(name):
  logits, feats = _eval_run(name)
  logits_shape, shapes = _abstract_forward(name, CIFAR_INPUT.shape)
  assert logits.shape == logits_shape
  assert {k: v.shape for k, v in feats.items()} == shapes
  assert np.isfinite(np.asarray(logits)).all()


def test_wrn_last_stage_is_before_final_bn_relu():
  _, feats = _eval_run('wrn_16_1')
  # stem and all stages are raw conv/residual outputs: they go negative.
  for name in ('stem', 'stage1', 'stage2', 'stage3'):
    assert float(feats[name].min()) < 0, name
  assert float(feats['pooled'].min()) >= 0


def test_vgg_features_are_post_relu_and_preacts_are_not():
  _, feats = _eval_run('vgg8')
  for name in ('stem', 'stage1', 'stage2', 'stage3', 'stage4', 'pooled'):
    assert float(feats[name].min()) >= 0, name
  for k in range(1, 5):
    assert float(feats[f'preact{k}'].min()) < 0, k
    np.testing.assert_array_equal(
      np.maximum(feats[f'preact{k}'], 0), feats[f'stage{k}']
    )


def test_mobilenetv2_stage_features_have_no_relu():
  _, feats = _eval_run('MobileNetV2')
  assert float(feats['stem'].min()) >= 0
  for name in ('stage1', 'stage2', 'stage3', 'stage4'):
    assert float(feats[name].min()) < 0, name


def test_train_mode_uses_batch_stats_and_updates_them():
  model = _materialize('wrn_16_1', seed=1)
  x = _images(1) * 3.0 + 1.0
  params = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))
  stats = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))

  eval_logits, _ = _run(model, x, train=False)
  # Eval mode leaves the running statistics alone.
  jax.tree.map(
    np.testing.assert_array_equal,
    stats,
    jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat)),
  )

  train_logits, feats = _run(model, x, train=True)
  assert train_logits.shape == (2, 100)
  assert feats['stage3'].shape == (2, 8, 8, 64)
  assert not np.allclose(train_logits, eval_logits)
  # Flax momentum 0.9 == PyTorch momentum 0.1: after one step block1's
  # first BN (which sees the stem) holds 0.1 * the stem's batch mean.
  stem = np.asarray(feats['stem'])
  bn = model.block1.layer[0].bn1
  np.testing.assert_allclose(
    np.asarray(bn.mean[...]),
    0.1 * stem.mean(axis=(0, 1, 2)),
    rtol=1e-4,
    atol=1e-6,
  )
  jax.tree.map(
    np.testing.assert_array_equal,
    params,
    jax.tree.map(np.asarray, nnx.state(model, nnx.Param)),
  )


def test_wrn_init_follows_repdistiller():
  # One block and the head, not a whole model: eager init compiles one
  # random op per distinct shape.
  block = wrn.BasicBlock(16, 64, 2, rngs=nnx.Rngs(0))
  # normal(0, sqrt(2 / (k * k * out_channels))).
  kernel = np.asarray(block.conv2.kernel[...])
  np.testing.assert_allclose(kernel.std(), np.sqrt(2 / (9 * 64)), rtol=0.05)
  np.testing.assert_array_equal(np.asarray(block.bn1.scale[...]), 1)
  np.testing.assert_array_equal(np.asarray(block.bn1.bias[...]), 0)
  fc = _abstract('wrn_16_1').fc
  assert fc.bias.get_value().shape == (100,)
  head = layers.linear_zero_bias(64, 100, rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(np.asarray(head.bias[...]), 0)
  # PyTorch's default weight: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
  assert np.abs(np.asarray(head.kernel[...])).max() <= 1 / 8


def test_vgg_and_mobilenet_init_zero_biases_and_small_classifier():
  conv = vgg._conv(3, 8, rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(np.asarray(conv.bias[...]), 0)
  head = layers.linear_zero_bias(
    512, 100, kernel_init=layers.normal_001, rngs=nnx.Rngs(0)
  )
  np.testing.assert_allclose(
    np.asarray(head.kernel[...]).std(), 0.01, rtol=0.05
  )
  np.testing.assert_array_equal(np.asarray(head.bias[...]), 0)


# --- Helpers with PyTorch semantics.


def test_channel_shuffle_matches_torch_view_permute():
  n, c, h, w, g = 2, 12, 3, 3, 3
  nchw = np.arange(n * c * h * w, dtype=np.float32).reshape(n, c, h, w)
  # torch: x.view(N, g, C/g, H, W).permute(0, 2, 1, 3, 4).reshape(N, C, H, W)
  expected = (
    nchw.reshape(n, g, c // g, h, w)
    .transpose(0, 2, 1, 3, 4)
    .reshape(nchw.shape)
  )
  got = layers.channel_shuffle(jnp.asarray(nchw.transpose(0, 2, 3, 1)), g)
  np.testing.assert_array_equal(np.asarray(got), expected.transpose(0, 2, 3, 1))


def test_shufflev1_first_block_conv1_is_ungrouped():
  model = _abstract('ShuffleV1')
  block = model.layer1[0]
  assert block.conv1.feature_group_count == 1
  assert block.conv3.feature_group_count == 3
  assert model.layer2[0].conv1.feature_group_count == 3
