"""The launch recipes issue exactly the commands the README promises.

``experiments/tpu/tpu.sh`` and ``experiments/slurm/train.sbatch`` run here
with stubs of ``gcloud``, ``gsutil`` and ``srun`` first on PATH that record
their arguments. The commands that ``gcloud ... ssh --command`` would run
on the workers are then run here too, against a stub ``python3`` (the TPU
image's system Python) whose ``-m uv venv DIR`` leaves a stub
``DIR/bin/python`` behind, as uv would, so their quoting, the archive they
unpack, the interpreter each step runs and the environment they pass are
checked, not only their text.
"""

import json
import os
import subprocess
import sys
import tarfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU_SH = os.path.join(REPO, 'experiments', 'tpu', 'tpu.sh')
SBATCH = os.path.join(REPO, 'experiments', 'slurm', 'train.sbatch')

_STUB = f'''#!{sys.executable}
import json, os, shutil, sys
with open(os.environ['STUB_LOG'], 'a') as f:
  f.write(json.dumps({{
    'argv': [sys.argv[0] if '/mhkd_venv/' in sys.argv[0]
             else os.path.basename(sys.argv[0])] + sys.argv[1:],
    'multihost': os.environ.get('MHKD_MULTIHOST'),
    'cwd': os.getcwd(),
  }}) + '\\n')
# `python -m uv venv ... DIR`: the venv's interpreter, itself a stub.
if sys.argv[1:4] == ['-m', 'uv', 'venv']:
  os.makedirs(os.path.join(sys.argv[-1], 'bin'), exist_ok=True)
  shutil.copy(sys.argv[0], os.path.join(sys.argv[-1], 'bin', 'python'))
'''


