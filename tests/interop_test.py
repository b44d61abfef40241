"""PyTorch -> NNX import: parity of every model, and refusal of bad files.

The reference is ``tests/torch_reference/models.py`` (independent
PyTorch ports whose state_dicts are checked here against the JSON spec of
RepDistiller's models). Each parity test saves a randomly initialised
PyTorch model with random BatchNorm statistics the way RepDistiller does,
imports the file, and compares logits and every sown feature in eval mode.
"""

import argparse
import fractions
import json
import os
import pathlib
import subprocess
import sys
import warnings

import pytest

torch = pytest.importorskip(
  'torch',
  reason='PyTorch-checkpoint import needs torch: pip install -e .[torch]',
)

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # `experiments` is not an installed package.
  sys.path.insert(0, str(_ROOT))

from mhkd_jax.interop import repdistiller  # noqa: E402
from mhkd_jax.models import MODEL_NAMES as JAX_MODEL_NAMES  # noqa: E402
from mhkd_jax.models import (
  create_model,  # noqa: E402
  features,  # noqa: E402
)
from tests.torch_reference import models as torch_models  # noqa: E402

# The JSON spec of RepDistiller's models (ground truth for the references):
# in the repository's testdata if it was copied there, else the project's
# shared specs beside the checkout.
_SPEC_CANDIDATES = (
  _ROOT / 'tests' / 'testdata' / 'repdistiller_models.json',
  _ROOT.parent / 'shared' / 'specs' / 'repdistiller_models.json',
)
_SPEC_PATH = next((p for p in _SPEC_CANDIDATES if p.exists()), None)

_IMAGENET = ('imagenet_resnet18', 'imagenet_resnet34')
# torchvision's published sizes (1000 classes): params, state_dict entries.
_TORCHVISION = {
  'imagenet_resnet18': (11_689_512, 122),
  'imagenet_resnet34': (21_797_672, 218),
}
# Models large enough that a batch of one keeps the suite fast.
_BATCH_ONE = ('vgg16', 'vgg19', 'ResNet34', 'ResNet50', *_IMAGENET)

LOGIT_TOL = 1e-4
FEATURE_RTOL = 1e-4

# name -> (max |logit diff|, max feature diff / scale); printed at the end.
MAX_DIFFS: dict[str, tuple[float, float]] = {}


def _spec() -> dict:
  if _SPEC_PATH is None:
    pytest.skip(
      'repdistiller_models.json not found (looked in '
      + ', '.join(map(str, _SPEC_CANDIDATES)) + ')'
    )
  with open(_SPEC_PATH) as f:
    return json.load(f)


def _randomize(model: torch.nn.Module, seed: int, image_size: int) -> None:
  """Non-trivial BN statistics and affine terms, and non-zero biases.

  Fresh models have mean 0, var 1, weight 1, bias 0 in every BN and zero
  biases in VGG/MobileNetV2/WRN classifiers: a transposed or swapped
  statistic would then go unnoticed. BN weights are drawn from U(0.5, 1.5)
  and biases from N(0, 0.1). The running statistics are first calibrated
  on a random batch and then perturbed (mean + N(0, 0.1) std, var x
  U(0.5, 1.5)): statistics drawn blindly (mean ~ N(0, 0.1), var ~ U(0.5,
  1.5)) do not normalise the residual stream, which then doubles per block
  (resnet110's logits reach ~1e8), and no float32 comparison within 1e-4
  absolute means anything at that scale.
  """
  g = torch.Generator().manual_seed(seed)

  def rand(shape, lo, hi):
    return torch.rand(shape, generator=g) * (hi - lo) + lo

  def normal(shape, std):
    return torch.randn(shape, generator=g) * std

  bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.copy_(rand(m.weight.shape, 0.5, 1.5))
        m.bias.copy_(normal(m.bias.shape, 0.1))
      elif isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
        if m.bias is not None:
          m.bias.copy_(normal(m.bias.shape, 0.1))
    # Calibrate: one train-mode pass with a cumulative average (momentum
    # None) sets the running statistics to that batch's statistics.
    for m in bns:
      m.reset_running_stats()
      m.momentum = None
    model.train()
    batch = 2 if image_size > 64 else 8
    model(torch.randn((batch, 3, image_size, image_size), generator=g))
    model.eval()
    for m in bns:
      m.momentum = 0.1
      std = m.running_var.sqrt()
      m.running_mean.add_(normal(std.shape, 0.1) * std)
      m.running_var.mul_(rand(std.shape, 0.5, 1.5))
    # Deep random nets (resnet110, ResNet50) still end with pooled
    # features in the hundreds; shrink the classifier so that logits are
    # at most 10, the scale of a trained network's, where float32
    # rounding stays well below the 1e-4 tolerance. Features are compared
    # relative to their own scale, so nothing upstream is hidden.
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    x = torch.randn((2, 3, image_size, image_size), generator=g)
    peak = float(model(x).abs().max())
    if peak > 10.0:
      linears[-1].weight.mul_(10.0 / peak)
      linears[-1].bias.mul_(10.0 / peak)


