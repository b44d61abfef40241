"""The JAX train step against an independent PyTorch one (RepDistiller).

Same tiny networks (resnet14 teacher -> resnet8 student, 10 classes,
'light' heads of width 16), same weights (PyTorch -> NNX by the importer's
path mapping, for the backbones AND the heads), same batches (augmentation
off: crop padding 0, no flip; torch is fed the JAX-normalised batch). Three
SGD steps (momentum 0.9, coupled weight decay 5e-4) of KD, MHKD with frozen
teacher heads, and MHKD with online teacher heads (and KD and online MHKD
with the JAX teacher's BatchNorms folded; and KD and online MHKD with DOT,
against mdistiller's DOT trainer) must agree: every loss
term within 1e-4, every trained parameter within 1e-4 relative.

BatchNorm running variance: PyTorch updates it with the UNBIASED batch
variance (x n/(n-1), n = batch*H*W), Flax with the biased one. Train-mode
outputs, losses and gradients use the biased batch statistics in both, so
only the running variance differs; the test checks that the difference is
exactly that factor (and reports the raw difference).
"""

import pathlib
import sys

import pytest

torch = pytest.importorskip(
  'torch',
  reason='the PyTorch parity test needs torch: pip install -e .[torch]',
)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # `experiments` is not an installed package.
  sys.path.insert(0, str(_ROOT))

from mhkd_jax import (  # noqa: E402
  distill,
  parallel,
  steps,  # noqa: E402
  train_state,  # noqa: E402
)
from mhkd_jax.configs import test as test_config  # noqa: E402
from mhkd_jax.data import augment, input_pipeline  # noqa: E402
from mhkd_jax.distill.base import DataSpec, Teacher  # noqa: E402
from mhkd_jax.interop import repdistiller  # noqa: E402
from mhkd_jax.models import (  # noqa: E402
  create_model,  # noqa: E402
  fold,
  heads,
)
from tests.torch_reference import heads as torch_heads  # noqa: E402
from tests.torch_reference import models as torch_models  # noqa: E402
from tests.torch_reference import train_step as torch_step  # noqa: E402

# Not in `make test-fast` (step parity against PyTorch): docs/testing.md.
pytestmark = pytest.mark.slow

NUM_CLASSES = 10
BATCH = 16
STEPS = 3
INPUT_SHAPE = (1, 32, 32, 3)
MEAN = (0.5071, 0.4867, 0.4408)
STD = (0.2675, 0.2565, 0.2761)
# Both steps are fed the same normalised batches (no augmentation).
DATA = DataSpec(
  num_classes=NUM_CLASSES, example_shape=(32, 32, 3),
  num_train_examples=BATCH * STEPS, steps_per_epoch=STEPS,
)
LOSS_TOL = 1e-4
PARAM_RTOL = 1e-4
BN_MOMENTUM = 0.1  # PyTorch's; Flax's 0.9.

# case -> {what: max difference}; printed at the end of the module.
REPORT: dict[str, dict[str, float]] = {}

# case -> (method, teacher head mode, teacher BatchNorms folded). The
# folded cases run the JAX step with config.teacher.fold_batchnorm's
# teacher against the same (unfolded) PyTorch teacher: logits for KD,
# stage features for the online teacher heads.
CASES = {
  'kd': ('kd', None, False),
  'mhkd_pretrain': ('mhkd', 'pretrain', False),
  'mhkd_online': ('mhkd', 'online', False),
  'kd_folded_teacher': ('kd', None, True),
  'mhkd_online_folded_teacher': ('mhkd', 'online', True),
  # DOT (config.optimizer.name='dot') against mdistiller's DOT trainer:
  # KD (every parameter gets both gradients) and online MHKD (the student
  # and teacher heads get only the distillation gradient).
  'kd_dot': ('kd', None, False, 'dot'),
  'mhkd_online_dot': ('mhkd', 'online', False, 'dot'),
}


@pytest.fixture(scope='module', autouse=True)
def _one_torch_thread():
  """PyTorch on one thread, so it does not fight XLA's pool for 2 cores."""
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)
  for case, diffs in REPORT.items():
    print(f'\n[step parity] {case}: ' + ', '.join(
      f'{k}={v:.2e}' for k, v in diffs.items()
    ))


def _config(method, mode, optimizer='sgd'):
  config = test_config.get_config()
  config.method = method
  config.optimizer.name = optimizer
  config.batch_size = BATCH
  config.mhkd.head = 'light'
  config.mhkd.head_width = 16
  if mode is not None:
    config.mhkd.teacher_head_mode = mode
  return config


