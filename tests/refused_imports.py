"""Runs a program as on a machine without some packages, and reports what
it imported.

The project's GPU machine has jax, flax, optax, orbax and tensorboard but
no TensorFlow, TFDS, clu or grain. ``environment`` writes a
``sitecustomize`` module (Python imports it at start-up from PYTHONPATH)
that sets ``sys.modules[name] = None`` for each refused top-level package:
importing it or any of its submodules then raises ImportError, as if it
were not installed, and ``importlib.util.find_spec`` answers None. At exit
it writes which of the watched packages were imported to a JSON file, so
a run with the packages installed can be checked not to import them.
"""

import json
import os
import pathlib

# What an accelerator image may lack (experiments/accelerator_check.py
# records the same four).
HEAVY_MODULES = ('tensorflow', 'tensorflow_datasets', 'clu', 'grain')

ROOT = pathlib.Path(__file__).resolve().parents[1]

_SITECUSTOMIZE = '''\
import atexit, json, os, sys

_REFUSED = [m for m in os.environ['REFUSED_IMPORTS'].split(',') if m]
_WATCHED = os.environ['WATCHED_IMPORTS'].split(',')
for _name in _REFUSED:
  sys.modules[_name] = None  # import raises ImportError


def _report():
  # A None entry is a refused import, not a module.
  imported = sorted({m.partition('.')[0] for m, mod in sys.modules.items()
                     if mod is not None and m.partition('.')[0] in _WATCHED})
  with open(os.environ['IMPORTS_REPORT'], 'w') as f:
    json.dump({'refused': _REFUSED, 'imported': imported}, f)


atexit.register(_report)
'''


def environment(directory, *, refuse=HEAVY_MODULES, watch=HEAVY_MODULES):
  """(env, report path): an environment for ``subprocess.run`` in which
  ``refuse`` cannot be imported and the imports of ``watch`` are
  reported; the repository is on the path."""
  directory = pathlib.Path(directory)
  site = directory / 'refused_imports_site'
  site.mkdir(parents=True, exist_ok=True)
  (site / 'sitecustomize.py').write_text(_SITECUSTOMIZE)
  report = directory / 'imports.json'
  env = {
    **os.environ,
    'PYTHONPATH': os.pathsep.join([str(site), str(ROOT)]),
    'REFUSED_IMPORTS': ','.join(refuse),
    'WATCHED_IMPORTS': ','.join(watch),
    'IMPORTS_REPORT': str(report),
  }
  return env, report


def read_report(report) -> dict:
  """{'refused': [...], 'imported': [...]} that the program wrote at exit."""
  with open(report) as f:
    return json.load(f)
