"""User model references: ``package.module:callable``, ``path/to/file.py:callable``, ``torchvision:NAME``.

A reference names code that the user chose to run (on the command line or in a notebook); nothing
here ever imports code named by a file. ``resolve_callable`` is shared with user datasets
(``flatness.data.user_data``), which name their factories the same way.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import json
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

import torch.nn as nn

from flatness.core.errors import FlatnessError, Signalled
from flatness.core.fileio import sha256_file
from flatness.models.registry import build_model

TORCHVISION_PREFIX = "torchvision:"


def is_reference(ref: str) -> bool:
    """True for a ``module:callable``, ``file.py:callable`` or ``torchvision:NAME`` reference."""
    return ":" in ref


def one_line(err: BaseException) -> str:
    """``Type: first line of the message``, for reporting what user code raised."""
    text = str(err).strip()
    first = text.splitlines()[0][:200] if text else ""
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def call_user(fn: Callable, ref: str, *args: Any, **kwargs: Any) -> Any:
    """Call user code (a model, data or loss factory); whatever it raises becomes one ``FlatnessError``.

    User code never decides how a command ends: ``sys.exit(0)`` must not pass for success, nor
    ``sys.exit(3)`` for a diverged run, nor a ``KeyboardInterrupt`` it raises for Ctrl-C. So every
    ``BaseException`` is caught and named with the callable (exit 2); only a real signal
    (:class:`Signalled`) goes through.

    Args:
        fn: the callable.
        ref: how the user named it (for the message).
        *args: positional arguments for ``fn``.
        **kwargs: keyword arguments for ``fn``.

    Returns:
        What ``fn`` returned.
    """
    try:
        return fn(*args, **kwargs)
    except Signalled:
        raise
    except BaseException as err:  # noqa: BLE001 - user code: SystemExit, GeneratorExit... included
        raise FlatnessError(f"{ref} raised {one_line(err)}") from None


def parse_model_args(model_args: None | str | Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments for a factory, from a JSON object string or a dict.

    Args:
        model_args: None, a dict, or a JSON object string such as ``'{"width": 64}'``.

    Returns:
        A plain dict (empty for None).
    """
    if model_args is None or model_args == "":
        return {}
    if isinstance(model_args, Mapping):
        return dict(model_args)
    try:
        value = json.loads(model_args)
    except (TypeError, ValueError) as err:
        raise FlatnessError(f"model args must be a JSON object such as '{{\"width\": 64}}': {one_line(err)}") from None
    if not isinstance(value, dict):
        raise FlatnessError(f"model args must be a JSON object such as '{{\"width\": 64}}', got {type(value).__name__}")
    return value


def _import_file(path: str, what: str):
    if not os.path.isfile(path):
        raise FlatnessError(f"{what} file not found: {path}")
    # A module name per file location, so two files with the same basename do not collide.
    digest = hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:12]
    name = f"flatness_user_{os.path.splitext(os.path.basename(path))[0]}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise FlatnessError(f"cannot import {path} as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling of the user's classes look modules up here
    # As when the file runs as a script: it may import modules that sit beside it.
    folder = os.path.dirname(os.path.abspath(path))
    sys.path.insert(0, folder)
    try:
        call_user(spec.loader.exec_module, f"importing {path}", module)
    except FlatnessError:
        sys.modules.pop(name, None)
        raise
    finally:
        sys.path.remove(folder)
    return module