def _randomize_bn(module: torch.nn.Module, seed: int) -> None:
  """BN affine terms and running statistics away from 1/0.

  Fresh BN layers (weight 1, bias 0, mean 0, var 1) would hide a swapped
  scale/bias or mean/var in the port.
  """
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in module.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        c = m.num_features
        m.weight.copy_(torch.rand(c, generator=g) + 0.5)
        m.bias.copy_(torch.randn(c, generator=g) * 0.1)
        m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
        m.running_var.copy_(torch.rand(c, generator=g) + 0.5)


def _port(torch_module: torch.nn.Module, jax_module: nnx.Module) -> None:
  state = repdistiller.state_dict_to_nnx_state(
    torch_module.state_dict(), jax_module
  )
  nnx.update(jax_module, state)


def _build(method_name, mode, optimizer='sgd'):
  """Torch and JAX modules with identical weights, and both steps."""
  config = _config(method_name, mode, optimizer)
  torch.manual_seed(0)
  t_teacher = torch_models.create_torch_model('resnet14', NUM_CLASSES)
  t_student = torch_models.create_torch_model('resnet8', NUM_CLASSES)
  _randomize_bn(t_teacher, 1)
  _randomize_bn(t_student, 2)
  t_s_heads = t_t_heads = None
  if method_name == 'mhkd':
    t_s_heads = torch_heads.create_heads(
      'light', t_student, None, num_classes=NUM_CLASSES, width=16
    )
    t_t_heads = torch_heads.create_heads(
      'light', t_teacher, None, num_classes=NUM_CLASSES, width=16
    )
    _randomize_bn(t_s_heads, 3)
    _randomize_bn(t_t_heads, 4)

  # JAX: the production constructors, traced abstractly (random init
  # would compile every initializer, and the port replaces every value),
  # then every variable from torch.
  j_teacher_model = nnx.eval_shape(
    lambda: create_model('resnet14', num_classes=NUM_CLASSES, rngs=nnx.Rngs(9))
  )
  _port(t_teacher, j_teacher_model)
  j_teacher_heads = None
  if method_name == 'mhkd' and mode == 'pretrain':
    j_teacher_heads = nnx.eval_shape(
      lambda: heads.create_heads(
        'light', j_teacher_model, None, num_classes=NUM_CLASSES,
        input_shape=INPUT_SHAPE, width=16, rngs=nnx.Rngs(5),
      )
    )
    _port(t_t_heads, j_teacher_heads)
  teacher = Teacher(j_teacher_model, j_teacher_heads, name='resnet14')
  method = distill.create_method(config)
  trainable = nnx.eval_shape(
    lambda: method.create_trainable(teacher, DATA, nnx.Rngs(0))
  )
  _port(t_student, trainable.student)
  if trainable.get('heads') is not None:
    _port(t_s_heads, trainable.heads)
  if trainable.get('teacher_heads') is not None:
    _port(t_t_heads, trainable.teacher_heads)
  # Every variable is concrete now (nothing was left abstract).
  assert all(
    isinstance(x, jax.Array)
    for x in jax.tree.leaves(nnx.state(trainable))
    + jax.tree.leaves(nnx.state(teacher))
  )

  t_step = torch_step.create_step_from_config(
    config, student=t_student, teacher=t_teacher,
    student_heads=t_s_heads, teacher_heads=t_t_heads,
  )
  torch_trained = {'student': t_student}
  if t_s_heads is not None:
    torch_trained['heads'] = t_s_heads
  if mode == 'online':
    torch_trained['teacher_heads'] = t_t_heads
  return config, method, teacher, trainable, t_step, torch_trained


def _data():
  rng = np.random.default_rng(0)
  n = BATCH * STEPS
  images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, NUM_CLASSES, (n,)).astype(np.int32)
  return images, labels


def _bn_count_hooks(modules: dict):
  """Records n = batch*H*W that each trained BatchNorm normalises over."""
  counts, hooks = {}, []
  for role, module in modules.items():
    for name, m in module.named_modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        key = f'{role}.{name}'

        def hook(mod, inputs, output, key=key):
          counts[key] = inputs[0].numel() // inputs[0].shape[1]

        hooks.append(m.register_forward_hook(hook))
  return counts, hooks


def _flat(module_or_state, kind) -> dict[str, np.ndarray]:
  """'path.to.leaf' -> array for the variables of type ``kind``."""
  state = module_or_state
  if isinstance(module_or_state, nnx.Module):
    state = nnx.state(module_or_state, kind)
  return {
    '.'.join(map(str, path)): np.array(v.get_value(), copy=True)
    for path, v in nnx.to_flat_state(state)
    if isinstance(v, kind)
  }


def _torch_in_nnx_layout(t_module, j_module, kind):
  """``t_module``'s variables of type ``kind``, by the importer's mapping."""
  state = repdistiller.state_dict_to_nnx_state(t_module.state_dict(), j_module)
  return _flat(state, kind)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
  """max |a - b| relative to the larger magnitude of the reference b."""
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


