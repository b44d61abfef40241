"""Paths that may name a bucket: a workdir, a teacher, a data directory.

On a pod slice the workdir is ``gs://bucket/run``: orbax, TensorBoard and
TFDS read and write there themselves, and everything this package writes
beside them goes through ``etils.epath`` (which speaks ``gs://`` through
TensorFlow's file system), never through ``os``/``open``: ``os.path`` on
``gs://b/run`` makes a local directory ``gs:/b/run``, and
``os.path.abspath`` prefixes it with the current directory.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import IO

from etils import epath


def is_remote(path: str) -> bool:
  """Whether ``path`` is a URI (``gs://``, ``s3://``...), not a local path."""
  return '://' in str(path)


def absolute(path: str) -> str:
  """A local path made absolute (``~`` expanded); a URI as it is."""
  path = str(path)
  if is_remote(path):
    return path.rstrip('/')
  return os.path.abspath(os.path.expanduser(path))


def join(path: str, *parts: str) -> str:
  return str(epath.Path(path).joinpath(*parts))


def exists(path: str) -> bool:
  return epath.Path(path).exists()


def makedirs(path: str) -> None:
  epath.Path(path).mkdir(parents=True, exist_ok=True)


def walk(root: str) -> list[tuple[str, set[str]]]:
  """``(directory relative to root, its file names)`` for ``root`` ('.')
  and every directory under it, sorted by the relative path. Built from
  listings, so the paths stay URIs on a bucket."""
  found, pending = [], [('.', epath.Path(root))]
  while pending:
    rel, directory = pending.pop()
    files = set()
    for child in directory.iterdir():
      if child.is_dir():
        child_rel = os.path.normpath(os.path.join(rel, child.name))
        pending.append((child_rel, child))
      else:
        files.add(child.name)
    found.append((rel, files))
  return sorted(found, key=lambda entry: entry[0])


def write_bytes(path: str, data: bytes) -> None:
  epath.Path(path).write_bytes(data)


def open_binary(path: str) -> IO[bytes]:
  """A new file open for writing bytes; on a bucket the object appears
  when the file is closed."""
  if not is_remote(path):
    return open(path, 'wb')
  return epath.Path(path).open('wb')


def read_text(path: str) -> str:
  return epath.Path(path).read_text()


def write_atomic(path: str, write: Callable[[IO[str]], None]) -> None:
  """Calls ``write(f)`` on a new file that becomes ``path`` only whole.

  A temporary file beside it is renamed over it: atomic on POSIX file
  systems; on a bucket a rename is a copy, and an object is only ever
  visible complete, so a reader never sees half a file either way.
  """
  target = epath.Path(path)
  tmp = target.parent / f'{target.name}.tmp-{os.getpid()}'
  try:
    with tmp.open('w') as f:
      write(f)
      if not is_remote(path):
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(target)
  finally:
    if tmp.exists():
      tmp.unlink()


def append_line(path: str, line: str) -> None:
  """Appends a line; a bucket object cannot be appended to, so it is
  rewritten whole there (these files hold a line per resumed run)."""
  if not is_remote(path):
    with open(path, 'a') as f:
      f.write(line + '\n')
    return
  before = read_text(path) if exists(path) else ''
  write_atomic(path, lambda f: f.write(before + line + '\n'))