def _import_module(name: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name and (name == err.name or name.startswith(err.name + ".")):
            raise FlatnessError(f"module {name!r} not found (is it installed, or on PYTHONPATH?)") from None
        raise FlatnessError(f"importing {name} raised {one_line(err)}") from None
    except Signalled:
        raise
    except BaseException as err:  # noqa: BLE001 - the module's own import-time code failed, or exited
        raise FlatnessError(f"importing {name} raised {one_line(err)}") from None


def resolve_callable(ref: str, what: str = "model") -> tuple[Callable, str | None]:
    """The callable a ``module:callable`` or ``file.py:callable`` reference names.

    Args:
        ref: the reference.
        what: the word used in error messages ("model", "dataset").

    Returns:
        ``(callable, sha256 of the file or None for a module)``.
    """
    source, sep, attr = ref.rpartition(":")
    if not sep or not source or not attr:
        raise FlatnessError(f"bad {what} reference {ref!r}: use package.module:callable or path/to/file.py:callable")
    sha256 = None
    if source.endswith(".py") or os.sep in source or "/" in source:
        module = _import_file(source, what)
        sha256 = sha256_file(source)
    else:
        module = _import_module(source)
    target = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise FlatnessError(f"{source} has no attribute {attr!r} (the {what} reference {ref!r})")
        target = getattr(target, part)
    if not callable(target):
        raise FlatnessError(f"{source}:{attr} is a {type(target).__name__}, not callable")
    return target, sha256


def _check_arguments(factory: Callable, args: dict[str, Any], ref: str) -> None:
    try:
        inspect.signature(factory).bind(**args)
    except TypeError as err:
        raise FlatnessError(f"model args {json.dumps(args)} do not fit {ref}: {err}") from None
    except ValueError:
        pass  # no signature to inspect (a builtin): the call itself will tell


def _torchvision_model(name: str, args: dict[str, Any], download: bool) -> nn.Module:
    from torchvision import models  # noqa: PLC0415 - torchvision is heavy; only torchvision: models need it

    if name not in models.list_models():
        raise FlatnessError(f"unknown torchvision model {name!r}; see torchvision.models.list_models()")
    # Pretrained weights only when named in the args ({"weights": "DEFAULT"}) and downloading is allowed:
    # a download flag given for the data must not silently swap a random model for a pretrained one.
    if not download and args.get("weights") not in (None, "None"):
        raise FlatnessError(f"torchvision:{name} with weights downloads them: pass download=True (--download)")
    args = dict(args)
    weights = args.pop("weights", None)
    try:
        return models.get_model(name, weights=weights, **args)
    except TypeError as err:
        raise FlatnessError(f"model args {json.dumps(args)} do not fit torchvision:{name}: {one_line(err)}") from None
    except Exception as err:  # a failed download or bad weights name
        raise FlatnessError(f"building torchvision:{name} raised {one_line(err)}") from None


def resolve_model_reference(
    ref: str, model_args: None | str | Mapping[str, Any] = None, download: bool = False
) -> tuple[nn.Module, dict[str, Any]]:
    """Build the model a reference names.

    Args:
        ref: ``package.module:callable``, ``path/to/file.py:callable`` (the file is run as Python),
            ``torchvision:NAME`` (random weights; pretrained ones with ``{"weights": "DEFAULT"}``
            in the args and ``download``), or a built-in model name
            (then ``model_args`` must give ``in_channels``, ``image_size`` and ``num_classes``).
        model_args: keyword arguments for the callable, as a dict or a JSON object string.
        download: allow torchvision to download the pretrained weights that the args name.

    Returns:
        ``(model, record)``: the ``nn.Module`` and a JSON-safe record ``{"reference", "args",
        "sha256"}`` (sha256 of the factory file; None for modules and built-ins) for a run folder.

    Raises:
        FlatnessError: one line for a module or file not found, an attribute missing or not callable,
            model args that are not a JSON object or do not fit, a callable that raises or returns
            something other than an ``nn.Module``.
    """
    args = parse_model_args(model_args)
    try:
        json.dumps(args)
    except (TypeError, ValueError):
        raise FlatnessError("model args must be plain JSON data (numbers, strings, lists, objects)") from None
    record: dict[str, Any] = {"reference": ref, "args": args, "sha256": None}
    if ref.startswith(TORCHVISION_PREFIX):
        model = _torchvision_model(ref[len(TORCHVISION_PREFIX) :], args, download)
        record["download"] = bool(download)
        return model, record
    if not is_reference(ref):
        args = dict(args)
        shape = {key: args.pop(key, None) for key in ("in_channels", "image_size", "num_classes")}
        if None in shape.values():
            raise FlatnessError(
                f"built-in model {ref!r} needs in_channels, image_size and num_classes in the model args"
            )
        return build_model(ref, shape["in_channels"], shape["image_size"], shape["num_classes"], **args), record
    factory, sha256 = resolve_callable(ref, "model")
    record["sha256"] = sha256
    _check_arguments(factory, args, ref)
    model = call_user(factory, ref, **args)
    if not isinstance(model, nn.Module):
        raise FlatnessError(f"{ref} returned a {type(model).__name__}, not a torch.nn.Module")
    return model, record
