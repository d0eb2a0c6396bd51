"""TEST-ONLY: holds a child process of the test suite at a chosen point of its work (tests/README.md).

A test that must signal a child process in the middle of its work does not sleep and hope: it starts
the child with this folder first on ``PYTHONPATH`` and a hold described in ``FLATNESS_TEST_HOLD``
(``tests/holds.py`` builds both). Python imports this file at start-up (the ``site`` module imports
``sitecustomize``); it then wraps one library function as its module is imported, and when the
child's work reaches the hold it writes the marker file and waits there (or kills itself), so a
signal always lands with the work unfinished, whatever the machine's speed. The library knows
nothing of this file: without the variable, nothing is wrapped.

``FLATNESS_TEST_HOLD`` is JSON: ``{"at": POINT, "after": N, "marker": PATH, "then": ACTION}``, with
``"release": PATH`` (wait until that file exists instead of for ever) and ``"flush_every_point": true``
(``surface`` writes its file after every point) optional. ``N`` counts in this process:

* ``surface-point``: before the (N+1)-th surface point is evaluated (N finished);
* ``train-step`` / ``train-epoch``: before the (N+1)-th optimizer step / epoch;
* ``study-step``: before the next experiment step once N steps did work here; the figures step of
  ``experiment`` is always held, so a held study never finishes;
* ``worker-start``: before the (N+1)-th call of a local engine worker's initialiser.

ACTION: ``wait`` (until killed, or until ``release`` exists) or ``sigkill`` (this process, at once).
"""

import functools
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import signal
import sys
import time

VARIABLE = "FLATNESS_TEST_HOLD"


def _chain_shadowed_sitecustomize() -> None:
    """Run the ``sitecustomize`` this file shadows (a distribution's), if there is one."""
    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None:
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


class _Hold:
    """The hold of this process: counts the events and, at the chosen one, reports and holds."""

    def __init__(self, spec: dict) -> None:
        self.spec = spec
        self.count = 0

    def reached(self) -> bool:
        """Count one event; True when it is the one to hold before (N events already done)."""
        self.count += 1
        return self.count > int(self.spec.get("after", 0))

    def hold(self) -> None:
        """Report through the marker file (written whole), then wait or die as asked."""
        marker = self.spec["marker"]
        temporary = f"{marker}.{os.getpid()}.tmp"
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump({"pid": os.getpid(), "at": self.spec["at"], "done": self.count - 1}, handle)
        os.replace(temporary, marker)
        if self.spec.get("then", "wait") == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        release = self.spec.get("release")
        while release is None or not os.path.exists(release):
            time.sleep(0.05 if release else 3600)  # a signal's handler interrupts the sleep


def _before(hold: _Hold, function):
    """``function`` that first counts one event and holds at the chosen one."""

    @functools.wraps(function)  # same name and module: pickled by reference as before
    def wrapper(*args, **kwargs):
        if hold.reached():
            hold.hold()
        return function(*args, **kwargs)

    return wrapper


def _patch_surface(hold: _Hold, spec: dict):
    def patch_surface(module) -> None:
        module.PointEvaluator.__call__ = _before(hold, module.PointEvaluator.__call__)

    def patch_compute(module) -> None:
        if spec.get("flush_every_point"):
            module.FLUSH_SECONDS = 0.0

    return {"flatness.landscape.surface": patch_surface, "flatness.landscape.compute": patch_compute}


def _patch_training(hold: _Hold, name: str):
    def patch(module) -> None:
        setattr(module, name, _before(hold, getattr(module, name)))

    return {"flatness.training.loop": patch}


def _patch_study(hold: _Hold):
    """Steps that did work (``skipped`` false) count; the next step after N of them holds."""

    def counting(function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            if hold.count >= int(hold.spec.get("after", 0)):
                hold.count += 1
                hold.hold()
            record = function(*args, **kwargs)
            if not record.get("skipped"):
                hold.count += 1
            return record

        return wrapper

    def held(function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            hold.count += 1
            hold.hold()
            return function(*args, **kwargs)

        return wrapper

    def patch(module) -> None:
        for name in ("step_train", "step_probe", "step_surface"):
            setattr(module, name, counting(getattr(module, name)))
        module.step_figures = held(module.step_figures)

    return {"flatness.study.experiment_steps": patch}


def _patches(spec: dict) -> dict:
    """``{module name: function(module)}`` that install the hold ``spec`` asks for."""
    hold = _Hold(spec)
    at = spec["at"]
    if at == "surface-point":
        return _patch_surface(hold, spec)
    if at in ("train-step", "train-epoch"):
        return _patch_training(hold, "_train_step" if at == "train-step" else "_train_epoch")
    if at == "study-step":
        return _patch_study(hold)
    if at == "worker-start":
        return {"flatness.core.engines": lambda m: setattr(m, "die_with_parent", _before(hold, m.die_with_parent))}
    raise ValueError(f"{VARIABLE}: unknown hold point {at!r}")


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Finds the named modules through the other finders and patches each right after it runs."""

    def __init__(self, patches: dict) -> None:
        self.patches = patches

    def find_spec(self, name, path=None, target=None):
        if name not in self.patches:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        run, patch = spec.loader.exec_module, self.patches[name]

        def exec_module(module):
            run(module)
            patch(module)

        spec.loader.exec_module = exec_module
        return spec


_chain_shadowed_sitecustomize()
if os.environ.get(VARIABLE):
    sys.meta_path.insert(0, _PatchOnImport(_patches(json.loads(os.environ[VARIABLE]))))