def _save(path, state_dict, **extra) -> str:
  torch.save({'model': state_dict, 'epoch': 1, **extra}, path)
  return str(path)


def _torch_reference(name: str, seed: int = 0):
  num_classes = 1000 if name in _IMAGENET else 100
  torch.manual_seed(seed)
  model = torch_models.create_torch_model(name, num_classes=num_classes)
  _randomize(model, seed, 224 if name in _IMAGENET else 32)
  return model.eval(), num_classes


def _to_nhwc(t: torch.Tensor) -> np.ndarray:
  a = t.detach().numpy()
  return np.transpose(a, (0, 2, 3, 1)) if a.ndim == 4 else a


@pytest.fixture(scope='module')
def spec() -> dict:
  return _spec()


@pytest.fixture(scope='module', autouse=True)
def _one_torch_thread():
  """PyTorch on one thread: XLA's CPU threads run beside it.

  With its default two OpenMP threads competing for two cores with XLA's
  pool (and other processes), torch spin-waits and a ShuffleV2 forward
  that takes 40 ms alone takes 4 s.
  """
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)


@nnx.jit
def _jax_forward(model, x):
  # One compile per model beats op-by-op dispatch, which compiles every
  # distinct op shape (ShuffleNets and MobileNetV2 have many).
  return features.forward_with_features(model, x, train=False)


# --------------------------------------------------------------------------
# The PyTorch references against the JSON spec (the ground truth).


_CIFAR_NAMES = [n for n in torch_models.MODEL_NAMES if n not in _IMAGENET]


@pytest.mark.parametrize('name', _CIFAR_NAMES)
def test_torch_reference_matches_spec(spec, name):
  entry = spec[name]
  model = torch_models.create_torch_model(name, num_classes=100).eval()
  got = [
    [k, list(v.shape), str(v.dtype).removeprefix('torch.')]
    for k, v in model.state_dict().items()
  ]
  assert got == entry['state_dict']
  assert sum(p.numel() for p in model.parameters()) == entry['num_params']
  with torch.no_grad():
    feats, logits = model(torch.zeros(2, 3, 32, 32), is_feat=True)
  assert [list(f.shape) for f in feats] == entry['features']
  assert list(logits.shape) == entry['logits_shape']


@pytest.mark.parametrize('name', _IMAGENET)
def test_torch_imagenet_reference_matches_torchvision(name):
  model = torch_models.create_torch_model(name, num_classes=1000)
  num_params, num_entries = _TORCHVISION[name]
  assert sum(p.numel() for p in model.parameters()) == num_params
  sd = model.state_dict()
  assert len(sd) == num_entries
  assert list(sd)[:2] == ['conv1.weight', 'bn1.weight']
  assert tuple(sd['conv1.weight'].shape) == (64, 3, 7, 7)
  assert tuple(sd['layer2.0.downsample.0.weight'].shape) == (128, 64, 1, 1)
  assert tuple(sd['fc.weight'].shape) == (1000, 512)


def test_every_spec_model_has_a_torch_reference(spec):
  assert set(spec) | set(_IMAGENET) == set(torch_models.MODEL_NAMES)


