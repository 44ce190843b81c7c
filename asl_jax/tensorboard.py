"""Scalar summaries in TensorBoard's event-file format, without TensorFlow.

An event file is a TFRecord stream (length, masked CRC-32C of the length,
payload, masked CRC-32C of the payload) of `tensorflow.Event` protocol
buffers. The few fields needed here are encoded by hand:

  Event   { double wall_time = 1; int64 step = 2; string file_version = 3;
            Summary summary = 5; }
  Summary { repeated Value value = 1; }
  Value   { string tag = 1; float simple_value = 2; }

`tensorboard --logdir <workdir>` shows the curves.
"""

import os
import socket
import struct
import time


def _crc32c_table():
  table = []
  for n in range(256):
    c = n
    for _ in range(8):
      c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    table.append(c)
  return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  c = 0xFFFFFFFF
  for b in data:
    c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
  return c ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
  c = crc32c(data)
  return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
  n &= (1 << 64) - 1  # Negative int64 as two's complement, as protobuf does.
  out = bytearray()
  while True:
    byte, n = n & 0x7F, n >> 7
    out.append(byte | (0x80 if n else 0))
    if not n:
      return bytes(out)


def _field(number: int, wire: int, payload: bytes) -> bytes:
  return _varint(number << 3 | wire) + payload


def _bytes_field(number: int, data: bytes) -> bytes:
  return _field(number, 2, _varint(len(data)) + data)


def encode_event(wall_time: float, step: int, *, file_version: str | None = None,
                 scalars: dict | None = None) -> bytes:
  event = _field(1, 1, struct.pack("<d", wall_time)) + _field(2, 0, _varint(step))
  if file_version is not None:
    event += _bytes_field(3, file_version.encode())
  if scalars:
    values = b"".join(
        _bytes_field(1, _bytes_field(1, tag.encode()) + _field(2, 5, struct.pack("<f", v)))
        for tag, v in scalars.items())
    event += _bytes_field(5, values)
  return event


def record(payload: bytes) -> bytes:
  length = struct.pack("<Q", len(payload))
  return (length + struct.pack("<I", masked_crc(length)) + payload
          + struct.pack("<I", masked_crc(payload)))


class EventWriter:
  """Appends scalar summaries to a new event file in `logdir`."""

  def __init__(self, logdir: str):
    os.makedirs(logdir, exist_ok=True)
    name = (f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}."
            f"{os.getpid()}.asl_jax")
    self.path = os.path.join(logdir, name)
    self._file = open(self.path, "ab")
    self._file.write(record(encode_event(time.time(), 0, file_version="brain.Event:2")))
    self._file.flush()

  def scalars(self, step: int, values: dict):
    self._file.write(record(encode_event(time.time(), step,
                                         scalars={k: float(v) for k, v in values.items()})))
    self._file.flush()

  def close(self):
    self._file.close()


def read_scalars(path: str) -> list[tuple[int, str, float]]:
  """(step, tag, value) of every scalar in an event file written here; checks
  both CRCs (for tests and quick looks without TensorBoard)."""
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
    if crc != masked_crc(header) or crc2 != masked_crc(payload):
      raise ValueError(f"{path}: bad CRC at byte {pos}")
    pos += 16 + length
    out += _scalars_of(payload)
  return out


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
  shift = n = 0
  while True:
    b = buf[i]
    n |= (b & 0x7F) << shift
    i += 1
    if not b & 0x80:
      return n, i
    shift += 7


def _fields(buf: bytes):
  i = 0
  while i < len(buf):
    key, i = _read_varint(buf, i)
    number, wire = key >> 3, key & 7
    if wire == 0:
      value, i = _read_varint(buf, i)
    elif wire == 1:
      value, i = buf[i:i + 8], i + 8
    elif wire == 5:
      value, i = buf[i:i + 4], i + 4
    else:
      length, i = _read_varint(buf, i)
      value, i = buf[i:i + length], i + length
    yield number, value


def _scalars_of(event: bytes):
  fields = list(_fields(event))
  step = next((v for n, v in fields if n == 2), 0)
  out = []
  for n, summary in fields:
    if n != 5:
      continue
    for _, value in _fields(summary):
      parts = dict(_fields(value))
      out.append((step, parts[1].decode(), struct.unpack("<f", parts[2])[0]))
  return out