def _run_case(case, torch_device='cpu'):
  """Three steps of ``case`` in both frameworks. ``torch_device``: where
  the PyTorch side runs (experiments/accelerator_check.py runs it on the
  GPU that the JAX step runs on)."""
  method_name, mode, folded, *optimizer = CASES[case]
  with jax.default_matmul_precision('highest'):
    config, method, teacher, trainable, t_step, torch_trained = _build(
      method_name, mode, *optimizer
    )
    # In place: the optimizer keeps the same parameters.
    for module in (t_step.student, t_step.teacher, t_step.student_heads,
                   t_step.teacher_heads):
      if module is not None:
        module.to(torch_device)
    initial = {
      role: (_flat(getattr(trainable, role), nnx.Param),
             _flat(getattr(trainable, role), nnx.BatchStat))
      for role in torch_trained
    }
    mesh = parallel.create_mesh(1)
    state, graphdef, tx = train_state.train_state_for(
      trainable, config, steps_per_epoch=STEPS, mesh=mesh
    )
    if folded:
      teacher = fold.folded_teacher(teacher, INPUT_SHAPE)
    t_graphdef, t_state = train_state.place_teacher(teacher, config, mesh)
    images, labels = _data()
    train_step = steps.create_train_step(
      method=method, graphdef=graphdef, teacher_graphdef=t_graphdef, tx=tx,
      data=DATA, compiler_options=steps.compiler_options(mesh),
    )
    counts, hooks = {}, []
    j_metrics, t_metrics = [], []
    for i in range(STEPS):
      sl = slice(i * BATCH, (i + 1) * BATCH)
      x = np.asarray(augment.normalize(images[sl], MEAN, STD))
      batch = parallel.replicate(
        input_pipeline.Batch(x, labels[sl], np.arange(sl.start, sl.stop)), mesh
      )
      state, metrics = train_step(state, batch, t_state)
      j_metrics.append(jax.device_get(metrics))
      # The batch the JAX step trained on, fed to torch as NCHW.
      x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
      y = torch.from_numpy(labels[sl].astype(np.int64))
      x, y = x.to(torch_device), y.to(torch_device)
      if i == 0:
        counts, hooks = _bn_count_hooks(torch_trained)
      t_metrics.append({k: float(v) for k, v in t_step(x, y).items()})
      for h in hooks:
        h.remove()
      hooks = []
    trained = nnx.merge(graphdef, state.params, state.buffers)
  return dict(
    trained=trained, torch_trained=torch_trained, initial=initial,
    j_metrics=j_metrics, t_metrics=t_metrics, counts=counts,
  )


class _Results(dict):
  """Each case run once, when a test first asks for it (so that ``-k``
  runs only the cases it selects)."""

  def __missing__(self, case):
    self[case] = _run_case(case)
    return self[case]


@pytest.fixture(scope='module')
def results():
  return _Results()


@pytest.mark.parametrize('case', list(CASES))
def test_loss_terms_match(results, case):
  j_metrics, t_metrics = (
    results[case]['j_metrics'], results[case]['t_metrics']
  )
  worst, worst_key = 0.0, ''
  for step, (jm, tm) in enumerate(zip(j_metrics, t_metrics)):
    assert set(jm) == set(tm), (step, sorted(jm), sorted(tm))
    for key in tm:
      diff = abs(float(jm[key]) - tm[key])
      if diff > worst:
        worst, worst_key = diff, f'{key}@{step}'
      assert diff <= LOSS_TOL, (case, step, key, float(jm[key]), tm[key])
  expected_heads = {
    None: (),
    'pretrain': ('kd/stage1', 'kd/stage2'),
    'online': ('ce/teacher_head/stage1', 'ce/teacher_head/stage2'),
  }[CASES[case][1]]
  for key in expected_heads:
    assert key in t_metrics[0], key
  REPORT.setdefault(case, {})[f'max |loss term diff| ({worst_key})'] = worst


@pytest.mark.parametrize('case', list(CASES))
def test_params_after_three_sgd_steps_match(results, case):
  r = results[case]
  trained, torch_trained = r['trained'], r['torch_trained']
  initial = r['initial']
  worst, worst_key, moved = 0.0, '', 0.0
  for role, t_module in torch_trained.items():
    j_module = getattr(trained, role)
    want = _flat(j_module, nnx.Param)
    # The torch parameters in NNX layout, through the importer's mapping.
    got = _torch_in_nnx_layout(t_module, j_module, nnx.Param)
    assert set(want) == set(got)
    for key in want:
      rel = _rel(got[key], want[key])
      if rel > worst:
        worst, worst_key = rel, f'{role}.{key}'
      assert rel <= PARAM_RTOL, (case, role, key, rel)
  # The steps did move the parameters (a no-op step would pass trivially).
  for role in torch_trained:
    b = initial[role][0]
    a = _flat(getattr(trained, role), nnx.Param)
    moved = max(moved, max(_rel(a[k], b[k]) for k in a))
  assert moved > 100 * PARAM_RTOL
  REPORT.setdefault(case, {})[f'max param rel diff ({worst_key})'] = worst
  REPORT[case]['max param rel change'] = moved


