"""ReviewKD against its sources.

- The settings read from the networks equal the per-architecture tables
  of mdistiller's configs (resnet32x4 -> resnet8x4, ResNet34 -> ResNet18)
  and of the ReviewKD authors' ``build_review_kd`` (the other CIFAR-100
  students) for every pair of the CRD table.
- The nearest-neighbour resize equals ``F.interpolate(mode='nearest')``.
- The review (every ABF, fusion and resize, in train mode) and the loss
  on a student whose maps are half the teacher's (so every level is
  resized, as for the ShuffleNet and MobileNetV2 students) equal our
  PyTorch port of mdistiller's distiller (``tests/torch_reference/
  reviewkd.py``), their gradients too.
- Three SGD steps of the JAX method (resnet14 -> resnet8, 10 classes)
  equal three steps of the PyTorch distiller: every loss term within 1e-4
  (relative above 1), the student's and the ABFs' parameters and
  BatchNorm running means within 1e-4 relative.
"""

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
  sys.path.insert(0, str(_ROOT))

from mhkd_jax import distill, losses, parallel, steps, train_state  # noqa
from mhkd_jax.configs import cifar100, imagenet_resnet34_resnet18  # noqa
from mhkd_jax.configs import test as test_config  # noqa: E402
from mhkd_jax.data import augment, input_pipeline  # noqa: E402
from mhkd_jax.distill import reviewkd  # noqa: E402
from mhkd_jax.distill.base import DataSpec, Teacher  # noqa: E402
from mhkd_jax.models import create_model, features  # noqa: E402
from mhkd_jax.run import errors, validation  # noqa: E402

CIFAR = DataSpec(100, (32, 32, 3), 50000, 781)
IMAGENET = DataSpec(1000, (224, 224, 3), 1281167, 5004)

# The authors' settings, as they write them: in/out channels shallow to
# deep (the last is the pooled feature), shapes/out_shapes deepest first.
# mdistiller's CFG.REVIEWKD defaults are resnet8x4's; build_review_kd
# (dvlab-research/ReviewKD, CIFAR-100/model/reviewkd.py) has the rest.
_X4 = ([64, 128, 256, 256], [1, 8, 16, 32])
_RESNET = ([16, 32, 64, 64], [1, 8, 16, 32])
_VGG = [128, 256, 512, 512, 512]
_R50 = ([256, 512, 1024, 2048, 2048], [1, 4, 8, 16, 32])
AUTHORS = {  # (teacher, student): in, out, shapes, out_shapes
  ('resnet32x4', 'resnet8x4'): (_X4[0], _X4[0], _X4[1], _X4[1]),
  ('resnet56', 'resnet20'): (_RESNET[0], _RESNET[0], _RESNET[1],
                             _RESNET[1]),
  ('resnet110', 'resnet20'): (_RESNET[0], _RESNET[0], _RESNET[1],
                              _RESNET[1]),
  ('resnet110', 'resnet32'): (_RESNET[0], _RESNET[0], _RESNET[1],
                              _RESNET[1]),
  ('wrn_40_2', 'wrn_16_2'): ([32, 64, 128, 128], [32, 64, 128, 128],
                             [1, 8, 16, 32], [1, 8, 16, 32]),
  ('wrn_40_2', 'wrn_40_1'): ([16, 32, 64, 64], [32, 64, 128, 128],
                             [1, 8, 16, 32], [1, 8, 16, 32]),
  ('vgg13', 'vgg8'): (_VGG, _VGG, [1, 4, 4, 8, 16], [1, 4, 4, 8, 16]),
  ('ResNet50', 'vgg8'): (_VGG, _R50[0], [1, 4, 4, 8, 16], _R50[1]),
  ('vgg13', 'MobileNetV2'): ([12, 16, 48, 160, 1280], _VGG,
                             [1, 2, 4, 8, 16], [1, 4, 4, 8, 16]),
  ('ResNet50', 'MobileNetV2'): ([12, 16, 48, 160, 1280], _R50[0],
                                [1, 2, 4, 8, 16], _R50[1]),
  ('resnet32x4', 'ShuffleV1'): ([240, 480, 960, 960], _X4[0],
                                [1, 4, 8, 16], _X4[1]),
  ('wrn_40_2', 'ShuffleV1'): ([240, 480, 960, 960], [32, 64, 128, 128],
                              [1, 4, 8, 16], [1, 8, 16, 32]),
  ('resnet32x4', 'ShuffleV2'): ([116, 232, 464, 1024], _X4[0],
                                [1, 4, 8, 16], _X4[1]),
}
# mdistiller's configs/imagenet/r34_r18/reviewkd.yaml.
IMAGENET_AUTHORS = ([64, 128, 256, 512, 512], [64, 128, 256, 512, 512],
                    [1, 7, 14, 28, 56], [1, 7, 14, 28, 56])


