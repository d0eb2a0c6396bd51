"""Hold a child process at a chosen point of its work, so that a test's signal never races the clock.

``hold_env`` gives a child's environment: ``tests/holds_site`` first on ``PYTHONPATH`` (its
``sitecustomize.py`` installs the hold in the child; test-only, the library knows nothing of it) and
the hold in ``FLATNESS_TEST_HOLD``. ``wait_for_hold`` returns once the child reports, through the
marker file, that it is held there: the test then signals a process whose work is certainly
unfinished, and asserts on the state the hold fixes (how many points or epochs are done), not on
how long anything took. The hold points are listed in ``holds_site/sitecustomize.py``.
"""

import json
import os
import time

HOLDS_SITE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "holds_site")
VARIABLE = "FLATNESS_TEST_HOLD"
# Only a guard against a child that hangs before its hold: reaching it takes seconds.
REACH_TIMEOUT = 600.0


def hold_env(env, at, after, marker, then="wait", release=None, flush_every_point=False):
    """``env`` plus the hold: before the ``after``+1-th event ``at`` in the child, report and ``then``.

    Args:
        env: the child's environment (a mapping; not changed).
        at: the hold point (``surface-point``, ``train-step``, ``train-epoch``, ``study-step``,
            ``worker-start``).
        after: how many such events the child finishes before it holds.
        marker: the file the child writes when it is held (JSON: ``pid``, ``at``, ``done``).
        then: ``wait`` (until killed, or until ``release`` exists) or ``sigkill``.
        release: a file whose creation lets a waiting child go on (None: it waits until killed).
        flush_every_point: ``surface`` writes its file after every point.

    Returns:
        A new environment dict.
    """
    out = dict(env)
    out["PYTHONPATH"] = os.pathsep.join(p for p in (HOLDS_SITE, out.get("PYTHONPATH")) if p)
    spec = {"at": at, "after": int(after), "marker": str(marker), "then": then}
    if release is not None:
        spec["release"] = str(release)
    if flush_every_point:
        spec["flush_every_point"] = True
    out[VARIABLE] = json.dumps(spec)
    return out


def wait_for_hold(proc, marker, log=None):
    """Wait until the child ``proc`` is held (its marker exists); returns the marker's content.

    Fails, with the child's output when ``log`` (a path) is given, if the child ended first.
    """
    deadline = time.monotonic() + REACH_TIMEOUT
    while not os.path.exists(marker):
        if proc.poll() is not None:
            output = open(log, encoding="utf-8", errors="replace").read() if log else ""
            raise AssertionError(f"the child ended (exit {proc.returncode}) before its hold:\n{output}")
        if time.monotonic() > deadline:
            raise AssertionError(f"the child did not reach its hold in {REACH_TIMEOUT:.0f} s")
        time.sleep(0.02)
    with open(marker, encoding="utf-8") as handle:
        return json.load(handle)