@pytest.mark.parametrize('case', list(CASES))
def test_batchnorm_statistics_differ_only_by_bessel(results, case):
  """running_mean agrees; running_var differs by exactly n/(n-1).

  After k steps from v0, v_k = 0.9^k v0 + 0.1 sum_j 0.9^(k-1-j) c s_j with
  c = n/(n-1) in PyTorch and 1 in Flax, so (v_torch - 0.9^k v0) equals
  c (v_jax - 0.9^k v0).
  """
  r = results[case]
  trained, torch_trained = r['trained'], r['torch_trained']
  initial, counts = r['initial'], r['counts']
  decay = (1 - BN_MOMENTUM) ** STEPS
  raw_var, corrected_var, worst_mean = 0.0, 0.0, 0.0
  for role, t_module in torch_trained.items():
    j_module = getattr(trained, role)
    want = _flat(j_module, nnx.BatchStat)
    got = _torch_in_nnx_layout(t_module, j_module, nnx.BatchStat)
    v0 = initial[role][1]
    assert set(want) == set(got) and want
    for key in want:
      bn = key.rsplit('.', 1)[0]
      if key.endswith('.mean'):
        rel = _rel(got[key], want[key])
        worst_mean = max(worst_mean, rel)
        assert rel <= PARAM_RTOL, (case, role, key, rel)
        continue
      n = counts[f'{role}.{bn}']
      c = n / (n - 1)
      raw_var = max(raw_var, _rel(got[key], want[key]))
      t_part = got[key] - decay * v0[key]
      j_part = want[key] - decay * v0[key]
      rel = _rel(t_part, c * j_part)
      corrected_var = max(corrected_var, rel)
      assert rel <= PARAM_RTOL, (case, role, key, n, rel)
  REPORT.setdefault(case, {})['max running_mean rel diff'] = worst_mean
  REPORT[case]['max running_var rel diff (raw)'] = raw_var
  REPORT[case]['max running_var rel diff (x n/(n-1))'] = corrected_var


def test_learning_rate_schedule_matches_repdistiller_sgd():
  """Per epoch, optax's scheduled rate == torch SGD's after the rule.

  Also runs the whole optimizer (coupled weight decay, momentum, the
  schedule) for all 240 epochs on one small parameter in both frameworks.
  """
  config = test_config.get_config()
  config.num_epochs = 240
  steps_per_epoch = 2
  decay_epochs = train_state.lr_decay_epochs(config)
  assert decay_epochs == (150, 180, 210)
  lr_fn = train_state.create_learning_rate_fn(config, steps_per_epoch)
  tx = train_state.create_optimizer(config, steps_per_epoch)

  w0 = np.linspace(-1.0, 1.0, 5).astype(np.float32)
  t_w = torch.nn.Parameter(torch.from_numpy(w0.copy()))
  opt = torch.optim.SGD(
    [t_w], lr=config.learning_rate, momentum=config.momentum,
    weight_decay=config.weight_decay, nesterov=config.nesterov,
  )
  j_w = jnp.asarray(w0)
  opt_state = tx.init(j_w)

  @jax.jit
  def update(w, opt_state, g):
    updates, opt_state = tx.update(g, opt_state, w)
    return w + updates, opt_state

  worst = 0.0
  for epoch in range(1, config.num_epochs + 1):
    lr = torch_step.adjust_learning_rate(
      epoch, opt, learning_rate=config.learning_rate,
      decay_epochs=decay_epochs, decay_rate=config.lr_decay_rate,
    )
    expected = config.learning_rate * config.lr_decay_rate ** sum(
      epoch > d for d in (150, 180, 210)
    )
    assert lr == pytest.approx(expected, rel=1e-12)
    for i in range(steps_per_epoch):
      step = (epoch - 1) * steps_per_epoch + i
      assert float(lr_fn(step)) == pytest.approx(
        opt.param_groups[0]['lr'], rel=1e-6
      ), (epoch, i)
      g = np.sin(step + np.arange(5, dtype=np.float32)).astype(np.float32)
      t_w.grad = torch.from_numpy(g.copy())
      opt.step()
      j_w, opt_state = update(j_w, opt_state, jnp.asarray(g))
      worst = max(worst, _rel(np.asarray(j_w), t_w.detach().numpy()))
  assert worst <= 1e-5
  REPORT['lr schedule + SGD, 480 steps'] = {'max param rel diff': worst}