# --------------------------------------------------------------------------
# Parity: the imported NNX model computes what the PyTorch model computes.


@pytest.mark.parametrize('name', torch_models.MODEL_NAMES)
@pytest.mark.slow
def test_import_matches_pytorch(tmp_path, name):
  if name not in JAX_MODEL_NAMES:
    pytest.skip(f'{name} has no JAX port in mhkd_jax.models yet')
  torch_model, num_classes = _torch_reference(name)
  path = _save(tmp_path / f'{name}.pth', torch_model.state_dict())

  model = repdistiller.load_repdistiller_checkpoint(
    path, name, num_classes=num_classes
  )

  size = 224 if name in _IMAGENET else 32
  batch = 1 if name in _BATCH_ONE else 2
  x = np.random.default_rng(0).standard_normal(
    (batch, size, size, 3), dtype=np.float32
  )
  x_torch = torch.from_numpy(np.transpose(x, (0, 3, 1, 2)).copy())
  with torch.no_grad():
    t_feats, t_logits = torch_model(x_torch, is_feat=True)
    t_preacts, _ = torch_model(x_torch, is_feat=True, preact=True)
  with jax.default_matmul_precision('highest'):
    logits, feats = _jax_forward(model, x)
  logits = np.asarray(logits)

  logit_diff = float(np.max(np.abs(logits - t_logits.numpy())))
  stages = features.stage_names(feats)
  names = ['stem', *stages, 'pooled']
  # RepDistiller's preact=True stage features (AB's), one per stage.
  preacts = [s.replace('stage', 'preact') for s in stages]
  assert set(names + preacts) == set(feats), sorted(feats)
  assert len(names) == len(t_feats) == len(t_preacts)
  feat_diff = 0.0
  pairs = [*zip(names, t_feats), *zip(preacts, t_preacts[1:-1])]
  for fname, t_feat in pairs:
    ref = _to_nhwc(t_feat)
    got = np.asarray(feats[fname])
    assert got.shape == ref.shape, fname
    scale = max(1.0, float(np.max(np.abs(ref))))
    rel = float(np.max(np.abs(got - ref))) / scale
    assert rel <= FEATURE_RTOL, f'{name} {fname}: max diff / scale = {rel}'
    feat_diff = max(feat_diff, rel)
  MAX_DIFFS[name] = (logit_diff, feat_diff)
  print(f'{name}: max |logit diff| {logit_diff:.2e}, feature {feat_diff:.2e}')
  assert logit_diff <= LOGIT_TOL, f'{name}: max |logit diff| {logit_diff}'


# --------------------------------------------------------------------------
# Files that do not fit are refused, whole.


@pytest.fixture(scope='module')
def resnet8x4_sd():
  model, _ = _torch_reference('resnet8x4')
  return {k: v.clone() for k, v in model.state_dict().items()}


def _load_error(tmp_path, sd, name='resnet8x4', num_classes=100):
  path = _save(tmp_path / 'bad.pth', sd)
  with pytest.raises(repdistiller.CheckpointMismatchError) as info:
    repdistiller.load_repdistiller_checkpoint(
      path, name, num_classes=num_classes
    )
  return info.value


def test_other_architecture_names_missing_keys(tmp_path, resnet8x4_sd):
  err = _load_error(tmp_path, resnet8x4_sd, name='resnet32x4')
  assert err.model_name == 'resnet32x4'
  assert 'layer1.1.conv1.weight' in err.missing
  assert not err.unexpected and not err.mismatched
  assert 'resnet32x4' in str(err) and 'missing keys' in str(err)
  assert 'layer1.1.' in str(err)  # the first few, in NNX path order
  assert isinstance(err, ValueError)


def test_truncated_state_dict_names_dropped_keys(tmp_path, resnet8x4_sd):
  dropped = ['conv1.weight', 'layer2.0.bn1.running_var', 'fc.bias']
  sd = {k: v for k, v in resnet8x4_sd.items() if k not in dropped}
  err = _load_error(tmp_path, sd)
  assert sorted(err.missing) == sorted(dropped)
  for key in dropped:
    assert key in str(err)


