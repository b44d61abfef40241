"""FitNet, CRD, DKD and AB-init steps against PyTorch steps of the same
methods.

Same tiny networks (resnet14 teacher -> resnet8 student, 10 classes; for
AB's init phase a resnet8x4 teacher, so that every connector is a
regressor), the same weights (the student, FitNet's regressor, AB's
connectors and CRD's embeddings are ported from PyTorch; CRD's initial
memories from JAX), the same batches
(normalised, no augmentation) and, for CRD, the same negatives (the JAX
step's draw, fed to PyTorch's memory as RepDistiller's loader would).
Three SGD steps (momentum 0.9, coupled weight decay 5e-4 on the student
and on every extra module) with RepDistiller's loss ``gamma*CE + alpha*KD
+ beta*L`` (DKD: mdistiller's ``CE + warmup*DKD``; AB's init phase:
RepDistiller's ``init``, the AB loss on the connectors' outputs from the
student's pre-activations, training the connectors and the student's
feature layers) must agree: every loss term within 1e-4 (relative above
1); the student's, the regressor's, the connectors' and the embeddings'
parameters and CRD's memories after three steps within 1e-4 relative.
"""

import pathlib
import sys

import pytest

torch = pytest.importorskip('torch', reason='the parity tests need torch')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
  sys.path.insert(0, str(_ROOT))

from mhkd_jax import (  # noqa: E402
  distill,
  parallel,
  steps,
  train_state,  # noqa: E402
)
from mhkd_jax.configs import test as test_config  # noqa: E402
from mhkd_jax.data import augment, input_pipeline  # noqa: E402
from mhkd_jax.distill import crd as crd_lib  # noqa: E402
from mhkd_jax.distill.base import DataSpec, StepContext, Teacher  # noqa
from mhkd_jax.interop import repdistiller  # noqa: E402
from mhkd_jax.models import create_model  # noqa: E402
from tests.torch_reference import distill_losses as ref  # noqa: E402
from tests.torch_reference import models as torch_models  # noqa: E402

# Not in `make test-fast` (step parity against PyTorch): docs/testing.md.
pytestmark = pytest.mark.slow

NUM_CLASSES, BATCH, STEPS, NUM_TRAIN = 10, 16, 3, 48
MEAN, STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)
LOSS_TOL, PARAM_RTOL = 1e-4, 1e-4
NCE_K = 24
REPORT: dict[str, dict[str, float]] = {}


@pytest.fixture(scope='module', autouse=True)
def _setup():
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)
  for case, diffs in REPORT.items():
    print(f'\n[method parity] {case}: ' + ', '.join(
      f'{k}={v:.2e}' for k, v in diffs.items()))


def _port(torch_module, jax_module):
  nnx.update(jax_module, repdistiller.state_dict_to_nnx_state(
    torch_module.state_dict(), jax_module))


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


def _data():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (NUM_TRAIN, 32, 32, 3), dtype=np.uint8)
  labels = (np.arange(NUM_TRAIN) % NUM_CLASSES).astype(np.int32)
  rng.shuffle(labels)
  return images, labels


def _flat(tree) -> dict[str, np.ndarray]:
  return {'/'.join(map(str, p)): np.array(v.get_value())
          for p, v in nnx.to_flat_state(tree)}


def _rel(a, b):
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


