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

import contextlib
import json

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from flax import nnx

from mhkd_jax.distill.base import Teacher
from mhkd_jax.models import MODEL_NAMES, create_model
from mhkd_jax.models import heads as heads_lib
from mhkd_jax.run import errors, paths

TEACHER_META = 'teacher.json'
EXPORT_DIR = 'export'
# Teachers saved before the input shape was recorded were CIFAR-shaped.
DEFAULT_INPUT_SHAPE = (1, 32, 32, 3)
# What a teacher checkpoint holds: every variable but activations a direct
# model call may have sown (nnx.Intermediate), which are not weights.
_SAVED = nnx.Not(nnx.Intermediate)


class TeacherCheckpointError(errors.UserError, ValueError):
  """A teacher checkpoint is missing, damaged or does not fit the config."""


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
  """``ocp.CheckpointManager`` for one run's workdir, with its faults named.

  Orbax writes each step into a temporary directory and renames it when
  complete, so a crash mid-save never leaves a step that looks finished.
  On top of that:

  * ``restore_latest`` checks that the newest checkpoint holds the same
    network as this run before reading it (another model or method is a
    ``WorkdirError`` naming the differing arrays), and a checkpoint that
    cannot be read is named and set aside (renamed ``<step>.unreadable``)
    in favour of the newest readable one. If none can be read, it stops
    and leaves them all in place: it never starts again from step 0 over
    a workdir that holds checkpoints.
  * A save that fails (a full disk, a lost mount) raises
    ``CheckpointSaveError`` naming the last good step, which stays
    restorable.
  """

  def __init__(self, workdir: str, *, max_to_keep: int):
    self.directory = paths.join(paths.absolute(workdir), 'checkpoints')
    self._manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True
      ),
      # Named up front, so that a checkpoint's metadata can be read before
      # anything was saved or restored in this process.
      item_handlers=ocp.StandardCheckpointHandler(),
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, tree) -> None:
    """Saves ``tree`` as ``step`` (once: a second save of a step is a
    no-op, e.g. the last periodic checkpoint followed by a preemption).
    Saving is asynchronous: a failure shows at the next save or close."""
    if step in self._manager.all_steps():
      return
    with self._save_errors():
      self._manager.save(step, args=ocp.args.StandardSave(tree), force=True)

  def restore(self, step: int, abstract_tree):
    return self._manager.restore(
      step, args=ocp.args.StandardRestore(abstract_tree)
    )

  def restore_latest(self, abstract_tree) -> tuple[int | None, object]:
    """(step, tree) of the newest readable checkpoint; (None, None) if the
    workdir has none. See the class docstring for damaged checkpoints."""
    steps = sorted(self._manager.all_steps(), reverse=True)
    unreadable = []
    for step in steps:
      try:
        metadata = self._manager.item_metadata(step)
        if metadata is None:
          raise ValueError('its metadata cannot be read')
      except Exception as e:  # pylint: disable=broad-except
        # Whatever the damage (truncated files, garbage, missing pieces),
        # orbax fails in its own way; the step is what matters here.
        unreadable.append((step, _first_line(e)))
        continue
      _check_same_network(metadata.tree, abstract_tree, self.directory, step)
      try:
        tree = self.restore(step, abstract_tree)
      except Exception as e:  # pylint: disable=broad-except
        unreadable.append((step, _first_line(e)))
        continue
      for bad_step, reason in unreadable:
        aside = self._set_aside(bad_step)
        logging.warning(
          'The checkpoint of step %d in %s cannot be read (%s); it was set '
          'aside as %s and the run resumes from step %d.', bad_step,
          self.directory, reason, aside, step,
        )
      if unreadable:
        self._manager.reload()
      return step, tree
    if unreadable:
      listed = '\n  '.join(f'step {s}: {r}' for s, r in unreadable)
      raise errors.WorkdirError(
        f'No checkpoint in {self.directory} can be read:\n  {listed}\n'
        'They are left in place. Move them away (or use a fresh --workdir) '
        'to start again from step 0.'
      )
    return None, None

  def _set_aside(self, step: int) -> str:
    path = paths.join(self.directory, str(step))
    aside = f'{path}.unreadable'
    n = 1
    while paths.exists(aside):
      n += 1
      aside = f'{path}.unreadable{n}'
    if jax.process_index() == 0:
      epath.Path(path).rename(aside)
    return aside

  @contextlib.contextmanager
  def _save_errors(self):
    # Saves run in the background: a failure surfaces at the next save or
    # at close, so the message names the last step that did complete.
    try:
      yield
    except OSError as e:
      self._manager.reload()
      raise errors.CheckpointSaveError(
        f'Writing a checkpoint to {self.directory} failed ({e}). The last '
        f'good checkpoint is step {self._manager.latest_step()}, and it is '
        'intact: free space (or fix the path) and re-run the same command '
        'to resume from it.'
      ) from None

  def close(self) -> None:
    """Waits for the saves under way (raising if one failed), then closes."""
    with self._save_errors():
      try:
        self._manager.wait_until_finished()
      finally:
        self._manager.close()


