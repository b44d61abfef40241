"""Everything saved goes through orbax: training checkpoints and teachers.

Training checkpoints (``workdir/checkpoints``) hold the train state
(``mhkd_jax.train_state``: parameters, buffers such as BatchNorm
statistics and method state, optimizer state, step and the run's RNG key);
the data position is the step (an input's batch k is a function of the
run's key and k), so a resumed run replays exactly what an uninterrupted
run would have seen.

A *teacher checkpoint* is a directory with ``teacher.json`` (architecture,
classes and, if any, the heads' spec) and ``state/`` (the model's and the
heads' variables). Every run exports its trained network to
``workdir/export`` in this format; the PyTorch importer writes it too;
``config.teacher.init`` accepts either such a directory or a run's workdir.
"""

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx

from mhkd_jax import heads as heads_lib
from mhkd_jax.distill.base import Teacher
from mhkd_jax.models import create_model

TEACHER_META = 'teacher.json'
EXPORT_DIR = 'export'
# Teachers saved before the input shape was recorded were CIFAR-shaped.
DEFAULT_INPUT_SHAPE = (1, 32, 32, 3)
# What a teacher checkpoint holds: every variable but activations a direct
# model call may have sown (nnx.Intermediate), which are not weights.
_SAVED = nnx.Not(nnx.Intermediate)


class TeacherCheckpointError(ValueError):
  """A teacher checkpoint is missing or does not fit the configuration."""


def to_pure(state: nnx.State) -> dict:
  """nnx.State -> nested dict of arrays with string keys (orbax-friendly)."""

  def stringify(d):
    if isinstance(d, dict):
      return {str(k): stringify(v) for k, v in d.items()}
    return d

  return stringify(nnx.to_pure_dict(state))


def from_pure(abstract: nnx.State, pure: dict) -> nnx.State:
  """Inverse of ``to_pure``: fills ``abstract``'s structure with ``pure``."""

  def keyed(d, template):
    if not isinstance(template, dict):
      return d
    return {k: keyed(d[str(k)], template[k]) for k in template}

  template = nnx.to_pure_dict(abstract)
  state = jax.tree.map(lambda x: x, abstract)
  nnx.replace_by_pure_dict(state, keyed(pure, template))
  return state


# --------------------------------------------------------------------------
# Training checkpoints.


class TrainCheckpointer:
  """Thin wrapper over ``ocp.CheckpointManager`` for one run's workdir."""

  def __init__(self, workdir: str, *, max_to_keep: int):
    self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    self._manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True
      ),
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, tree) -> None:
    """Saves ``tree`` as ``step`` (once: a second save of a step is a
    no-op, e.g. the last periodic checkpoint followed by a preemption)."""
    if step in self._manager.all_steps():
      return
    self._manager.save(step, args=ocp.args.StandardSave(tree), force=True)

  def restore(self, step: int, abstract_tree):
    return self._manager.restore(
      step, args=ocp.args.StandardRestore(abstract_tree)
    )

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


# --------------------------------------------------------------------------
# Teacher checkpoints.


def save_teacher(
  directory: str,
  model: nnx.Module,
  heads: heads_lib.AuxHeads | None = None,
  *,
  model_name: str,
  num_classes: int,
  input_shape: tuple[int, ...] = DEFAULT_INPUT_SHAPE,
) -> None:
  """Writes ``model`` (and ``heads``) as a teacher checkpoint.

  ``input_shape`` (NHWC, batch 1) is the input the model was trained on;
  the heads are rebuilt for it when the checkpoint is loaded.
  """
  directory = os.path.abspath(directory)
  tree = {'model': to_pure(nnx.state(model, _SAVED))}
  if heads is not None:
    tree['heads'] = to_pure(nnx.state(heads, _SAVED))
  # Host copies: a teacher is read back on any device layout.
  tree = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.join(directory, 'state'), tree, force=True)
  checkpointer.wait_until_finished()
  meta = {
    'model': model_name,
    'num_classes': num_classes,
    'heads': heads.spec.to_json() if heads is not None else None,
    'input_shape': list(input_shape),
  }
  if jax.process_index() == 0:
    with open(os.path.join(directory, TEACHER_META), 'w') as f:
      json.dump(meta, f, indent=2)
  logging.info('Wrote teacher checkpoint %s (%s)', directory, meta)


