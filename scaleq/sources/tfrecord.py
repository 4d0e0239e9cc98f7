"""TFRecord files without TensorFlow: record framing, masked CRC32C checks, streaming reads.

A TFRecord file is a sequence of records, each framed as

    uint64 length (little endian) | uint32 masked_crc32c(length bytes) | data[length] | uint32 masked_crc32c(data)

(uncompressed files only; TensorFlow's GZIP/ZLIB options are not used by the datasets we read).
Reading streams one record at a time, so memory stays bounded by the largest record however large
the file is. Every framing problem is a :class:`TFRecordError` naming the file and the record number.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import google_crc32c

_MASK_DELTA = 0xA282EAD8
_HEADER = struct.Struct("<QI")  # length, masked CRC of the length bytes
_FOOTER = struct.Struct("<I")  # masked CRC of the data


class TFRecordError(ValueError):
    """A TFRecord file is truncated, corrupt or holds something other than what was expected."""


def masked_crc32c(data: bytes) -> int:
    """TensorFlow's masked CRC32C: rotate right by 15 bits, then add a constant (mod 2^32)."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def read_records(path: str | os.PathLike[str]) -> Iterator[bytes]:
    """Yield the payload of every record of an uncompressed TFRecord file, checking both CRCs.

    Raises :class:`TFRecordError` naming the file and the (0-based) record number when a record
    is truncated or a checksum does not match.
    """
    path = Path(path)
    with open(path, "rb") as f:
        index = 0
        while True:
            record = _read_record(f, path, index)
            if record is None:
                return
            yield record
            index += 1


def _read_record(f: BinaryIO, path: Path, index: int) -> bytes | None:
    header = f.read(_HEADER.size)
    if not header:
        return None  # a clean end of file
    where = f"{path}: record {index}"
    if len(header) < _HEADER.size:
        raise TFRecordError(f"{where}: truncated header ({len(header)} of {_HEADER.size} bytes)")
    length, length_crc = _HEADER.unpack(header)
    if masked_crc32c(header[:8]) != length_crc:
        raise TFRecordError(f"{where}: CRC mismatch in the length header (corrupt file?)")
    data = f.read(length)
    if len(data) < length:
        raise TFRecordError(f"{where}: truncated data ({len(data)} of {length} bytes)")
    footer = f.read(_FOOTER.size)
    if len(footer) < _FOOTER.size:
        raise TFRecordError(f"{where}: truncated data checksum ({len(footer)} of {_FOOTER.size} bytes)")
    if masked_crc32c(data) != _FOOTER.unpack(footer)[0]:
        raise TFRecordError(f"{where}: CRC mismatch in the data ({length} bytes; corrupt file?)")
    return data


def frame_record(data: bytes) -> bytes:
    """One record framed as TensorFlow writes it."""
    length = struct.pack("<Q", len(data))
    return length + _FOOTER.pack(masked_crc32c(length)) + data + _FOOTER.pack(masked_crc32c(data))


def write_records(path: str | os.PathLike[str], records: Iterable[bytes]) -> int:
    """Write records as an uncompressed TFRecord file (for tests and small exports). Returns the count."""
    count = 0
    with open(path, "wb") as f:
        for data in records:
            f.write(frame_record(data))
            count += 1
    return count
