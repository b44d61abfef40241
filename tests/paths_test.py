"""A ``gs://`` workdir: the package's own files go through epath, never os.

Orbax, TensorBoard and TFDS speak ``gs://`` themselves; what this package
writes beside them (config.json, the eval history, results, the
config-change record, the log, teacher metadata) must too. Here epath's
backends are replaced by one that maps ``gs://`` onto a local directory,
and the current directory is an empty one: a file written through
``os``/``open`` would land in ``./gs:/...`` instead, and an
``os.path.abspath`` would put the current directory in front of the URI.
"""

import json
import logging as std_logging
import os

import pytest
from etils import epath
from etils.epath import gpath as epath_gpath
from etils.epath import testing as epath_testing

from mhkd_jax.configs import test as test_config
from mhkd_jax.run import checkpoints, cli, errors, paths, records

RUN = 'gs://bucket/runs/r1'


@pytest.fixture
def bucket(tmp_path, monkeypatch):
  """``gs://`` served from ``tmp_path/gcs``; cwd an empty directory."""
  root = tmp_path / 'gcs'
  root.mkdir()
  cwd = tmp_path / 'cwd'
  cwd.mkdir()
  monkeypatch.chdir(cwd)

  def local(p):
    p = os.fspath(p)
    return str(root / p[len('gs://'):]) if p.startswith('gs://') else p

  def mapped(original, path, *args, **kwargs):
    args = [local(a) if isinstance(a, (str, os.PathLike)) else a
            for a in args]
    return original(local(path), *args, **kwargs)

  # epath picks TensorFlow's file system for gs:// whenever TensorFlow is
  # installed, past the mocked backends: make it take them.
  monkeypatch.setattr(epath_gpath, '_is_tf_installed', lambda: False)
  names = ('copy', 'exists', 'glob', 'isdir', 'listdir', 'makedirs', 'mkdir',
           'open', 'remove', 'rename', 'replace', 'rmtree', 'stat', 'walk')
  with epath_testing.mock_epath(**{n: mapped for n in names}):
    yield root
  # Nothing went through os with a gs:// path.
  assert os.listdir(cwd) == []


