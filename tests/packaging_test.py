"""The installed package works outside the repository: configs included."""

import os
import subprocess
import sys
import zipfile

import pytest

# Not in `make test-fast` (builds a wheel): docs/testing.md.
pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
  """The package as `pip install .` lays it out, on its own path."""
  wheels = tmp_path_factory.mktemp('wheels')
  subprocess.run(
    [sys.executable, '-m', 'pip', 'wheel', '--quiet', '--no-deps',
     '--no-build-isolation', '-w', str(wheels), REPO],
    check=True, capture_output=True, text=True, timeout=300,
  )
  (wheel,) = [f for f in os.listdir(wheels) if f.endswith('.whl')]
  site = tmp_path_factory.mktemp('site')
  with zipfile.ZipFile(wheels / wheel) as z:
    names = z.namelist()
    z.extractall(site)
  return names, str(site)


def _run(site, cwd, *args):
  # The extracted wheel first on the path, run from outside the repository:
  # nothing can come from the checkout.
  env = dict(os.environ, PYTHONPATH=site)
  return subprocess.run(
    [sys.executable, *args], cwd=cwd, env=env, capture_output=True,
    text=True, timeout=300,
  )


def test_wheel_ships_the_configs_and_no_top_level_configs(installed):
  names, _ = installed
  for config in ('default', 'demo', 'test', 'cifar100_resnet32x4_resnet8x4'):
    assert f'mhkd_jax/configs/{config}.py' in names, config
  assert not [n for n in names if n.startswith(('configs/', 'tests/'))]


def test_demo_imports_and_answers_help_outside_the_repository(
  installed, tmp_path
):
  _, site = installed
  proc = _run(site, tmp_path, '-c',
              'import mhkd_jax, mhkd_jax.tools.demo; print(mhkd_jax.__file__)')
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.strip().startswith(site)
  proc = _run(site, tmp_path, '-m', 'mhkd_jax.tools.demo', '--help')
  # absl prints the usage and exits with status 1 after --help.
  assert proc.returncode in (0, 1) and 'Traceback' not in proc.stderr, (
    proc.stderr
  )
  assert 'The demo' in proc.stdout
  assert '--workdir' in proc.stdout and '--[no]smoke' in proc.stdout
