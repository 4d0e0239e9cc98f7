import io

import pytest
from tensorboard.summary.writer.record_writer import RecordWriter

from scaleq.sources.tfrecord import TFRecordError, frame_record, masked_crc32c, read_records, write_records

RECORDS = [b"first", b"", bytes(range(256)) * 40]


def test_framing_matches_an_independent_tfrecord_writer():
    # TensorBoard's event files use the same framing; its writer is a separate implementation.
    buf = io.BytesIO()
    writer = RecordWriter(buf)
    for record in RECORDS:
        writer.write(record)
    assert buf.getvalue() == b"".join(frame_record(r) for r in RECORDS)


def test_round_trip_streams_every_record(tmp_path):
    path = tmp_path / "a.tfrecord"
    assert write_records(path, RECORDS) == 3
    assert list(read_records(path)) == RECORDS
    write_records(tmp_path / "empty.tfrecord", [])
    assert list(read_records(tmp_path / "empty.tfrecord")) == []


def test_masked_crc_differs_from_plain_crc():
    import google_crc32c

    assert masked_crc32c(b"123456789") != google_crc32c.value(b"123456789")
    assert 0 <= masked_crc32c(b"x" * 1000) < 2**32


@pytest.mark.parametrize(
    ("cut", "message"),
    [(5, "record 2: truncated header"), (20, "record 2: truncated data"), (-2, "record 2: truncated data checksum")],
)
def test_truncation_names_file_and_record(tmp_path, cut, message):
    path = tmp_path / "t.tfrecord"
    write_records(path, RECORDS)
    data = path.read_bytes()
    start = len(frame_record(RECORDS[0]) + frame_record(RECORDS[1]))
    path.write_bytes(data[: start + cut] if cut > 0 else data[:cut])
    with pytest.raises(TFRecordError, match=f"t.tfrecord: {message}"):
        list(read_records(path))


@pytest.mark.parametrize(
    ("record", "offset", "message"),
    [(1, 3, "CRC mismatch in the length header"), (2, 500, "CRC mismatch in the data"), (1, 14, "CRC mismatch in the data")],
)
def test_crc_mismatch_names_file_and_record(tmp_path, record, offset, message):
    path = tmp_path / "c.tfrecord"
    write_records(path, RECORDS)
    data = bytearray(path.read_bytes())
    start = len(b"".join(frame_record(r) for r in RECORDS[:record]))
    data[start + offset] ^= 0x01  # one bit flipped in the length, the payload or the payload's checksum
    path.write_bytes(bytes(data))
    with pytest.raises(TFRecordError, match=f"c.tfrecord: record {record}: {message}"):
        list(read_records(path))