def resolve_teacher_dir(path: str) -> str:
  """A teacher directory itself, or a run workdir holding ``export/``."""
  path = os.path.abspath(os.path.expanduser(path))
  for candidate in (path, os.path.join(path, EXPORT_DIR)):
    if os.path.exists(os.path.join(candidate, TEACHER_META)):
      return candidate
  raise TeacherCheckpointError(
    f'No teacher checkpoint at {path!r} (looked for {TEACHER_META} there and '
    f'in {EXPORT_DIR}/). Train a teacher with the ce method (e.g. '
    '--config=configs/cifar100_resnet32x4_resnet8x4.py:teacher), import a '
    'RepDistiller .pth with `python -m mhkd_jax.interop.repdistiller`, '
    'then set --config.teacher.init to that workdir.'
  )


def _check_fits(abstract: dict, loaded: dict, what: str, where: str):
  """Raises one error listing every leaf whose path or shape differs."""
  flat_abs = dict(jax.tree_util.tree_flatten_with_path(abstract)[0])
  flat_new = dict(jax.tree_util.tree_flatten_with_path(loaded)[0])
  name = jax.tree_util.keystr
  missing = [name(k) for k in flat_abs if k not in flat_new]
  extra = [name(k) for k in flat_new if k not in flat_abs]
  wrong = [
    f'{name(k)}: expected {tuple(v.shape)}, got {tuple(flat_new[k].shape)}'
    for k, v in flat_abs.items()
    if k in flat_new and tuple(v.shape) != tuple(flat_new[k].shape)
  ]
  if missing or extra or wrong:
    parts = []
    for label, items in (('missing', missing), ('unexpected', extra),
                         ('wrong shape', wrong)):
      if items:
        parts.append(f'{label}: {", ".join(items[:5])}'
                     + (f' (+{len(items) - 5} more)' if len(items) > 5 else ''))
    raise TeacherCheckpointError(
      f'The teacher checkpoint {where} does not fit {what}; '
      + '; '.join(parts)
    )


def load_teacher(
  path: str,
  *,
  model_name: str | None = None,
  num_classes: int | None = None,
  input_shape: tuple[int, ...] | None = None,
) -> Teacher:
  """Loads a teacher checkpoint as a frozen ``Teacher`` role.

  Args:
    path: a teacher directory, or a run workdir with an ``export/``.
    model_name: the architecture the config expects (None: take the
      checkpoint's own).
    num_classes: the classes the data set has (None: the checkpoint's).
    input_shape: the NHWC input the run feeds (None: the checkpoint's);
      heads are rebuilt for it.
  """
  directory = resolve_teacher_dir(path)
  with open(os.path.join(directory, TEACHER_META)) as f:
    meta = json.load(f)
  if model_name and meta['model'] != model_name:
    raise TeacherCheckpointError(
      f'The teacher checkpoint {directory} holds a {meta["model"]}, but '
      f'config.teacher.model is {model_name!r}. Set '
      f'--config.teacher.model={meta["model"]} or point config.teacher.init '
      'at a checkpoint of that architecture.'
    )
  if num_classes is not None and meta['num_classes'] != num_classes:
    raise TeacherCheckpointError(
      f'The teacher checkpoint {directory} has {meta["num_classes"]} '
      f'classes; the data set has {num_classes}.'
    )
  # The values are replaced by the checkpoint's below. Building for real
  # is cheaper than tracing the build under nnx.eval_shape (resnet32x4 with
  # 'dih' heads: 1.0 s vs 1.9 s on a 2-core CPU).
  rngs = nnx.Rngs(0)
  model = create_model(
    meta['model'], num_classes=meta['num_classes'], rngs=rngs
  )
  heads = None
  if meta.get('heads'):
    spec = heads_lib.HeadsSpec.from_json(meta['heads'])
    heads = heads_lib.create_heads(
      spec.kind, model, spec.stages, num_classes=meta['num_classes'],
      input_shape=tuple(
        input_shape or meta.get('input_shape', DEFAULT_INPUT_SHAPE)
      ), width=spec.width, rngs=rngs,
    )
  abstract = {'model': to_pure(nnx.state(model, _SAVED))}
  if heads is not None:
    abstract['heads'] = to_pure(nnx.state(heads, _SAVED))
  loaded = ocp.StandardCheckpointer().restore(os.path.join(directory, 'state'))
  what = f'a {meta["model"]}' + (' with heads' if heads is not None else '')
  _check_fits(abstract, loaded, what, directory)
  nnx.update(model, from_pure(nnx.state(model, _SAVED), loaded['model']))
  if heads is not None:
    nnx.update(heads, from_pure(nnx.state(heads, _SAVED), loaded['heads']))
  logging.info('Loaded teacher %s from %s', meta['model'], directory)
  return Teacher(model, heads, name=meta['model'])
