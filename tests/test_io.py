import os
import subprocess
import sys
import textwrap

import pytest

from scaleq.io import atomic_write, atomic_write_text, remove_stale_temporaries, temporary_path


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "table.csv"
    atomic_write_text(target, "old\n")
    with pytest.raises(RuntimeError, match="writer failed"), atomic_write(target, "w") as f:
        f.write("half of the new")
        raise RuntimeError("writer failed")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]


@pytest.mark.slow
def test_file_size_limit_during_torch_save_is_an_os_error_naming_the_file(tmp_path):
    # torch.save reports EFBIG as RuntimeError("unexpected pos"); the helper gives the OSError back.
    script = textwrap.dedent(f"""
        import resource, torch
        from pathlib import Path
        from scaleq.io import atomic_torch_save
        target = Path({str(tmp_path / "ckpt.pt")!r})
        target.write_bytes(b"previous checkpoint")
        resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
        try:
            atomic_torch_save({{"w": torch.zeros(100000)}}, target)
        except OSError as err:
            print(err.errno, err.filename, err.strerror)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert out.stdout.split(maxsplit=2) == ["27", str(tmp_path / "ckpt.pt"), "File too large\n"]
    assert (tmp_path / "ckpt.pt").read_bytes() == b"previous checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_stale_temporaries_of_dead_writers_go_live_ones_stay(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".last.pt.tmp-{dead.pid}"
    stale.write_bytes(b"")
    live = temporary_path(tmp_path / "best.pt")  # this process's own
    live.write_bytes(b"")
    assert remove_stale_temporaries(tmp_path) == [stale]
    assert live.exists() and not stale.exists()
