"""Every distillation method trains through train_and_evaluate.

Tiny models on the mock CIFAR-100 over 8 fake devices: each method's run
finishes with finite losses and metrics, logs its own term, leaves the
frozen teacher exactly as it was loaded, and exports its student. CRD's
memory (method state) moves and stays unit-norm where it was written.
"""

import json
import os

import jax
import numpy as np
import pytest

from mhkd_jax import distill, steps, train
from mhkd_jax.configs import test as test_config
from mhkd_jax.run import checkpoints

# Not in `make test-fast` (a full run of every method): docs/testing.md.
pytestmark = pytest.mark.slow

# method -> the term its loss adds (beside ce and kd/logits).
METHOD_TERMS = {
  'fitnet': 'hint/stage', 'at': 'at/stages', 'sp': 'sp/last_stage',
  'cc': 'cc/pooled', 'vid': 'vid/stages', 'rkd': 'rkd/pooled',
  'pkt': 'pkt/pooled', 'nst': 'nst/stages', 'crd': 'crd/pooled',
  'crd_kd': 'crd/pooled', 'dkd': 'dkd/logits', 'ft': 'ft/last_stage',
  'fsp': 'fsp/after_init', 'ab': 'ab/after_init',
  'dist': 'dist/logits', 'ctkd': 'ctkd/temperature',
  'reviewkd': 'reviewkd/hcl', 'ofd': 'ofd/preacts', 'kdsvd': 'kdsvd/stages',
}
# Methods that train a preliminary phase first, in workdir/preliminary.
PRELIMINARY = {'ft': 'mse/reconstruction', 'fsp': 'fsp/features',
               'ab': 'ab/preacts'}


def test_every_benchmark_method_is_registered():
  assert set(METHOD_TERMS) <= set(distill.method_names())


def _latest(workdir):
  saved = checkpoints.TrainCheckpointer(workdir, max_to_keep=2)
  return saved.restore(saved.latest_step(), None)


@pytest.fixture
def teacher_states(monkeypatch):
  """The teacher state each train step is called with, first and last."""
  seen = []
  original = steps.create_train_step

  def create(**kwargs):
    real_step = original(**kwargs)

    def step(state, batch, teacher_state):
      seen.append(jax.tree.map(np.asarray, jax.device_get(teacher_state)))
      return real_step(state, batch, teacher_state)

    return step

  monkeypatch.setattr(steps, 'create_train_step', create)
  return seen


@pytest.mark.parametrize('method', sorted(METHOD_TERMS))
def test_method_trains_and_keeps_the_teacher(
  method, mock_cifar100, resnet8_teacher_dir, tmp_path, teacher_states
):
  config = test_config.get_config()
  config.method = method
  config.teacher.init = resnet8_teacher_dir
  config.num_epochs = 1
  if method.startswith('crd'):
    config[method].nce_k = 32  # 64 examples: a small bank is enough
  if method in PRELIMINARY:
    config[method].init_epochs = 1
  workdir = str(tmp_path)
  results = train.train_and_evaluate(config, workdir)

  train_metrics = results['train']
  assert METHOD_TERMS[method] in train_metrics
  for key, value in {**train_metrics, **results['final']}.items():
    assert np.isfinite(value), (method, key)
  # The teacher the last step saw is bit for bit the one the first saw.
  phase_steps = 0
  if method in PRELIMINARY:
    phase = os.path.join(workdir, 'preliminary', 'results.json')
    with open(phase) as f:
      phase_results = json.load(f)
    assert np.isfinite(phase_results['train'][PRELIMINARY[method]])
    phase_steps = phase_results['num_train_steps']
  assert results['num_train_steps'] == 4
  assert len(teacher_states) == phase_steps + 4
  first, last = teacher_states[0], teacher_states[-1]
  for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(last)):
    np.testing.assert_array_equal(a, b)
  exported = checkpoints.load_teacher(workdir)
  assert exported.name == config.model

  if method == 'ft':
    # The paraphraser fitted in the preliminary phase, used frozen after.
    phase = _latest(os.path.join(workdir, 'preliminary'))
    main = _latest(workdir)
    assert 'paraphraser' not in main['params']
    for a, b in zip(jax.tree.leaves(phase['params']['paraphraser']),
                    jax.tree.leaves(main['buffers']['paraphraser'])):
      np.testing.assert_array_equal(a, b)
  if method in ('fsp', 'ab'):
    # The init phase trains the feature layers, not the classifier.
    phase = _latest(os.path.join(workdir, 'preliminary'))
    assert 'fc' not in phase['params']['student']
    assert 'fc' in phase['buffers']['student']
  if method.startswith('crd'):
    saved = checkpoints.TrainCheckpointer(workdir, max_to_keep=2)
    tree = saved.restore(saved.latest_step(), None)
    memory = np.asarray(tree['buffers']['memory_s']['value'])
    norms = np.linalg.norm(memory, axis=1)
    # Every example was seen once: each row was rewritten, unit-norm.
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)
    assert float(tree['buffers']['z_s']['value']) > 0


def test_a_crd_memory_of_another_data_set_size_is_refused(
  mock_cifar100, resnet8_teacher_dir, tmp_path
):
  from mhkd_jax.run import errors, records  # noqa: PLC0415

  config = test_config.get_config()
  config.method = 'crd'
  config.teacher.init = resnet8_teacher_dir
  config.num_epochs = 1
  config.crd.nce_k = 16
  workdir = str(tmp_path)
  train.train_and_evaluate(config, workdir)
  # Another training-set size in the same workdir: config.json refuses it
  # and, without config.json, the checkpoint's memory shape does.
  config.data.num_train_examples = 32
  with pytest.raises(errors.WorkdirError,
                     match=r'config.data.num_train_examples: 64 there, 32'):
    train.train_and_evaluate(config, workdir)
  os.remove(os.path.join(workdir, records.CONFIG))
  with pytest.raises(errors.WorkdirError,
                     match=r'buffers/memory_s/value \(64, 128\) vs '
                     r'\(32, 128\)'):
    train.train_and_evaluate(config, workdir)
