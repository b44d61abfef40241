"""RepDistiller ``.pth`` checkpoints -> NNX models of ``mhkd_jax.models``.

The published CRD/RepDistiller teachers are PyTorch checkpoints; importing
them (instead of retraining) is what makes our distillation numbers
comparable with the literature. The mapping is by name alone, because the
NNX ports follow one convention: the NNX path of every variable, joined
with '.', is the PyTorch ``state_dict`` key, except for the leaf names

  conv/linear ``weight`` -> ``kernel``    BatchNorm ``weight`` -> ``scale``
  ``bias`` -> ``bias``                    ``running_mean`` -> ``mean``
                                          ``running_var`` -> ``var``

(``num_batches_tracked`` has no NNX counterpart and is ignored). Layouts:
conv kernels OIHW -> HWIO (grouped: ``(O, I/g, H, W) -> (H, W, I/g, O)``,
which ``feature_group_count`` expects), linear ``(out, in) -> (in, out)``.

A checkpoint either fits completely or is refused with one
``CheckpointMismatchError`` that lists what is missing, unexpected and
mis-shaped; the new state is built in full before anything is written into
the model, so a refused checkpoint never leaves a half-loaded model.

CLI (writes a teacher checkpoint that ``config.teacher.init`` accepts)::

  python -m mhkd_jax.interop.repdistiller --name resnet32x4 \\
    --pth ckpt_epoch_240.pth --workdir /tmp/teachers/resnet32x4
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import sys
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mhkd_jax.models import create_model
from mhkd_jax.run import errors

# NNX leaf name -> PyTorch leaf name.
_LEAF_TO_TORCH = {
  'kernel': 'weight',
  'scale': 'weight',
  'bias': 'bias',
  'mean': 'running_mean',
  'var': 'running_var',
}
# state_dict entries with no NNX counterpart.
_IGNORED_SUFFIXES = ('num_batches_tracked',)
# How many offending keys of each kind an error message names.
_SHOW = 5

_TORCH_MISSING = (
  'Importing PyTorch checkpoints needs torch: `pip install -e .[torch]` '
  '(or `pip install torch==2.13.0`, which takes the local CPU wheel; an '
  'unpinned torch pulls a multi-GB CUDA build).'
)


class CheckpointMismatchError(errors.UserError, ValueError):
  """A state_dict does not fit the NNX model it is loaded into.

  Attributes:
    model_name: the architecture the checkpoint was loaded as.
    missing: torch keys the model needs and the checkpoint lacks.
    unexpected: checkpoint keys the model has no variable for.
    mismatched: ``(key, expected_torch_shape, got_torch_shape)`` triples.
  """

  def __init__(
    self,
    model_name: str,
    missing: Sequence[str],
    unexpected: Sequence[str],
    mismatched: Sequence[tuple[str, tuple[int, ...], tuple[int, ...]]],
  ):
    self.model_name = model_name
    self.missing = list(missing)
    self.unexpected = list(unexpected)
    self.mismatched = list(mismatched)
    parts = []
    if self.missing:
      parts.append(f'missing keys: {_clip(self.missing)}')
    if self.unexpected:
      parts.append(f'unexpected keys: {_clip(self.unexpected)}')
    if self.mismatched:
      shapes = [
        f'{k} (expected {tuple(e)}, got {tuple(g)})'
        for k, e, g in self.mismatched
      ]
      parts.append(f'wrong shapes (torch layout): {_clip(shapes)}')
    super().__init__(
      f'The checkpoint does not fit {model_name}: ' + '; '.join(parts) + '. '
      'Check --name and --num_classes against the model that was saved.'
    )


def _clip(items: Sequence[str]) -> str:
  shown = ', '.join(items[:_SHOW])
  if len(items) > _SHOW:
    shown += f' (+{len(items) - _SHOW} more)'
  return shown


def torch_key(path: Sequence[Any]) -> str:
  """The PyTorch state_dict key of an NNX variable path."""
  *prefix, leaf = (str(p) for p in path)
  if leaf not in _LEAF_TO_TORCH:
    raise ValueError(
      f'NNX variable {".".join(map(str, path))} has leaf {leaf!r}, which has '
      'no PyTorch counterpart; the model breaks the naming convention.'
    )
  return '.'.join([*prefix, _LEAF_TO_TORCH[leaf]])


def _torch_shape(nnx_shape: Sequence[int]) -> tuple[int, ...]:
  """The PyTorch shape of an NNX array (inverse of ``_to_nnx_layout``)."""
  s = tuple(nnx_shape)
  if len(s) == 4:  # HWIO -> OIHW
    return (s[3], s[2], s[0], s[1])
  if len(s) == 2:  # (in, out) -> (out, in)
    return (s[1], s[0])
  return s


def _to_nnx_layout(array: np.ndarray) -> np.ndarray:
  """OIHW -> HWIO for conv kernels, (out, in) -> (in, out) for linear."""
  if array.ndim == 4:
    return np.transpose(array, (2, 3, 1, 0))
  if array.ndim == 2:
    return array.T
  return array


def normalize_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """Drops ``num_batches_tracked`` and a DataParallel ``module.`` prefix.

  RepDistiller saves unwrapped models, but checkpoints of DataParallel
  runs elsewhere prefix every key with ``module.``; accept both.
  """
  keys = list(state_dict)
  strip = bool(keys) and all(k.startswith('module.') for k in keys)
  out = {}
  for k, v in state_dict.items():
    k = k[len('module.') :] if strip else k
    if k.rsplit('.', 1)[-1] in _IGNORED_SUFFIXES:
      continue
    out[k] = v
  return out


def _as_numpy(value: Any) -> np.ndarray:
  """numpy from numpy, jax or torch (any device, bf16 included) arrays."""
  if hasattr(value, 'detach') and hasattr(value, 'is_floating_point'):
    value = value.detach().cpu()  # torch, duck-typed: torch stays optional.
    if value.is_floating_point():
      value = value.float()  # bf16 has no numpy dtype; the models are fp32.
    return value.numpy()
  return np.asarray(value)


def state_dict_to_nnx_state(
  state_dict: Mapping[str, Any],
  model: nnx.Module,
  *,
  model_name: str | None = None,
) -> nnx.State:
  """Maps a PyTorch state_dict onto ``model``'s parameters and BN statistics.

  Pure: ``model`` is only read (for its structure, shapes and dtypes), so
  a checkpoint that does not fit leaves it untouched.

  Args:
    state_dict: key -> array (numpy, jax or torch tensors, as from
      ``module.state_dict()``), in PyTorch layout.
    model: an NNX model that follows the naming convention of this module;
      an abstract one (``nnx.eval_shape``) is enough.
    model_name: named in errors; defaults to the model's class name.

  Returns:
    An ``nnx.State`` of every ``nnx.Param`` and ``nnx.BatchStat`` of
    ``model``, ready for ``nnx.update(model, state)``.

  Raises:
    CheckpointMismatchError: keys missing, unexpected, or shapes that
      differ; all of them are collected before raising.
  """
  model_name = model_name or type(model).__name__
  sd = normalize_state_dict(state_dict)
  flat = nnx.to_flat_state(
    nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))
  )
  new_leaves = []
  used: set[str] = set()
  missing, mismatched = [], []
  for path, var in flat:
    key = torch_key(path)
    if key in used:
      raise ValueError(
        f'Two NNX variables of {model_name} map to the torch key {key!r}.'
      )
    used.add(key)
    if key not in sd:
      missing.append(key)
      continue
    array = _as_numpy(sd[key])
    expected = _torch_shape(var.shape)
    if tuple(array.shape) != expected:
      mismatched.append((key, expected, tuple(array.shape)))
      continue
    value = jnp.asarray(_to_nnx_layout(array), dtype=var.dtype)
    new_leaves.append((path, var.replace(value)))
  unexpected = [k for k in sd if k not in used]
  if missing or unexpected or mismatched:
    raise CheckpointMismatchError(model_name, missing, unexpected, mismatched)
  return nnx.from_flat_state(new_leaves)


class UnsafeCheckpointError(errors.UserError, ValueError):
  """A ``.pth`` holds pickled objects that only running its code can load."""


def read_pth(
  path: str, *, allow_unsafe_pickle: bool = False
) -> dict[str, np.ndarray]:
  """Reads a ``.pth`` into a numpy state_dict (torch imported here only).

  RepDistiller saves ``{'epoch', 'model', 'accuracy', 'optimizer'}`` with
  CUDA tensors (hence ``map_location='cpu'``), and its ``*_last.pth``
  also pickles the argparse ``Namespace`` of the run. Files are read with
  ``weights_only=True`` and that one class allow-listed: unpickling any
  other object can run code from the file, so such a file is refused,
  naming the class, unless ``allow_unsafe_pickle`` (the CLI's
  ``--allow_unsafe_pickle``) says the file is trusted.
  """
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(_TORCH_MISSING) from e
  try:
    with torch.serialization.safe_globals([argparse.Namespace]):
      obj = torch.load(path, map_location='cpu', weights_only=True)
  except pickle.UnpicklingError as e:
    if not allow_unsafe_pickle:
      found = re.search(r'GLOBAL ([\w.]+)', str(e))
      what = found.group(1) if found else str(e).splitlines()[0][:200]
      raise UnsafeCheckpointError(
        f'{path} holds a pickled {what}, beyond tensors and an argparse '
        'Namespace. Loading it would run code from the file, so it was '
        'refused. If you trust where the file comes from, pass '
        '--allow_unsafe_pickle (allow_unsafe_pickle=True in Python) to '
        'unpickle it in full.'
      ) from None
    warnings.warn(
      f'{path}: unpickling in full (allow_unsafe_pickle), which runs code '
      'from the file.',
      stacklevel=2,
    )
    obj = torch.load(path, map_location='cpu', weights_only=False)
  if isinstance(obj, torch.nn.Module):
    obj = obj.state_dict()
  if isinstance(obj, Mapping):
    for wrapper in ('model', 'state_dict'):
      if isinstance(obj.get(wrapper), Mapping):
        obj = obj[wrapper]
        break
  if not isinstance(obj, Mapping) or not all(
    isinstance(v, torch.Tensor) for v in obj.values()
  ):
    top = list(obj)[:10] if isinstance(obj, Mapping) else type(obj).__name__
    raise ValueError(
      f'{path} is neither a state_dict nor a dict with one under "model" '
      f'(top level: {top}).'
    )
  return {k: _as_numpy(t) for k, t in obj.items()}


def load_repdistiller_checkpoint(
  path: str, name: str, *, num_classes: int,
  allow_unsafe_pickle: bool = False,
) -> nnx.Module:
  """Builds ``create_model(name)`` and fills it from a RepDistiller ``.pth``.

  Args:
    path: the ``.pth`` file: ``{'model': state_dict, ...}`` or a bare
      state_dict.
    name: the architecture (RepDistiller's ``model_dict`` name, e.g.
      ``resnet32x4``).
    num_classes: classes of the saved classifier (100 for CIFAR-100).
    allow_unsafe_pickle: unpickle objects beyond tensors and an argparse
      Namespace, which runs code from the file (``read_pth``).

  Returns:
    The NNX model with the checkpoint's weights and BatchNorm statistics.

  Raises:
    ImportError: torch is not installed.
    CheckpointMismatchError: the checkpoint does not fit the model; no
      model is returned, so nothing half-loaded escapes.
  """
  state_dict = read_pth(path, allow_unsafe_pickle=allow_unsafe_pickle)
  # Shapes only: random initialisation is wasted work here (seconds for
  # ResNet50 on a CPU host), the checkpoint replaces every parameter.
  abstract = nnx.eval_shape(
    lambda: create_model(name, num_classes=num_classes, rngs=nnx.Rngs(0))
  )
  state = state_dict_to_nnx_state(state_dict, abstract, model_name=name)
  graphdef, _, other = nnx.split(
    abstract, nnx.Any(nnx.Param, nnx.BatchStat), ...
  )
  if not jax.tree.leaves(other):
    return nnx.merge(graphdef, state)
  # The model holds state a checkpoint does not carry (e.g. RNG keys):
  # build it for real and overwrite what the checkpoint does carry.
  model = create_model(name, num_classes=num_classes, rngs=nnx.Rngs(0))
  nnx.update(model, state)
  return model


def main(argv: Sequence[str] | None = None) -> None:
  """CLI: import a ``.pth`` and write it as a teacher checkpoint.

  argparse rather than absl flags: this module is also imported as a
  library, and module-level absl flags (``--workdir``) would collide with
  ``mhkd_jax.main``'s.
  """
  parser = argparse.ArgumentParser(
    prog='python -m mhkd_jax.interop.repdistiller', description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument('--name', required=True, help='model, e.g. resnet32x4')
  parser.add_argument('--pth', required=True, help='RepDistiller .pth file')
  parser.add_argument(
    '--workdir', required=True, help='where to write the teacher checkpoint'
  )
  parser.add_argument('--num_classes', type=int, default=100)
  parser.add_argument(
    '--allow_unsafe_pickle', action='store_true',
    help='unpickle objects beyond tensors and an argparse Namespace; this '
    'RUNS CODE FROM THE FILE: only for files from a source you trust',
  )
  args = parser.parse_args(argv)

  from mhkd_jax.run import checkpoints  # pylint: disable=g-import-not-at-top

  model = load_repdistiller_checkpoint(
    args.pth, args.name, num_classes=args.num_classes,
    allow_unsafe_pickle=args.allow_unsafe_pickle,
  )
  os.makedirs(args.workdir, exist_ok=True)
  checkpoints.save_teacher(
    args.workdir, model, model_name=args.name, num_classes=args.num_classes
  )
  print(
    f'Wrote {args.name} ({args.num_classes} classes) from {args.pth} to '
    f'{os.path.abspath(args.workdir)}; use it with '
    f'--config.teacher.init={os.path.abspath(args.workdir)}'
  )


if __name__ == '__main__':
  try:
    main(sys.argv[1:])
  except (errors.UserError, ImportError, OSError) as e:
    # The message says what to fix; a traceback would only bury it.
    sys.exit(f'{type(e).__name__}: {e}')
