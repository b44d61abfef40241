"""Test setup: 8 fake CPU devices, forced before jax is imported anywhere."""

import os

os.environ['XLA_FLAGS'] = (
  os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
).strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
# Keep TensorFlow (used only by TFDS) off the accelerator and quiet.
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')

import jax  # noqa: E402

# Short compiles: the tests check values, not speed. The variable carries
# it to the runs tests start as processes (python -m mhkd_jax.main).
os.environ['JAX_DISABLE_MOST_OPTIMIZATIONS'] = '1'
jax.config.update('jax_disable_most_optimizations', True)

import pytest  # noqa: E402

# `make test` runs the files on two pytest-xdist workers, a whole file per
# worker (its module fixtures computed once). Handing out the longest
# files first keeps one worker from starting a ten-minute file last.
_LONGEST_FIRST = (
  'multihost_test.py', 'students_test.py', 'methods_test.py',
  'train_test.py', 'fold_test.py', 'errors_test.py', 'step_parity_test.py',
  'determinism_test.py', 'demo_test.py', 'accelerator_check_test.py',
  'config_fuzz_test.py',
  # Then the longest of `make test-fast`.
  'interop_test.py', 'losses_parity_test.py', 'records_test.py',
  'steps_test.py', 'models_test.py', 'method_parity_test.py',
)


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
  # A stable sort: each file's tests keep their order.
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


# Classes of the mock CIFAR-100 that `mock_cifar100` serves.
MOCK_CIFAR100_CLASSES = 100


@pytest.fixture(scope='module')
def mock_cifar100():
  """TFDS serves 64 random examples for any split of cifar100."""
  import tensorflow_datasets as tfds  # noqa: PLC0415

  with tfds.testing.mock_data(num_examples=64):
    yield


@pytest.fixture(scope='module')
def resnet8_teacher_dir(tmp_path_factory):
  """A teacher checkpoint of a random resnet8 for the mock CIFAR-100."""
  from flax import nnx  # noqa: PLC0415

  from mhkd_jax.models import create_model  # noqa: PLC0415
  from mhkd_jax.run import checkpoints  # noqa: PLC0415

  directory = str(tmp_path_factory.mktemp('teacher'))
  model = create_model(
    'resnet8', num_classes=MOCK_CIFAR100_CLASSES, rngs=nnx.Rngs(5)
  )
  checkpoints.save_teacher(
    directory, model, model_name='resnet8',
    num_classes=MOCK_CIFAR100_CLASSES,
  )
  return directory


@pytest.fixture
def disrupt_train_step(monkeypatch):
  """``disrupt(at_call, action)``: the train steps that runs build from now
  on call ``action()`` (raise KeyboardInterrupt as a kill would, send a
  SIGTERM as a scheduler would) before their ``at_call``-th step;
  ``disrupt.restore()`` gives runs the real step again."""
  from mhkd_jax import steps  # noqa: PLC0415

  original = steps.create_train_step

  def disrupt(at_call, action):
    def create(**kwargs):
      real_step, calls = original(**kwargs), {'n': 0}

      def step(*args):
        calls['n'] += 1
        if calls['n'] == at_call:
          action()
        return real_step(*args)

      return step

    monkeypatch.setattr(steps, 'create_train_step', create)

  disrupt.restore = lambda: monkeypatch.setattr(
    steps, 'create_train_step', original
  )
  return disrupt
