"""Distillation methods: one module each (see ``base`` for the interface)."""

import types

from mhkd_jax.distill import ce, kd, mhkd, teacher_heads

METHODS: dict[str, types.ModuleType] = {
  'ce': ce,
  'kd': kd,
  'mhkd': mhkd,
  'teacher_heads': teacher_heads,
}


def get_method(name: str) -> types.ModuleType:
  """The method module called ``name``; unknown names list the valid ones."""
  if name not in METHODS:
    raise ValueError(
      f'Unknown method {name!r}. Valid methods: {", ".join(sorted(METHODS))}.'
    )
  return METHODS[name]