def test_wrong_shape_names_key_and_shapes(tmp_path, resnet8x4_sd):
  sd = dict(resnet8x4_sd)
  sd['layer3.0.conv2.weight'] = torch.zeros(256, 128, 3, 3)
  err = _load_error(tmp_path, sd)
  assert err.mismatched == [
    ('layer3.0.conv2.weight', (256, 256, 3, 3), (256, 128, 3, 3))
  ]
  assert '(expected (256, 256, 3, 3), got (256, 128, 3, 3))' in str(err)


def test_wrong_num_classes_names_classifier(tmp_path, resnet8x4_sd):
  err = _load_error(tmp_path, resnet8x4_sd, num_classes=10)
  assert {k for k, _, _ in err.mismatched} == {'fc.weight', 'fc.bias'}


def test_unexpected_keys_are_named(tmp_path, resnet8x4_sd):
  sd = dict(resnet8x4_sd)
  sd['aux.weight'] = torch.zeros(3)
  err = _load_error(tmp_path, sd)
  assert err.unexpected == ['aux.weight'] and not err.missing


def _abstract(name: str) -> nnx.Module:
  return nnx.eval_shape(
    lambda: create_model(name, num_classes=100, rngs=nnx.Rngs(0))
  )


def test_failed_mapping_leaves_model_untouched(resnet8x4_sd):
  sd = {k: v.numpy() for k, v in resnet8x4_sd.items()}
  abstract = _abstract('resnet8x4')
  model = nnx.merge(
    nnx.graphdef(abstract),
    repdistiller.state_dict_to_nnx_state(sd, abstract),
  )
  before = jax.tree.map(np.array, nnx.state(model))
  sd = {k: -v for k, v in sd.items()}  # a fitting key would change values
  del sd['layer3.0.bn2.running_mean']
  sd['fc.weight'] = sd['fc.weight'][:10]
  with pytest.raises(repdistiller.CheckpointMismatchError):
    repdistiller.state_dict_to_nnx_state(sd, model, model_name='resnet8x4')
  after = jax.tree.map(np.array, nnx.state(model))
  jax.tree.map(np.testing.assert_array_equal, before, after)


def test_mapping_converts_layouts(resnet8x4_sd):
  sd = {k: v.numpy() for k, v in resnet8x4_sd.items()}
  state = repdistiller.state_dict_to_nnx_state(sd, _abstract('resnet8x4'))
  np.testing.assert_array_equal(
    state['conv1']['kernel'][...], sd['conv1.weight'].transpose(2, 3, 1, 0)
  )
  np.testing.assert_array_equal(state['fc']['kernel'][...], sd['fc.weight'].T)
  bn = state['layer1'][0]['downsample'][1]
  np.testing.assert_array_equal(
    bn['var'][...], sd['layer1.0.downsample.1.running_var']
  )
  np.testing.assert_array_equal(
    bn['scale'][...], sd['layer1.0.downsample.1.weight']
  )
  np.testing.assert_array_equal(
    bn['mean'][...], sd['layer1.0.downsample.1.running_mean']
  )


# --------------------------------------------------------------------------
# File formats: RepDistiller's *_last.pth, bare and DataParallel dicts.


def _logits(model, x):
  return np.asarray(_jax_forward(model, x)[0])


@pytest.fixture(scope='module')
def resnet8():
  model, _ = _torch_reference('resnet8', seed=3)
  x = np.random.default_rng(1).standard_normal((2, 32, 32, 3), np.float32)
  with torch.no_grad():
    ref = model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
  return model.state_dict(), x, ref


def test_last_pth_with_namespace_loads_weights_only(tmp_path, resnet8):
  sd, x, ref = resnet8
  path = _save(
    tmp_path / 'resnet8_last.pth',
    sd,
    opt=argparse.Namespace(model='resnet8', learning_rate=0.05),
    optimizer={'state': {}, 'param_groups': []},
    accuracy=torch.tensor(70.1),
  )
  with warnings.catch_warnings():
    warnings.simplefilter('error')  # no fall-back to a full unpickle
    model = repdistiller.load_repdistiller_checkpoint(
      path, 'resnet8', num_classes=100
    )
  np.testing.assert_allclose(_logits(model, x), ref, atol=LOGIT_TOL)