def _trainable(config, teacher_name, data):
  t_model = nnx.eval_shape(lambda: create_model(
    teacher_name, num_classes=data.num_classes, rngs=nnx.Rngs(0)))
  method = distill.create_method(config)
  return nnx.eval_shape(lambda: method.create_trainable(
    Teacher(t_model, None, name=teacher_name), data, nnx.Rngs(0)))


def _settings(trainable, data):
  """(in, out, shapes, out_shapes) as the authors write them."""
  abfs = trainable.abfs
  ins = [abf.conv1[0].kernel.shape[2] for abf in abfs]
  outs = [abf.conv2[0].kernel.shape[3] for abf in abfs]
  shapes = features.feature_shapes(trainable.student, data.input_shape)
  sizes = [shapes[s][1] if s != 'pooled' else 1
           for s, _ in trainable.pairs]
  return ins, outs, sizes[::-1], [h for h, _ in trainable.out_sizes][::-1]


@pytest.mark.slow  # ~30 s here: out of `make test-fast`
def test_settings_equal_the_authors_tables_for_every_pair():
  assert set(AUTHORS) == set(cifar100.PAIRS)
  for (teacher, student), want in AUTHORS.items():
    config = cifar100.get_config(f'{teacher}-{student},reviewkd')
    validation.validate(config)
    trainable = _trainable(config, teacher, CIFAR)
    assert _settings(trainable, CIFAR) == want, (teacher, student)
    ins = want[0]
    # mdistiller's mid channel: the pooled width, at most 512.
    assert trainable.abfs[0].conv1[0].kernel.shape[3] == min(512, ins[-1])
    # Every level but the deepest fuses with the one below.
    assert [abf.att_conv is not None for abf in trainable.abfs] == (
      [True] * (len(ins) - 1) + [False])
  config = imagenet_resnet34_resnet18.get_config('reviewkd')
  validation.validate(config)
  trainable = _trainable(config, 'imagenet_resnet34', IMAGENET)
  assert trainable.pairs[0] == ('preact1', 'preact1')  # STU_PREACT
  assert _settings(trainable, IMAGENET) == IMAGENET_AUTHORS


def test_configs_carry_the_published_weights():
  weight = lambda cell: cifar100.get_config(cell).reviewkd.reviewkd_weight
  assert weight('resnet32x4-resnet8x4,reviewkd') == 5.0  # mdistiller
  assert weight('resnet32x4-ShuffleV2,reviewkd') == 8.0  # the authors'
  assert weight('resnet56-resnet20,reviewkd') == 0.6
  assert weight('resnet110-resnet32,reviewkd') == 1.0
  assert weight('vgg13-vgg8,reviewkd') == 5.0  # no source: mdistiller's
  config = cifar100.get_config('resnet32x4-ShuffleV1,reviewkd')
  assert (config.reviewkd.ce_weight, config.reviewkd.warmup_epochs,
          config.reviewkd.student_preact, config.learning_rate) == (
    1.0, 20, False, 0.01)
  imagenet = imagenet_resnet34_resnet18.get_config('reviewkd').reviewkd
  assert (imagenet.reviewkd_weight, imagenet.warmup_epochs,
          imagenet.student_preact) == (1.0, 1, True)
  assert imagenet_resnet34_resnet18.PUBLISHED['reviewkd'] == 71.61