@pytest.fixture
def stubs(tmp_path):
  """(env, calls): PATH with recording stubs; ``calls()`` reads them."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  for name in ('gcloud', 'gsutil', 'srun', 'python3'):
    (bin_dir / name).write_text(_STUB)
    (bin_dir / name).chmod(0o755)
  log = tmp_path / 'calls.jsonl'
  home = tmp_path / 'home'
  home.mkdir()
  env = dict(os.environ, PATH=f'{bin_dir}:{os.environ["PATH"]}',
             STUB_LOG=str(log), HOME=str(home))
  for key in ('MHKD_MULTIHOST', 'PROJECT', 'SPOT', 'WORKDIR', 'CONFIG',
              'TEACHER', 'EXTRA_FLAGS', 'RESULTS_DIR', 'PYTHON_VERSION'):
    env.pop(key, None)

  def calls():
    if not log.exists():
      return []
    out = [json.loads(line) for line in log.read_text().splitlines()]
    log.unlink()
    return out

  return env, calls


def _tpu_env(env, **kw):
  return dict(env, TPU_NAME='mhkd-pod', ZONE='us-central2-b',
              BUCKET='gs://bkt', ACCELERATOR_TYPE='v4-32', **kw)


# A student run's workdir by the convention (docs/configuration.md), in
# the bucket, and its teacher's (the fitted heads, for MHKD).
STUDENT_DIR = 'gs://bkt/runs/cifar100/resnet32x4-resnet8x4/mhkd'
HEADS_DIR = 'gs://bkt/runs/cifar100/resnet32x4_heads'


def _run(script, args, env, cwd=REPO):
  proc = subprocess.run([script, *args], env=env, cwd=cwd,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  return proc


def _argv(calls):
  return [c['argv'] for c in calls]


SSH = ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'mhkd-pod',
       '--zone=us-central2-b', '--project=proj']


@pytest.mark.parametrize('accelerator,expected_type,version', [
  ('v4-8', 'v4-8', 'tpu-ubuntu2204-base'),
  ('v5e-16', 'v5litepod-16', 'v2-alpha-tpuv5-lite'),
  ('v4-32', 'v4-32', 'tpu-ubuntu2204-base'),
])
def test_create_and_delete_a_slice(stubs, accelerator, expected_type,
                                   version):
  env, calls = stubs
  env = _tpu_env(env, PROJECT='proj')
  env['ACCELERATOR_TYPE'] = accelerator
  _run(TPU_SH, ['create'], env)
  _run(TPU_SH, ['delete'], env)
  base = ['gcloud', 'compute', 'tpus', 'tpu-vm']
  where = ['mhkd-pod', '--zone=us-central2-b', '--project=proj']
  assert _argv(calls()) == [
    base + ['create'] + where + [f'--accelerator-type={expected_type}',
                                 f'--version={version}'],
    base + ['delete'] + where + ['--quiet'],
  ]
  _run(TPU_SH, ['create'], dict(env, SPOT='1'))
  assert _argv(calls())[0][-1] == '--spot'


def test_install_makes_a_python_3_11_venv_and_installs_the_tpu_extra(
  stubs, tmp_path
):
  env, calls = stubs
  _run(TPU_SH, ['install'], _tpu_env(env, PROJECT='proj'))
  scp, ssh = _argv(calls())
  assert scp[:5] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'scp']
  archive = scp[5]
  assert scp[6:] == ['mhkd-pod:~/', '--zone=us-central2-b',
                     '--project=proj', '--worker=all']
  assert ssh[:8] == SSH and ssh[8] == '--worker=all'
  assert ssh[9].startswith('--command=')
  # What each worker runs, run here in a fake home with the archive.
  home = tmp_path / 'home'
  subprocess.run(['cp', archive, str(home)], check=True)
  worker = subprocess.run(['bash', '-c', ssh[9][len('--command='):]],
                          cwd=home, env=env, capture_output=True, text=True)
  assert worker.returncode == 0, worker.stderr
  assert (home / 'mhkd_jax' / 'pyproject.toml').exists()
  assert (home / 'mhkd_jax' / 'mhkd_jax' / 'main.py').exists()
  # The image's Python 3.10 only brings uv; uv makes a 3.11 venv; the
  # venv's python installs the pinned set and the package with jax[tpu].
  venv = home / 'mhkd_venv'
  venv_python = str(venv / 'bin' / 'python')
  pips = calls()
  assert [c['argv'] for c in pips] == [
    ['python3', '-m', 'pip', 'install', '-q', '--user', '--upgrade', 'uv'],
    ['python3', '-m', 'uv', 'venv', '--clear', '--seed', '--python', '3.11',
     str(venv)],
    [venv_python, '-m', 'pip', 'install', '-q', '-r', 'requirements.txt'],
    [venv_python, '-m', 'pip', 'install', '-q', '-e', '.[tpu]'],
  ]
  assert {c['cwd'] for c in pips} == {str(home / 'mhkd_jax')}
  # PYTHON_VERSION picks another interpreter for the venv.
  _run(TPU_SH, ['install'], _tpu_env(env, PYTHON_VERSION='3.12'))
  _, ssh = _argv(calls())
  assert '--python 3.12 ~/mhkd_venv' in ssh[-1]
  # The archive is the committed tree (git archive HEAD).
  with tarfile.open(archive) as t:
    names = t.getnames()
  assert 'mhkd_jax/main.py' in names and 'requirements.txt' in names


def test_data_launch_logs_fetch(stubs, tmp_path):
  env, calls = stubs
  env = _tpu_env(env, PROJECT='proj', TEACHER=HEADS_DIR,
                 CONFIG='cifar100_resnet32x4_resnet8x4.py:mhkd',
                 WORKDIR=STUDENT_DIR,
                 EXTRA_FLAGS='--config.batch_size=512 '
                             '--config.learning_rate=0.4')
  home = env['HOME']
  for sub in ('data', 'launch', 'logs', 'fetch'):
    _run(TPU_SH, [sub], env, cwd=tmp_path)
  data, launch, logs, fetch = _argv(calls())
  assert data == ['gsutil', '-m', 'rsync', '-r',
                  f'{home}/tensorflow_datasets/cifar100',
                  'gs://bkt/tfds/cifar100']
  assert launch[:9] == SSH + ['--worker=all']
  assert logs == SSH + ['--worker=0',
                        '--command=tail -n 100 -f ~/mhkd_run.log']
  # The results land under results/ at the workdir's path in the bucket.
  results = 'results/runs/cifar100/resnet32x4-resnet8x4/mhkd'
  assert fetch == [
    'gsutil', '-m', 'rsync', '-r', '-x', '^checkpoints/.*|^export/.*',
    STUDENT_DIR, results,
  ]
  assert (tmp_path / results).is_dir()
  # The worker's command: in ~/mhkd_jax, one multi-host process of the
  # venv's python (not the image's python3), output to ~/mhkd_run.log, the
  # workdir and the data in the bucket.
  command = launch[9][len('--command='):]
  worker_home = tmp_path / 'worker'
  (worker_home / 'mhkd_jax').mkdir(parents=True)
  venv_python = worker_home / 'mhkd_venv' / 'bin' / 'python'
  venv_python.parent.mkdir(parents=True)
  venv_python.write_text(_STUB)
  venv_python.chmod(0o755)
  worker = subprocess.run(['bash', '-c', command + '\nwait'],
                          cwd=worker_home, env=dict(env, HOME=worker_home),
                          capture_output=True, text=True)
  assert worker.returncode == 0, worker.stderr
  (run,) = calls()
  assert run['argv'] == [
    str(venv_python), '-m', 'mhkd_jax.main',
    '--config=mhkd_jax/configs/cifar100_resnet32x4_resnet8x4.py:mhkd',
    f'--workdir={STUDENT_DIR}',
    '--config.data.data_dir=gs://bkt/tfds',
    f'--config.teacher.init={HEADS_DIR}',
    '--config.batch_size=512', '--config.learning_rate=0.4',
  ]
  assert run['multihost'] == '1'
  assert run['cwd'] == str(worker_home / 'mhkd_jax')
  assert (worker_home / 'mhkd_run.log').exists()
  config = os.path.join(REPO, 'mhkd_jax', 'configs',
                        'cifar100_resnet32x4_resnet8x4.py')
  assert os.path.exists(config)


def test_unknown_subcommand_or_missing_settings_fail(stubs):
  env, calls = stubs
  proc = subprocess.run([TPU_SH, 'launch'], env=env, capture_output=True,
                        text=True)
  assert proc.returncode != 0 and 'set TPU_NAME' in proc.stderr
  proc = subprocess.run([TPU_SH, 'deploy'], env=_tpu_env(env),
                        capture_output=True, text=True)
  assert proc.returncode == 2 and 'usage' in proc.stderr
  # launch needs a config and a workdir, fetch a workdir: the error names
  # an example of the convention, in this bucket, and nothing runs.
  proc = subprocess.run([TPU_SH, 'launch'], env=_tpu_env(env, WORKDIR='x'),
                        capture_output=True, text=True)
  assert proc.returncode != 0 and 'set CONFIG, e.g.' in proc.stderr
  for sub in ('launch', 'fetch'):
    proc = subprocess.run(
      [TPU_SH, sub], env=_tpu_env(env, CONFIG='c.py:kd'),
      capture_output=True, text=True,
    )
    assert proc.returncode != 0, sub
    assert 'set WORKDIR' in proc.stderr, proc.stderr
    assert 'WORKDIR=gs://bkt/runs/cifar100/resnet32x4-resnet8x4/mhkd' in (
      proc.stderr
    )
    assert 'docs/configuration.md#the-workdir-convention' in proc.stderr
  assert calls() == []


def test_slurm_script_runs_one_multihost_process_per_gpu(stubs):
  env, calls = stubs
  _run(SBATCH, ['cifar100_resnet32x4_resnet8x4.py:mhkd', '/cluster/run',
                '--config.teacher.init=/cluster/heads'], env)
  (srun,) = calls()
  assert srun['argv'] == [
    'srun', '--kill-on-bad-exit=1', 'python3', '-m', 'mhkd_jax.main',
    '--config=mhkd_jax/configs/cifar100_resnet32x4_resnet8x4.py:mhkd',
    '--workdir=/cluster/run', '--config.teacher.init=/cluster/heads',
  ]
  assert srun['multihost'] == '1'
  with open(SBATCH) as f:
    directives = [line.split()[1] for line in f if line.startswith('#SBATCH')]
  for d in ('--ntasks-per-node=8', '--gpus-per-node=8', '--signal=TERM@120',
            '--requeue'):
    assert d in directives
  # Without a workdir it stops with its usage, before srun.
  proc = subprocess.run([SBATCH, 'x.py'], env=env, capture_output=True,
                        text=True)
  assert proc.returncode != 0 and 'usage' in proc.stderr
  assert calls() == []