def _run(method_name):
  """Three steps each side; returns the differences found."""
  images, labels = _data()
  config = test_config.get_config()
  config.method = method_name
  config.batch_size = BATCH
  if method_name == 'crd':
    config.crd.nce_k = NCE_K
  if method_name == 'fitnet':
    # Random teachers give hints of ~10; at RepDistiller's beta 100 the
    # first steps blow the student up, and float32 rounding with it.
    config.fitnet.beta = 1.0
  data = DataSpec(NUM_CLASSES, (32, 32, 3), NUM_TRAIN, STEPS, labels)
  method = distill.create_method(config)

  teacher_name = 'resnet8x4' if method_name == 'ab_init' else 'resnet14'
  torch.manual_seed(0)
  t_teacher = torch_models.create_torch_model(teacher_name, NUM_CLASSES)
  t_student = torch_models.create_torch_model('resnet8', NUM_CLASSES)
  _randomize_bn(t_teacher, 1)
  _randomize_bn(t_student, 2)
  j_teacher = nnx.eval_shape(lambda: create_model(
    teacher_name, num_classes=NUM_CLASSES, rngs=nnx.Rngs(9)))
  _port(t_teacher, j_teacher)
  teacher = Teacher(j_teacher, None, name=teacher_name)
  trainable = method.create_trainable(teacher, data, nnx.Rngs(0))
  _port(t_student, trainable.student)

  extras = []  # torch modules trained beside the student
  if method_name == 'fitnet':
    feats = lambda m: m(torch.zeros(2, 3, 32, 32), is_feat=True)[0][2].shape
    t_reg = ref.ConvReg(feats(t_student), feats(t_teacher))
    _randomize_bn(t_reg, 3)
    _port(t_reg, trainable.regressor)
    extras = [t_reg]
  elif method_name == 'crd':
    t_crd = ref.CRDCriterion(
      64, 64, 128, NUM_TRAIN, NCE_K, 0.07, 0.5,
      memory_v1=torch.from_numpy(np.asarray(trainable.memory_s[...])),
      memory_v2=torch.from_numpy(np.asarray(trainable.memory_t[...])),
    )
    _port(t_crd.embed_s, trainable.embed_s)
    _port(t_crd.embed_t, trainable.embed_t)
    extras = [t_crd]
  elif method_name == 'ab_init':
    preacts = lambda m: [f.shape for f in m(
      torch.zeros(2, 3, 32, 32), is_feat=True, preact=True)[0][1:-1]]
    t_conn = ref.Connector(preacts(t_student), preacts(t_teacher))
    _randomize_bn(t_conn, 3)
    for t_reg, j_reg in zip(t_conn.connectors, trainable.connector):
      _port(t_reg, j_reg)
    extras = [t_conn]
  # RepDistiller's init phases train the student's feature modules only.
  students = ([m for name, m in t_student.named_children() if name != 'fc']
              if method_name == 'ab_init' else [t_student])
  params = [p for m in [*students, *extras] for p in m.parameters()]
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

  worst_term = 0.0
  for i in range(STEPS):
    rows = np.arange(i * BATCH, (i + 1) * BATCH)
    x = np.asarray(augment.normalize(images[rows], MEAN, STD))
    batch = parallel.replicate(
      input_pipeline.Batch(x, labels[rows], rows.astype(np.int32)), mesh)
    if method_name == 'crd':
      # The negatives the JAX step draws at this step, for PyTorch too.
      live = nnx.merge(graphdef, state.params, state.buffers)
      ctx_rng = train_state.method_rng(state.rng, jnp.int32(i))
      negatives = crd_lib._draw_negatives(  # pylint: disable=protected-access
        live, batch, NCE_K, ctx_rng)
      contrast_idx = np.concatenate(
        [rows[:, None], np.asarray(negatives)], axis=1)
    state, metrics = train_step(state, batch, t_state)
    j_terms = jax.device_get(metrics)

    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    yt = torch.from_numpy(labels[rows].astype(np.int64))
    t_student.train()
    t_teacher.eval()
    preact = method_name == 'ab_init'
    feat_s, logit_s = t_student(xt, is_feat=True, preact=preact)
    with torch.no_grad():
      feat_t, logit_t = t_teacher(xt, is_feat=True, preact=preact)
    t_terms = {'ce': torch.nn.functional.cross_entropy(logit_s, yt),
               'kd/logits': ref.distill_kl(logit_s, logit_t, 4.0)}
    if method_name == 'fitnet':
      t_reg.train()
      t_terms['hint/stage'] = ref.hint_loss(t_reg(feat_s[2]), feat_t[2])
      loss = t_terms['ce'] + config.fitnet.beta * t_terms['hint/stage']
    elif method_name == 'crd':
      t_terms['crd/pooled'] = t_crd(
        feat_s[-1], feat_t[-1], torch.from_numpy(rows),
        torch.from_numpy(contrast_idx)).reshape(())
      loss = t_terms['ce'] + 0.8 * t_terms['crd/pooled']
    elif method_name == 'ab_init':
      t_terms = {'ab/preacts': ref.ab_loss(t_conn(feat_s[1:-1]),
                                           feat_t[1:-1])}
      loss = t_terms['ab/preacts']
    else:  # dkd, first epoch: warm-up 1/20; no KD term of its own
      del t_terms['kd/logits']
      t_terms['dkd/logits'] = ref.dkd_loss(logit_s, logit_t, yt, 1.0, 8.0,
                                           4.0)
      loss = t_terms['ce'] + ref.dkd_warmup_factor(1, 20) * (
        t_terms['dkd/logits'])
    t_terms['loss'] = loss
    opt.zero_grad()
    loss.backward()
    opt.step()
    for key, value in t_terms.items():
      diff = abs(float(j_terms[key]) - float(value))
      diff /= max(1.0, abs(float(value)))  # absolute below 1, else relative
      worst_term = max(worst_term, diff)
      assert diff <= LOSS_TOL, (method_name, i, key, float(j_terms[key]),
                                float(value))

  trained = nnx.merge(graphdef, state.params, state.buffers)
  diffs = {'loss terms': worst_term}
  pairs = [(t_student, trained.student, 'student')]
  if method_name == 'fitnet':
    pairs.append((t_reg, trained.regressor, 'regressor'))
  if method_name == 'ab_init':
    pairs += [(t_reg, j_reg, f'connector {i}') for i, (t_reg, j_reg) in
              enumerate(zip(t_conn.connectors, trained.connector))]
  if method_name == 'crd':
    pairs += [(t_crd.embed_s, trained.embed_s, 'embed_s'),
              (t_crd.embed_t, trained.embed_t, 'embed_t')]
  for t_module, j_module, name in pairs:
    want = _flat(nnx.state(j_module, nnx.Param))
    got = _flat(repdistiller.state_dict_to_nnx_state(
      t_module.state_dict(), j_module))
    worst = max(_rel(got[k], want[k]) for k in want)
    diffs[f'{name} params'] = worst
    assert worst <= PARAM_RTOL, (method_name, name, worst)
  if method_name == 'crd':
    for j_mem, t_mem in ((trained.memory_s, t_crd.contrast.memory_v1),
                         (trained.memory_t, t_crd.contrast.memory_v2)):
      worst = _rel(np.asarray(j_mem[...]), t_mem.numpy())
      diffs['memory'] = max(diffs.get('memory', 0.0), worst)
      assert worst <= PARAM_RTOL, (method_name, 'memory', worst)
    np.testing.assert_allclose(float(trained.z_s[...]),
                               t_crd.contrast.Z_v1, rtol=1e-5)
    np.testing.assert_allclose(float(trained.z_t[...]),
                               t_crd.contrast.Z_v2, rtol=1e-5)
  REPORT[method_name] = diffs
  return diffs