def test_unequal_stage_counts_name_the_fix():
  config = cifar100.get_config('vgg13-vgg8,reviewkd')
  config.model = 'resnet8x4'
  with pytest.raises(errors.ConfigError,
                     match='student resnet8x4 has 3 stages and the teacher '
                           'vgg13 4'):
    _trainable(config, 'vgg13', CIFAR)


def test_invalid_weights_are_refused():
  config = cifar100.get_config('resnet32x4-resnet8x4,reviewkd')
  config.reviewkd.reviewkd_weight = -1.0
  config.reviewkd.warmup_epochs = -1
  with pytest.raises(errors.ConfigError) as e:
    validation.validate(config)
  assert 'reviewkd.reviewkd_weight' in str(e.value)
  assert 'reviewkd.warmup_epochs' in str(e.value)


# ---------------------------------------------------------------------------
# Against the PyTorch port.

torch = pytest.importorskip('torch', reason='the parity tests need torch')
F = torch.nn.functional

from mhkd_jax.interop import repdistiller  # noqa: E402
from tests.torch_reference import models as torch_models  # noqa: E402
from tests.torch_reference import post_crd_losses as ref_losses  # noqa
from tests.torch_reference import reviewkd as ref  # noqa: E402

LOSS_TOL, PARAM_RTOL = 1e-4, 1e-4
NUM_CLASSES, BATCH, STEPS, NUM_TRAIN = 10, 16, 3, 48


def _nchw(x):
  return torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())


def _nhwc(t):
  return t.detach().numpy().transpose(0, 2, 3, 1)


def _randomize_bn(module, seed):
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in module.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        c = m.num_features
        m.weight.copy_(torch.rand(c, generator=g) + 0.5)
        m.bias.copy_(torch.randn(c, generator=g) * 0.1)
        m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
        m.running_var.copy_(torch.rand(c, generator=g) + 0.5)


def _port(torch_module, jax_module):
  nnx.update(jax_module, repdistiller.state_dict_to_nnx_state(
    torch_module.state_dict(), jax_module))


def _port_review(t_review, j_abfs):
  # The port keeps mdistiller's order (deepest first); ours is shallow
  # first.
  for t_abf, j_abf in zip(t_review.abfs, reversed(list(j_abfs))):
    _port(t_abf, j_abf)


def _flat(tree):
  return {'/'.join(map(str, p)): np.array(v.get_value())
          for p, v in nnx.to_flat_state(tree)}


def _rel(a, b):
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


def _worst_param_diff(t_module, j_module):
  """Over the parameters and the BatchNorm running means. The running
  variances differ by Bessel's n/(n-1), PyTorch's unbiased update
  (tests/step_parity_test.py checks that factor; the ABFs' statistics
  are never used: evaluation runs the student alone)."""
  want = _flat(nnx.state(j_module, nnx.Any(nnx.Param, nnx.BatchStat)))
  got = _flat(repdistiller.state_dict_to_nnx_state(
    t_module.state_dict(), j_module))
  return max(_rel(got[k], want[k]) for k in want if not k.endswith('/var'))


@pytest.mark.parametrize('size, out_size', [
  (1, 4), (4, 8), (8, 4), (2, 4), (7, 14), (16, 8), (3, 5), (5, 3)])
def test_resize_nearest_equals_torch(size, out_size):
  x = np.random.default_rng(size).standard_normal(
    (2, size, size, 3)).astype(np.float32)
  got = reviewkd.resize_nearest(jnp.asarray(x), (out_size, out_size))
  want = F.interpolate(_nchw(x), (out_size, out_size), mode='nearest')
  np.testing.assert_array_equal(np.asarray(got), _nhwc(want))


