"""Configs: ``default.py`` lists every key; the others override a few.

``configs/`` at the repository root links here, so
``--config=configs/X.py`` works from a clone and the installed package
carries the same files.
"""

from typing import Any


def flatten(tree, prefix: str = '') -> dict[str, Any]:
  """``{'dotted.key': leaf}`` of a nested ConfigDict or dict (a config,
  or the JSON a run recorded of one)."""
  flat = {}
  for key, value in tree.items():
    if hasattr(value, 'items'):
      flat.update(flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat
