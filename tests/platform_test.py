"""Platform defaults: what 'auto' stands for, and that a run records the
resolved value (so a resume and results.json see it, never 'auto')."""

import json

import jax.numpy as jnp
import pytest

from mhkd_jax import steps
from mhkd_jax.configs import default
from mhkd_jax.configs import test as test_config
from mhkd_jax.models import precision
from mhkd_jax.run import platform, records


@pytest.fixture
def on_gpu(monkeypatch):
  monkeypatch.setattr(platform, 'on_accelerator', lambda: True)


def test_defaults_are_auto():
  config = default.get_config()
  assert config.compute_dtype == platform.AUTO
  assert config.students_loop == platform.AUTO


def test_auto_on_cpu_is_float32_and_unroll():
  # The tests run on CPU: their configs stay float32 and unrolled.
  resolved = platform.resolve(test_config.get_config())
  assert resolved.compute_dtype == 'float32'
  assert resolved.students_loop == 'unroll'
  assert precision.compute_dtype('auto') == jnp.float32


def test_auto_on_an_accelerator_is_bfloat16_and_vmap(on_gpu):
  del on_gpu
  config = test_config.get_config()
  resolved = platform.resolve(config)
  assert resolved.compute_dtype == 'bfloat16'
  assert resolved.students_loop == 'vmap'
  assert config.compute_dtype == 'auto'  # the caller's config is kept
  assert precision.compute_dtype('auto') == jnp.bfloat16


@pytest.mark.parametrize('accelerator', [False, True])
def test_an_explicit_value_wins(monkeypatch, accelerator):
  monkeypatch.setattr(platform, 'on_accelerator', lambda: accelerator)
  config = test_config.get_config()
  config.compute_dtype, config.students_loop = 'float32', 'vmap'
  resolved = platform.resolve(config)
  assert (resolved.compute_dtype, resolved.students_loop) == (
    'float32', 'vmap')
  config.compute_dtype, config.students_loop = 'bfloat16', 'unroll'
  resolved = platform.resolve(config)
  assert (resolved.compute_dtype, resolved.students_loop) == (
    'bfloat16', 'unroll')


def test_a_float32_record_resumes_under_auto_on_an_accelerator(on_gpu):
  """A run recorded in float32 (any run before 'auto', or one started on
  CPU) continued on a GPU keeps float32: the dtype is the experiment."""
  del on_gpu
  config = test_config.get_config()
  config.method = 'kd'
  old = test_config.get_config()
  old.method = 'kd'
  old.compute_dtype, old.students_loop = 'float32', 'unroll'
  recorded = json.loads(json.dumps(records.config_as_json(old)))
  resolved = platform.resolve(config, recorded)
  assert resolved.compute_dtype == 'float32'
  assert resolved.students_loop == 'vmap'  # how it runs, not what
  changes = records.config_changes(recorded,
                                   records.config_as_json(resolved))
  assert changes == {'students_loop': ['unroll', 'vmap']}
  assert set(changes) <= records.RESUMABLE_CHANGES
  # A record from before students_loop existed resumes too.
  del recorded['students_loop']
  assert records.config_changes(
    recorded, records.config_as_json(resolved)) == {
      'students_loop': ['unroll', 'vmap']}


def test_a_new_run_on_an_accelerator_records_bfloat16(on_gpu):
  del on_gpu
  resolved = platform.resolve(test_config.get_config(), recorded=None)
  assert records.config_as_json(resolved)['compute_dtype'] == 'bfloat16'


def test_over_students_resolves_auto():
  calls = []
  fn = steps.over_students(lambda x: calls.append(1) or x * 2, (0,), 'auto')
  out = fn(jnp.arange(3.0))
  assert out.tolist() == [0.0, 2.0, 4.0]
  assert len(calls) == 3  # unrolled: traced once per student on CPU