@pytest.mark.slow  # ~30 s here: out of `make test-fast`
def test_review_and_loss_equal_pytorch_on_resized_levels():
  """Student maps of half the teacher's size: every fused map is
  upsampled before conv2, every residual resized (ShuffleV1-like)."""
  rng = np.random.default_rng(0)
  s_maps = [rng.standard_normal((4, h, h, c)).astype(np.float32)
            for h, c in ((8, 6), (4, 10), (2, 12))]
  s_pooled = rng.standard_normal((4, 12)).astype(np.float32)
  t_maps = [rng.standard_normal((4, h, h, c)).astype(np.float32)
            for h, c in ((16, 4), (8, 6), (4, 8))]
  t_pooled = rng.standard_normal((4, 8)).astype(np.float32)
  in_c, out_c = [6, 10, 12, 12], [4, 6, 8, 8]
  torch.manual_seed(1)
  t_review = ref.ReviewKD(in_c, out_c, shapes=[1, 2, 4, 8],
                          out_shapes=[1, 4, 8, 16])
  _randomize_bn(t_review, 2)
  mid = min(512, in_c[-1])
  j_abfs = nnx.List([reviewkd.ABF(c, mid, o, k < 3, rngs=nnx.Rngs(k))
                     for k, (c, o) in enumerate(zip(in_c, out_c))])
  _port_review(t_review, j_abfs)
  # The JAX method's review on these features.
  method = distill.create_method(_config('reviewkd'))
  names = ('stage1', 'stage2', 'stage3', 'pooled')
  s_feats = dict(zip(names, [*s_maps, s_pooled]))
  t_feats = dict(zip(('preact1', 'preact2', 'preact3', 'pooled'),
                     [*t_maps, t_pooled]))
  pairs = tuple(zip(names, t_feats))
  out_sizes = ((16, 16), (8, 8), (4, 4), (1, 1))

  def loss_fn(abfs):
    part = distill.base.Trainable(abfs=abfs, pairs=pairs,
                                  out_sizes=out_sizes)
    results = method.review(part, s_feats)
    targets = [reviewkd._as_map(t) for t in t_feats.values()]  # noqa: SLF001
    return losses.hcl_loss(results, targets), results

  (j_loss, j_results), grads = nnx.value_and_grad(
    loss_fn, has_aux=True)(j_abfs)

  t_review.train()
  feats_s = [torch.zeros(1), *map(_nchw, s_maps), torch.from_numpy(s_pooled)]
  feats_t = [torch.zeros(1), *map(_nchw, t_maps), torch.from_numpy(t_pooled)]
  t_results = t_review.review(feats_s)
  t_loss = ref_losses.hcl_loss(t_results, ref.targets(feats_t))
  t_loss.backward()
  for got, want in zip(j_results, t_results):
    np.testing.assert_allclose(np.asarray(got), _nhwc(want), atol=2e-5)
  np.testing.assert_allclose(float(j_loss), t_loss.item(), rtol=1e-5)
  t_abfs = list(t_review.abfs)[::-1]  # shallow first, as ours
  for path, grad in nnx.to_flat_state(grads):
    t_param = dict(t_abfs[path[0]].named_parameters())[
      repdistiller.torch_key(path[1:])]
    want = t_param.grad.numpy()
    if want.ndim == 4:  # OIHW -> HWIO
      want = want.transpose(2, 3, 1, 0)
    assert _rel(np.asarray(grad.get_value()), want) <= 1e-4, path


def _config(method_name):
  config = test_config.get_config()
  config.method = method_name
  config.batch_size = BATCH
  return config


def _data():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (NUM_TRAIN, 32, 32, 3), dtype=np.uint8)
  labels = (np.arange(NUM_TRAIN) % NUM_CLASSES).astype(np.int32)
  rng.shuffle(labels)
  return images, labels


@pytest.mark.slow
def test_three_steps_equal_mdistillers_distiller():
  with jax.default_matmul_precision('highest'):
    _three_steps()


