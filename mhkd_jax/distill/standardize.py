"""The logit-standardization (LS; Sun et al., CVPR 2024) switch that every
logit-based method shares: ``<method>.logit_standardize``.

With it on, the student's and the teacher's logits pass through
``losses.logit_standardize`` (each row's z-score) before the distillation
term and nowhere else: CE and the accuracies see the raw logits, as in the
LS code (``mdistiller/distillers/KD.py``, ``DKD.py``, ``MLKD.py`` and its
CTKD folder). The LS code also lowers the temperature and raises the
distillation weight when the switch is on (``--base-temp 2 --kd-weight
9`` by default, per pair in its logs); those stay config values of each
method, set per pair by ``configs/cifar100.py``'s LS runs.
"""

import jax

from mhkd_jax import losses


def validate(check, section: str) -> None:
  """``<section>.logit_standardize`` must be a bool."""
  key = f'{section}.logit_standardize'
  check.require(isinstance(check.value(key), bool), key,
                'must be True or False.')


def logits(on: bool, *arrays: jax.Array) -> tuple[jax.Array, ...]:
  """The arrays as the distillation term sees them: standardised if
  ``on`` (a compile-time constant), unchanged otherwise."""
  if not on:
    return arrays
  return tuple(losses.logit_standardize(x) for x in arrays)