def _first_line(e: Exception) -> str:
  return f'{type(e).__name__}: {e}'.split('\n')[0][:200]


def _flat_shapes(tree) -> dict[str, tuple]:
  """'a/b/c' -> shape for every array leaf (names as orbax stores them)."""

  def name(key):
    for attr in ('key', 'name', 'idx'):
      if hasattr(key, attr):
        return str(getattr(key, attr))
    return str(key)

  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {
    '/'.join(name(k) for k in path): tuple(getattr(leaf, 'shape', ()))
    for path, leaf in leaves
  }


def _check_same_network(saved, abstract, directory, step) -> None:
  """The trained parts and buffers of a checkpoint must be this run's."""
  saved = {k: v for k, v in _flat_shapes(saved).items()
           if k.startswith(('params/', 'buffers/'))}
  wanted = {k: v for k, v in _flat_shapes(abstract).items()
            if k.startswith(('params/', 'buffers/'))}
  if saved == wanted:
    return
  parts = []
  for label, keys in (
    ('only in the checkpoint', sorted(set(saved) - set(wanted))),
    ('only in this run', sorted(set(wanted) - set(saved))),
    ('other shapes (checkpoint vs this run)', [
      f'{k} {saved[k]} vs {wanted[k]}'
      for k in sorted(set(saved) & set(wanted)) if saved[k] != wanted[k]
    ]),
  ):
    if keys:
      more = f' (+{len(keys) - 3} more)' if len(keys) > 3 else ''
      parts.append(f'{label}: {", ".join(keys[:3])}{more}')
  raise errors.WorkdirError(
    f'The checkpoint of step {step} in {directory} holds another network '
    f'than this config builds; ' + '; '.join(parts) + '. It was written by '
    'a run of another model, method or heads: use a fresh --workdir, or '
    'the config of that run to resume it.'
  )


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
  directory = paths.absolute(directory)
  tree = {'model': to_pure(nnx.state(model, _SAVED))}
  if heads is not None:
    tree['heads'] = to_pure(nnx.state(heads, _SAVED))
  # Host copies: a teacher is read back on any device layout.
  tree = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)
  meta = {
    'model': model_name,
    'num_classes': num_classes,
    'heads': heads.spec.to_json() if heads is not None else None,
    'input_shape': list(input_shape),
  }
  # Written whole beside the destination, then moved in (_install_teacher).
  partial = directory + '.partial'
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(paths.join(partial, 'state'), tree, force=True)
  checkpointer.wait_until_finished()
  if jax.process_index() == 0:
    epath.Path(partial, TEACHER_META).write_text(json.dumps(meta, indent=2))
    _install_teacher(partial, directory)
  logging.info('Wrote teacher checkpoint %s (%s)', directory, meta)


