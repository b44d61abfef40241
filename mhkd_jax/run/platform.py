"""Platform defaults: the config values 'auto' stands for, resolved once.

Two keys default to 'auto', because the right value depends on the
device the run is on:

* ``compute_dtype``: 'bfloat16' on GPUs and TPUs (their matrix units run
  bf16 at several times the float32 rate), 'float32' on CPUs (no bf16
  arithmetic; the tests and the CPU figures are float32).
* ``students_loop``: 'vmap' on GPUs and TPUs (one batched program, wide
  kernels), 'unroll' on CPUs (measured faster there, docs/performance.md);
  'vmap' stays the accelerator choice until one is measured.

An explicit value always wins. ``resolve`` replaces 'auto' in a run's
config at its start, logs each choice and returns the config the run
records, so ``config.json``, a resumed run and ``results.json`` all see
the value that was used, never 'auto'. The compute dtype is part of the
experiment: a resumed run whose 'auto' would now pick another dtype (a
float32 run on CPU continued on a GPU) keeps the one its record holds.
The students loop only says how the step is run, so 'auto' follows the
platform the run is on now.
"""

from __future__ import annotations

import copy

import jax
from absl import logging

AUTO = 'auto'

# What 'auto' stands for: (on CPUs, on GPUs and TPUs).
_AUTO_VALUES = {
  'compute_dtype': ('float32', 'bfloat16'),
  'students_loop': ('unroll', 'vmap'),
}
# Keys whose recorded value a resumed run keeps when it says 'auto'.
_KEPT_ON_RESUME = ('compute_dtype',)


def on_accelerator() -> bool:
  """Whether jax's default devices are GPUs or TPUs (anything but CPU)."""
  return jax.default_backend() != 'cpu'


def choice(key: str, value: str) -> str:
  """``value``, or for 'auto' what it stands for on this platform."""
  if value != AUTO:
    return value
  on_cpu, on_accelerators = _AUTO_VALUES[key]
  return on_accelerators if on_accelerator() else on_cpu


def resolve(config, recorded: dict | None = None):
  """``config`` with every 'auto' replaced by its platform value (a copy;
  ``config`` itself is returned when it holds no 'auto').

  ``recorded`` is the run's ``config.json`` when it resumes (None for a
  new run): for the keys of ``_KEPT_ON_RESUME`` its value wins over the
  platform's.
  """
  autos = [k for k in _AUTO_VALUES if config[k] == AUTO]
  if not autos:
    return config
  config = copy.deepcopy(config)
  for key in autos:
    value = choice(key, AUTO)
    kept = (recorded or {}).get(key)
    if key in _KEPT_ON_RESUME and kept not in (None, AUTO):
      value = kept
      why = 'the value the resumed run recorded'
    else:
      why = f'the default on {jax.default_backend()}'
    config[key] = value
    logging.info("config.%s='auto': %r (%s).", key, value, why)
  return config
