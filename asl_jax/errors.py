"""Errors that reach the user as one clear paragraph instead of a traceback."""

import csv
import os


class UserError(Exception):
  """Bad input or setup: the message says what was expected and what to do.

  Every command prints it as one paragraph, `asl_jax: error: ...`, without a
  traceback and exits with status 2 (asl_jax.cli.status).
  """


class CorruptImageError(UserError):
  """An image in the source data could not be decoded."""


# The first bytes of files given where a CSV was meant.
_SIGNATURES = {b"\x89HDF": "an HDF5 file (descriptors?)", b"\x89PNG": "a PNG image",
               b"\xff\xd8\xff": "a JPEG image", b"PK\x03\x04": "a zip archive",
               b"\x08": "an ONNX or other protobuf file"}


def csv_rows(path: str, expected: str, error: type[UserError] = UserError) -> list[list[str]]:
  """The rows of a CSV file read as UTF-8 (a BOM allowed, any line ends).

  A file that is not UTF-8 text is an `error` naming it, the byte where
  decoding failed, what it looks like (an HDF5 file, an image, ...) and what
  was `expected` there, instead of a UnicodeDecodeError's traceback."""
  if os.path.isdir(path):
    raise error(f"{path} is a folder; {expected} was expected there (a file).")
  try:
    with open(path, encoding="utf-8-sig", newline="") as f:
      return list(csv.reader(f))
  except UnicodeDecodeError as e:
    with open(path, "rb") as f:
      head = f.read(8)
    looks = next((f", {what}," for sig, what in _SIGNATURES.items() if head.startswith(sig)),
                 "")
    raise error(
        f"{path}{looks} is not UTF-8 text (byte {e.start}: {e.reason}); {expected} was "
        "expected there. Check that the path names the file meant, and save a CSV "
        "written in another encoding (Latin-1, UTF-16, Excel's) as UTF-8.") from None