@pytest.mark.parametrize('method_name', ['fitnet', 'crd', 'dkd', 'ab_init'])
def test_step_matches_pytorch(method_name):
  with jax.default_matmul_precision('highest'):
    _run(method_name)


@pytest.mark.parametrize('s_size, t_size', [(8, 16), (16, 8), (10, 8)])
def test_fitnet_regressor_matches_convreg_for_every_size_rule(s_size,
                                                               t_size):
  """Half (transposed conv), twice (strided conv), larger (valid conv)."""
  from mhkd_jax.distill import fitnet  # noqa: PLC0415

  torch.manual_seed(4)
  t_reg = ref.ConvReg((2, 6, s_size, s_size), (2, 5, t_size, t_size))
  _randomize_bn(t_reg, 5)
  j_reg = fitnet.ConvReg((2, s_size, s_size, 6), (2, t_size, t_size, 5),
                         rngs=nnx.Rngs(0))
  sd = t_reg.state_dict()
  if s_size * 2 == t_size:  # ConvTranspose2d weight: (in, out, kH, kW)
    kernel = sd.pop('conv.weight').numpy().transpose(2, 3, 0, 1)
    j_reg.conv.kernel[...] = jnp.asarray(kernel)
    j_reg.conv.bias[...] = jnp.asarray(sd.pop('conv.bias').numpy())
    bn = repdistiller.state_dict_to_nnx_state(
      {k[3:]: v for k, v in sd.items() if k.startswith('bn.')}, j_reg.bn)
    nnx.update(j_reg.bn, bn)
  else:
    _port(t_reg, j_reg)
  x = np.random.default_rng(6).standard_normal(
    (2, s_size, s_size, 6)).astype(np.float32)
  t_reg.eval()
  with torch.no_grad():
    want = t_reg(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
  got = np.asarray(j_reg(jnp.asarray(x), train=False))
  assert got.shape == (2, t_size, t_size, 5)
  np.testing.assert_allclose(got.transpose(0, 3, 1, 2), want, atol=1e-5)