class _Payload:
  """Unpickling this runs os.makedirs(marker): code from the file."""

  def __init__(self, marker):
    self.marker = str(marker)

  def __reduce__(self):
    return (os.makedirs, (self.marker,))


@pytest.mark.slow
def test_a_pickled_payload_is_refused_and_never_runs(tmp_path, resnet8):
  sd, _, _ = resnet8
  marker = tmp_path / 'payload_ran'
  path = _save(tmp_path / 'evil.pth', sd, note=_Payload(marker))
  with pytest.raises(repdistiller.UnsafeCheckpointError,
                     match=r'pickled os\.makedirs.*--allow_unsafe_pickle'):
    repdistiller.load_repdistiller_checkpoint(
      path, 'resnet8', num_classes=100
    )
  assert not marker.exists()
  # The command line: the message alone, a non-zero exit, nothing written.
  proc = subprocess.run(
    [sys.executable, '-m', 'mhkd_jax.interop.repdistiller', '--name',
     'resnet8', '--pth', path, '--workdir', str(tmp_path / 'teacher')],
    capture_output=True, text=True, timeout=300,
  )
  assert proc.returncode != 0
  assert 'UnsafeCheckpointError' in proc.stderr
  assert 'Traceback' not in proc.stderr
  assert not marker.exists()
  assert not (tmp_path / 'teacher').exists()


def test_unsafe_pickle_loads_only_when_allowed(tmp_path, resnet8):
  sd, x, ref = resnet8
  path = _save(tmp_path / 'odd.pth', sd, note=fractions.Fraction(1, 3))
  with pytest.raises(repdistiller.UnsafeCheckpointError,
                     match='fractions.Fraction'):
    repdistiller.load_repdistiller_checkpoint(
      path, 'resnet8', num_classes=100
    )
  with pytest.warns(UserWarning, match='runs code from the file'):
    model = repdistiller.load_repdistiller_checkpoint(
      path, 'resnet8', num_classes=100, allow_unsafe_pickle=True
    )
  np.testing.assert_allclose(_logits(model, x), ref, atol=LOGIT_TOL)


def test_bare_state_dict_with_module_prefix(tmp_path, resnet8):
  sd, x, ref = resnet8
  path = tmp_path / 'dp.pth'
  torch.save({f'module.{k}': v for k, v in sd.items()}, path)
  model = repdistiller.load_repdistiller_checkpoint(
    str(path), 'resnet8', num_classes=100
  )
  np.testing.assert_allclose(_logits(model, x), ref, atol=LOGIT_TOL)


def test_missing_torch_says_how_to_install(monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, 'torch', None)
  with pytest.raises(ImportError, match=r'pip install -e \.\[torch\]'):
    repdistiller.read_pth(str(tmp_path / 'x.pth'))


def test_cli_writes_loadable_teacher(tmp_path, resnet8):
  checkpoints = pytest.importorskip('mhkd_jax.run.checkpoints')
  sd, x, ref = resnet8
  pth = _save(tmp_path / 'resnet8.pth', sd)
  workdir = tmp_path / 'teacher'
  repdistiller.main(
    ['--name', 'resnet8', '--pth', pth, '--workdir', str(workdir)]
  )
  teacher = checkpoints.load_teacher(
    str(workdir), model_name='resnet8', num_classes=100
  )
  np.testing.assert_allclose(_logits(teacher.model, x), ref, atol=LOGIT_TOL)


def test_zz_report_max_differences():
  """Prints the per-model table (``pytest -s`` shows it)."""
  if not MAX_DIFFS:
    pytest.skip('no parity test ran')
  lines = ['| model | max abs logit diff | max feature diff / scale |',
           '|---|---|---|']
  for name, (logit, feat) in MAX_DIFFS.items():
    lines.append(f'| {name} | {logit:.2e} | {feat:.2e} |')
  print('\n' + '\n'.join(lines))
