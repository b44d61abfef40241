"""Distillation methods: one module each, found by discovery.

Every module of this package (but ``base``) is imported here, and each
registers its method with ``@base.register``; nothing lists the methods by
hand. ``create_method(config)`` builds the one a config names;
``method_config_sections()`` gives every registered method's config
section for the default config to assemble.
"""

import importlib
import pkgutil

import ml_collections

from mhkd_jax.distill import base
from mhkd_jax.run import errors

for _module in pkgutil.iter_modules(__path__):
  if _module.name != 'base':
    importlib.import_module(f'{__name__}.{_module.name}')


def method_names(*, phases: bool = True) -> tuple[str, ...]:
  """Every registered method, sorted. ``phases=False`` leaves out the
  preliminary phases that other methods run first (``ab_init``,
  ``fsp_init``, ``ft_paraphraser``): the methods a benchmark names."""
  return tuple(sorted(
    name for name, cls in base.registry().items()
    if phases or cls.phase_of is None
  ))


def get_method(name: str) -> type[base.Method]:
  """The method class called ``name``; unknown names list the valid ones."""
  methods = base.registry()
  if name not in methods:
    raise errors.ConfigError(
      f'Unknown method {name!r}. Valid methods: {", ".join(method_names())}.'
    )
  return methods[name]


def create_method(config: ml_collections.ConfigDict) -> base.Method:
  """The method that ``config.method`` names, bound to ``config``."""
  return get_method(config.method)(config)


def method_config_sections() -> dict[str, ml_collections.ConfigDict]:
  """Section name -> defaults, for every registered method that has one."""
  sections = {}
  for name, cls in sorted(base.registry().items()):
    section = cls.default_config()
    if section is not None:
      sections[name] = section
  return sections