def _three_steps():
  images, labels = _data()
  config = _config('reviewkd')
  config.reviewkd.reviewkd_weight = 5.0
  # Warm-up 2: the 1-based first epoch weighs 1/2 (a 0-based one, 0).
  config.reviewkd.warmup_epochs = 2
  data = DataSpec(NUM_CLASSES, (32, 32, 3), NUM_TRAIN, STEPS, labels)
  method = distill.create_method(config)

  torch.manual_seed(0)
  t_teacher = torch_models.create_torch_model('resnet14', NUM_CLASSES)
  t_student = torch_models.create_torch_model('resnet8', NUM_CLASSES)
  _randomize_bn(t_teacher, 1)
  _randomize_bn(t_student, 2)
  t_review = ref.ReviewKD([16, 32, 64, 64], [16, 32, 64, 64],
                          shapes=[1, 8, 16, 32], out_shapes=[1, 8, 16, 32])
  _randomize_bn(t_review, 3)
  j_teacher = nnx.eval_shape(lambda: create_model(
    'resnet14', num_classes=NUM_CLASSES, rngs=nnx.Rngs(9)))
  _port(t_teacher, j_teacher)
  teacher = Teacher(j_teacher, None, name='resnet14')
  trainable = method.create_trainable(teacher, data, nnx.Rngs(0))
  _port(t_student, trainable.student)
  _port_review(t_review, trainable.abfs)

  params = [*t_student.parameters(), *t_review.parameters()]
  opt = torch.optim.SGD(params, lr=config.learning_rate, momentum=0.9,
                        weight_decay=config.weight_decay)
  mesh = parallel.create_mesh(1)
  state, graphdef, tx = train_state.train_state_for(
    trainable, config, steps_per_epoch=STEPS, mesh=mesh,
    trained=method.trained_parameters())
  t_graphdef, t_state = train_state.place_teacher(teacher, config, mesh)
  train_step = steps.create_train_step(
    method=method, graphdef=graphdef, teacher_graphdef=t_graphdef, tx=tx,
    data=data, compiler_options=steps.compiler_options(mesh))

  mean, std = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)
  worst_term = 0.0
  for i in range(STEPS):
    rows = np.arange(i * BATCH, (i + 1) * BATCH)
    x = np.asarray(augment.normalize(images[rows], mean, std))
    batch = parallel.replicate(
      input_pipeline.Batch(x, labels[rows], rows.astype(np.int32)), mesh)
    state, metrics = train_step(state, batch, t_state)
    j_terms = jax.device_get(metrics)

    t_student.train()
    t_review.train()
    t_teacher.eval()
    xt = _nchw(x)
    feats_s, logits_s = t_student(xt, is_feat=True)
    with torch.no_grad():
      feats_t, _ = t_teacher(xt, is_feat=True, preact=True)
    loss, t_terms = ref.reviewkd_loss(
      t_review, feats_s, feats_t, logits_s,
      torch.from_numpy(labels[rows].astype(np.int64)), epoch=1,
      weight=5.0, warmup_epochs=2)
    t_terms['loss'] = loss
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert float(j_terms['reviewkd/warmup']) == 0.5
    for key, value in t_terms.items():
      value = value.item()
      diff = abs(float(j_terms[key]) - value) / max(1.0, abs(value))
      worst_term = max(worst_term, diff)
      assert diff <= LOSS_TOL, (i, key, float(j_terms[key]), value)

  trained = nnx.merge(graphdef, state.params, state.buffers)
  worst = _worst_param_diff(t_student, trained.student)
  assert worst <= PARAM_RTOL, ('student', worst)
  for k, (t_abf, j_abf) in enumerate(
      zip(t_review.abfs, reversed(list(trained.abfs)))):
    diff = _worst_param_diff(t_abf, j_abf)
    assert diff <= PARAM_RTOL, (f'abf {k}', diff)
    worst = max(worst, diff)
  print(f'\n[reviewkd parity] loss terms {worst_term:.2e}, parameters and '
        f'running means {worst:.2e}')
