"""flatness.core.locking: one holder at a time; the grace period runs on a test clock (``LockClock``), so
that no test races the machine's speed."""

import contextlib

import pytest

from flatness.core.errors import FlatnessError


class LockClock:
    """``flatness.core.locking``'s clock in these tests: time passes only when the lock waits (each
    retry's sleep adds its seconds), so the grace period is a number of retries, not a race with the
    machine's speed. ``on_retry(n)`` runs at the n-th retry, before the next attempt."""

    def __init__(self, on_retry=None):
        self.now = 0.0
        self.retries = 0
        self.on_retry = on_retry

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        self.retries += 1
        if self.on_retry is not None:
            self.on_retry(self.retries)
        self.now += seconds


# Holds the lock until the test kills it (reading stdin, which the test never writes or closes).
LOCK_HOLDER = (
    "import sys; from flatness.core.locking import exclusive\n"
    "with exclusive(sys.argv[1]):\n    print('held', flush=True); sys.stdin.read()\n"
)


@contextlib.contextmanager
def lock_holder(target):
    """A process holding the lock on ``target`` from the start of the block until it is killed."""
    import subprocess
    import sys

    with subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, target], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout.readline().strip() == "held"
            yield proc
        finally:
            proc.kill()  # SIGKILL: the kernel drops the lock with the process
            proc.wait()


def test_exclusive_lock_refuses_a_second_holder_and_is_released(tmp_path, monkeypatch):
    import os

    from flatness.core import locking
    from flatness.core.locking import BUSY_GRACE_SECONDS, exclusive, lock_path_for

    target = str(tmp_path / "out.h5")
    # issue 15: the lock lives beside the file (every process sees it, whatever its TMPDIR) and goes with it
    assert os.path.dirname(lock_path_for(target)) == os.path.realpath(str(tmp_path))
    clock = LockClock()
    with lock_holder(target):
        monkeypatch.setattr(locking, "time", clock)
        with pytest.raises(FlatnessError, match="another flatness process"):
            with exclusive(target):
                pass
        assert clock.now >= BUSY_GRACE_SECONDS  # refused only once the whole grace period had passed
    monkeypatch.undo()
    with exclusive(target):
        pass
    assert os.listdir(tmp_path) == []


def test_a_lock_of_a_process_that_dies_within_the_grace_period_is_taken(tmp_path, monkeypatch):
    """A rerun right after a kill: the dying process (or its workers) still holds the lock for a moment."""
    from flatness.core import locking
    from flatness.core.locking import BUSY_GRACE_SECONDS, exclusive

    target = str(tmp_path / "out.h5")
    with lock_holder(target) as proc:

        def kill_holder_at_the_fifth_retry(retry):
            if retry == 5:
                proc.kill()
                proc.wait()  # gone: the kernel has dropped its lock

        clock = LockClock(kill_holder_at_the_fifth_retry)
        monkeypatch.setattr(locking, "time", clock)
        with exclusive(target):  # taken at the attempt after the holder died, inside the grace period
            assert clock.retries == 5
        assert 0 < clock.now < BUSY_GRACE_SECONDS