def _install_teacher(partial: str, directory: str) -> None:
  """Moves the teacher written in ``partial`` into ``directory``.

  ``teacher.json`` marks a teacher complete: it leaves first and arrives
  last, so a crash in between leaves no teacher (a clear error) rather
  than new weights under an old description. Nothing else in
  ``directory`` is touched.
  """
  directory, partial = epath.Path(directory), epath.Path(partial)
  directory.mkdir(parents=True, exist_ok=True)
  meta = directory / TEACHER_META
  if meta.exists():
    meta.unlink()
  state = directory / 'state'
  replaced = directory / 'state.replaced'
  if state.exists():
    state.rename(replaced)
  (partial / 'state').rename(state)
  (partial / TEACHER_META).rename(meta)
  if replaced.exists():
    replaced.rmtree()
  partial.rmtree()


def _read_teacher_meta(directory: str) -> dict:
  """``teacher.json``, checked field by field before anything is built."""
  path = paths.join(directory, TEACHER_META)
  try:
    meta = json.loads(paths.read_text(path))
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise TeacherCheckpointError(f'{path} is not valid JSON ({e}).') from None
  if not isinstance(meta, dict):
    raise TeacherCheckpointError(f'{path} holds no JSON object.')
  problems = []
  if meta.get('model') not in MODEL_NAMES:
    problems.append(f'model {meta.get("model")!r} is not a known model')
  classes = meta.get('num_classes')
  if not isinstance(classes, int) or isinstance(classes, bool) or classes < 1:
    problems.append(f'num_classes {classes!r} is not a positive integer')
  shape = meta.get('input_shape', list(DEFAULT_INPUT_SHAPE))
  if not (isinstance(shape, list) and len(shape) == 4
          and all(isinstance(d, int) and d > 0 for d in shape)):
    problems.append(f'input_shape {shape!r} is not [1, H, W, C]')
  spec = meta.get('heads')
  if spec is not None and not (
    isinstance(spec, dict) and spec.get('kind') in heads_lib.HEAD_KINDS
    and isinstance(spec.get('stages'), list) and spec['stages']
    and all(isinstance(st, str) for st in spec['stages'])
    and isinstance(spec.get('width'), int) and spec['width'] >= 0
  ):
    problems.append(f'heads {spec!r} is not a heads spec (kind in '
                    f'{heads_lib.HEAD_KINDS}, stages, width)')
  if problems:
    raise TeacherCheckpointError(
      f'{path} does not describe a teacher: ' + '; '.join(problems) + '.'
    )
  return meta


def resolve_teacher_dir(path: str) -> str:
  """A teacher directory itself, or a run workdir holding ``export/``."""
  path = paths.absolute(path)
  for candidate in (path, paths.join(path, EXPORT_DIR)):
    if paths.exists(paths.join(candidate, TEACHER_META)):
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
  meta = _read_teacher_meta(directory)
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
  # was measured cheaper than tracing the build under nnx.eval_shape.
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
  try:
    loaded = ocp.StandardCheckpointer().restore(
      paths.join(directory, 'state')
    )
  except Exception as e:  # pylint: disable=broad-except
    # Missing, truncated or damaged array files fail in orbax's own ways.
    raise TeacherCheckpointError(
      f'The teacher weights in {directory}/state cannot be read '
      f'({_first_line(e)}). Re-export or re-import the teacher.'
    ) from None
  what = f'a {meta["model"]}' + (' with heads' if heads is not None else '')
  _check_fits(abstract, loaded, what, directory)
  nnx.update(model, from_pure(nnx.state(model, _SAVED), loaded['model']))
  if heads is not None:
    nnx.update(heads, from_pure(nnx.state(heads, _SAVED), loaded['heads']))
  logging.info('Loaded teacher %s from %s', meta['model'], directory)
  return Teacher(model, heads, name=meta['model'])
