"""Output paths checked before any work: a command that would compute for an
hour and then fail to write its result says so first, in one paragraph.

Writability is tried (a temporary file is created and removed), not read
from the permission bits: that also catches read-only mounts, and root.
"""

import contextlib
import os
import tempfile

from asl_jax.errors import UserError


@contextlib.contextmanager
def replaced_when_written(path: str, mode: str = "w", suffix: str = ".partial", **kwargs):
  """open(path + suffix, mode) for the block; `path` is replaced by it only once
  the block has ended without an error, so a kill or an error leaves the old
  file (or none) rather than half a new one."""
  with open(path + suffix, mode, **kwargs) as f:
    yield f
  os.replace(path + suffix, path)


def _existing_ancestor(path: str) -> str:
  """The nearest folder above `path` (or path itself) that exists."""
  here = os.path.abspath(path)
  while not os.path.exists(here):
    parent = os.path.dirname(here)
    if parent == here:
      break
    here = parent
  return here


def _writable(folder: str) -> str | None:
  """None when a file can be created in `folder`, else why not."""
  try:
    with tempfile.TemporaryFile(dir=folder, prefix=".asl_jax_write_test"):
      pass
  except OSError as e:
    return e.strerror or str(e)
  return None


def output_dir(path: str, flag: str, what: str = "the outputs") -> None:
  """A folder the command creates (with its parents) or writes into."""
  if not path:
    raise UserError(f"{flag} is empty: give a folder for {what}.")
  if os.path.exists(path) and not os.path.isdir(path):
    raise UserError(f"{flag}={path!r} is an existing file, not a folder. Give a new or "
                    f"existing folder for {what}; the file was left as it is.")
  base = _existing_ancestor(path)
  if not os.path.isdir(base):
    raise UserError(f"{flag}={path!r} cannot be created: {base} is a file, not a folder. "
                    f"Give another path for {what}.")
  why = _writable(base)
  if why:
    where = "it" if base == os.path.abspath(path) else f"the folder above it, {base},"
    raise UserError(f"{flag}={path!r} is not writable: {where} refuses new files ({why}). "
                    f"Give a folder you can write for {what}, or change its permissions; "
                    "nothing was written.")


def output_file(path: str, flag: str, what: str = "the results") -> None:
  """A file the command writes (its folder must exist: a typo in it is more
  likely than a wish to create it)."""
  if not path:
    raise UserError(f"{flag} is empty: give a file path for {what}.")
  if os.path.isdir(path):
    raise UserError(f"{flag}={path!r} is a folder; give a file path for {what}.")
  folder = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(folder):
    kind = "is a file, not a folder" if os.path.exists(folder) else "does not exist"
    raise UserError(f"{flag}={path!r}: its folder {folder} {kind}. Create the folder or give "
                    f"another path for {what}; nothing was computed.")
  why = _writable(folder)
  if why is None and os.path.exists(path) and not os.access(path, os.W_OK):
    why = "the file itself is read-only"
  if why:
    raise UserError(f"{flag}={path!r} is not writable ({why}). Give a path you can write "
                    f"for {what}; nothing was computed.")


def new_output_file(path: str, flag: str, overwrite: bool, what: str = "the results") -> None:
  """`output_file`, and an existing file is kept unless `overwrite` (the
  commands replace it only once the new file is complete)."""
  output_file(path, flag, what)
  if os.path.exists(path) and not overwrite:
    raise UserError(f"{flag} {path} exists; give another path, or --overwrite to replace it "
                    "(it is replaced only once the new file is complete).")
