"""One workdir, one writer: a second process is refused with the holder named, and the lock is free again after the
holder ends normally, by an exception, or by kill -9."""
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from date_jax import workdir_lock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Holds the lock until its stdin closes (or it is killed); prints 'held' once it has it.
HOLDER = textwrap.dedent("""
    import sys
    from date_jax.workdir_lock import WorkdirLock
    with WorkdirLock(sys.argv[1]):
        print("held", flush=True)
        sys.stdin.read()
""")

# Tries to take the lock once; exit 0 and 'acquired', or exit 2 and the one-line error.
CONTENDER = textwrap.dedent("""
    import sys
    from date_jax.workdir_lock import WorkdirLock, WorkdirBusyError
    try:
        with WorkdirLock(sys.argv[1]):
            print("acquired")
    except WorkdirBusyError as e:
        print(f"error: {e}")
        sys.exit(2)
""")


def _holder(workdir: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, workdir], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _contend(workdir: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CONTENDER, workdir], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def test_second_process_is_refused_naming_the_holder_until_it_exits(tmp_path):
    workdir = str(tmp_path / "run")
    holder = _holder(workdir)
    try:
        refused = _contend(workdir)
        assert refused.returncode == 2
        lines = refused.stdout.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ")
        assert f"pid {holder.pid} on " in lines[0] and workdir in lines[0] and "--workdir" in lines[0]
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert holder.returncode == 0
    assert _contend(workdir).stdout.strip() == "acquired"


def test_lock_of_a_killed_holder_is_not_stale(tmp_path):
    workdir = str(tmp_path / "run")
    holder = _holder(workdir)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=60)
    assert _contend(workdir).stdout.strip() == "acquired"


def test_released_when_the_run_raises_and_disabled_off_process_0(tmp_path):
    workdir = str(tmp_path / "run")
    with pytest.raises(RuntimeError, match="the run failed"):
        with workdir_lock.WorkdirLock(workdir):
            assert _contend(workdir).returncode == 2     # held while the body runs (same process, other file handle)
            raise RuntimeError("the run failed")
    assert _contend(workdir).stdout.strip() == "acquired"
    with workdir_lock.WorkdirLock(workdir, enabled=False):
        assert _contend(workdir).stdout.strip() == "acquired"
