"""Scalar summaries for TensorBoard, written by tensorboardX (no TensorFlow).

`tensorboard --logdir <workdir>` shows the curves; `read_scalars` reads an
event file back (tests, quick looks without TensorBoard), checking each
record's CRCs.
"""

import struct

from tensorboardX import SummaryWriter
from tensorboardX.crc32c import crc32c
from tensorboardX.proto import event_pb2


class EventWriter:
  """One event file in `logdir`; `scalars(step, {tag: value})`."""

  def __init__(self, logdir: str):
    self._writer = SummaryWriter(logdir, flush_secs=30)

  def scalars(self, step: int, values: dict):
    for tag, value in sorted(values.items()):
      self._writer.add_scalar(tag, float(value), int(step))

  def close(self):
    self._writer.close()


def _masked(data: bytes) -> int:
  c = crc32c(data)
  return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_scalars(path: str) -> list[tuple[int, str, float]]:
  """(step, tag, value) of every scalar of an event file (TFRecord framing:
  length, masked CRC-32C of it, the Event proto, masked CRC-32C of it)."""
  out = []
  with open(path, "rb") as f:
    data = f.read()
  pos = 0
  while pos < len(data):
    header = data[pos:pos + 8]
    (length,) = struct.unpack("<Q", header)
    (crc,) = struct.unpack("<I", data[pos + 8:pos + 12])
    payload = data[pos + 12:pos + 12 + length]
    (crc2,) = struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])
    if crc != _masked(header) or crc2 != _masked(payload):
      raise ValueError(f"{path}: bad CRC at byte {pos}")
    pos += 16 + length
    event = event_pb2.Event.FromString(payload)
    out += [(event.step, v.tag, v.simple_value) for v in event.summary.value]
  return out