def test_absolute_keeps_uris_and_anchors_local_paths(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert paths.absolute('gs://b/run/') == 'gs://b/run'
  assert paths.absolute('run') == str(tmp_path / 'run')
  assert paths.absolute('~/x') == os.path.expanduser('~/x')
  assert paths.join('gs://b/run', 'checkpoints') == 'gs://b/run/checkpoints'
  assert paths.is_remote('gs://b') and not paths.is_remote('/tmp/gs')


def test_run_record_on_a_bucket(bucket):
  config = test_config.get_config()
  paths.makedirs(RUN)
  assert records.check_config(RUN, config) == {}
  records.record_config(RUN, config, {}, step=0)
  run = bucket / 'bucket/runs/r1'
  saved = json.loads((run / 'config.json').read_text())
  assert saved['model'] == config.model
  # Allowed changes are appended, one line per resumed run, though a
  # bucket object cannot be appended to.
  for epochs in (3, 4):
    config.unlock()
    config.num_epochs = epochs
    changes = records.check_config(RUN, config)
    assert changes == {'num_epochs': [2, epochs]}
    records.record_config(RUN, config, changes, step=8)
  lines = (run / 'config_changes.jsonl').read_text().splitlines()
  assert [json.loads(x)['changes']['num_epochs'][1] for x in lines] == [3, 4]
  # A change of experiment is refused, reading config.json from the bucket.
  config.model = 'resnet14'
  with pytest.raises(errors.WorkdirError, match="'resnet8' there"):
    records.check_config(RUN, config)

  history = [{'step': 4, 'epoch': 1, 'eval/acc': 0.5},
             {'step': 8, 'epoch': 2, 'eval/acc': 0.6}]
  records.write_history(RUN, history)
  assert records.read_history(RUN, start_step=4) == history[:1]
  records.write_results(RUN, {'final': {'eval/acc': 0.6}})
  assert json.loads((run / 'results.json').read_text())['final'] == {
    'eval/acc': 0.6}
  # No temporary file is left behind.
  assert sorted(os.listdir(run)) == [
    'config.json', 'config_changes.jsonl', 'eval_history.json',
    'results.json']


def test_teacher_metadata_and_install_on_a_bucket(bucket):
  partial = epath.Path(f'{RUN}/export.partial')
  (partial / 'state').mkdir(parents=True)
  (partial / 'state' / 'weights').write_text('w')
  meta = {'model': 'resnet8', 'num_classes': 10, 'heads': None,
          'input_shape': [1, 32, 32, 1]}
  (partial / checkpoints.TEACHER_META).write_text(json.dumps(meta))
  checkpoints._install_teacher(str(partial), f'{RUN}/export')
  export = bucket / 'bucket/runs/r1/export'
  assert (export / 'state' / 'weights').read_text() == 'w'
  assert not (bucket / 'bucket/runs/r1/export.partial').exists()
  # A run's workdir on the bucket is accepted as config.teacher.init.
  found = checkpoints.resolve_teacher_dir(RUN)
  assert found == f'{RUN}/export'
  assert checkpoints._read_teacher_meta(found)['num_classes'] == 10
  with pytest.raises(checkpoints.TeacherCheckpointError,
                     match='gs://bucket/elsewhere'):
    checkpoints.resolve_teacher_dir('gs://bucket/elsewhere')


def test_log_of_a_bucket_workdir_is_kept_locally_then_copied(
  bucket, monkeypatch, tmp_path
):
  monkeypatch.setattr(cli.tempfile, 'gettempdir', lambda: str(tmp_path))
  at_exit = []
  monkeypatch.setattr(cli.atexit, 'register',
                      lambda fn, *args: at_exit.append((fn, args)))
  run = bucket / 'bucket/runs/r1'
  run.mkdir(parents=True)
  (run / 'log.txt').write_text('line of an earlier session\n')
  root_logger = std_logging.getLogger()
  before = list(root_logger.handlers)
  try:
    cli.log_to_file(f'{RUN}/log.txt')
    (handler,) = [h for h in root_logger.handlers if h not in before]
    std_logging.getLogger('test').warning('a line of this session')
    handler.flush()
  finally:
    for h in root_logger.handlers:
      if h not in before:
        root_logger.removeHandler(h)
        h.close()
  ((fn, args),) = at_exit
  fn(*args)
  log = (run / 'log.txt').read_text()
  assert log.startswith('line of an earlier session\n')
  assert 'a line of this session' in log


def test_results_table_of_a_sweep_root_on_a_bucket(bucket):
  """`python -m mhkd_jax.tools.results gs://...` reads the runs a pod wrote there
  and writes the table, the CSV and the curves beside them."""
  from mhkd_jax.tools import results  # noqa: PLC0415

  root = 'gs://bucket/sweep'
  config = {'method': 'kd', 'model': 'resnet8x4', 'seed': 0,
            'num_students': 1, 'teacher': {'model': 'resnet32x4'},
            'data': {'name': 'cifar100'}}
  history = [{'step': e, 'epoch': e, 'eval/acc': 0.6 + 0.1 * e}
             for e in (1, 2)]
  for seed, acc in ((0, 0.8), (1, 0.7)):
    workdir = paths.join(root, f'kd/seed={seed}')
    paths.makedirs(workdir)
    records.write_json(paths.join(workdir, 'config.json'),
                           {**config, 'seed': seed})
    records.write_json(paths.join(workdir, 'results.json'), {
      'method': 'kd', 'model': 'resnet8x4', 'teacher': 'resnet32x4',
      'data': 'cifar100', 'seed': seed, 'final': {'eval/acc': acc},
      'best_eval_acc': acc, 'history': history,
    })
  paths.makedirs(paths.join(root, 'crd/seed=0'))
  records.write_json(paths.join(root, 'crd/seed=0/config.json'),
                         {**config, 'method': 'crd'})

  text = results.write_report(root)

  assert '| kd | last 75.00 ± 5.00 · best 75.00 ± 5.00 (n=2)' in text
  assert '- crd/seed=0 (seed 0): unfinished' in text
  local = bucket / 'bucket' / 'sweep'
  assert (local / 'results.md').read_text().strip() == text.strip()
  assert len((local / 'results.csv').read_text().splitlines()) == 4
  png = local / 'curves_cifar100_resnet32x4-resnet8x4.png'
  assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_sweep_scripts_for_a_bucket_root(bucket):
  """A pod's sweep: the manifest and launch scripts are written under the
  gs:// root and name gs:// workdirs."""
  from mhkd_jax.tools import sweep  # noqa: PLC0415

  sweep.run_sweep(test_config.get_config(), 'gs://bucket/sw', 'seed=0,1',
                  'scripts', ['--config=configs/test.py'])
  local = bucket / 'bucket' / 'sw'
  assert sorted(os.listdir(local / 'launch')) == ['seed=0.sh', 'seed=1.sh']
  script = (local / 'launch' / 'seed=1.sh').read_text()
  assert '--workdir=gs://bucket/sw/seed=1' in script
  manifest = json.loads((local / 'sweep.json').read_text())
  assert [e['workdir'] for e in manifest['runs']] == ['seed=0', 'seed=1']
