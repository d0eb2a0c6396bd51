"""Foreign weight files: a plain state_dict (``torch.save``), ``.safetensors``, and ``.pt2`` programs.

Nothing here ever unpickles with ``weights_only=False``. ``torch.export.load`` does (its embedded
pickles fall back to the full unpickler, and compiled AOTInductor members load native code), so
``load_exported_program`` first checks the whole archive itself and refuses anything it cannot
prove to be plain tensors and JSON; only then does torch read it.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Iterable

import torch
import torch.nn as nn

from flatness.core.errors import FlatnessError
from flatness.formats.integrity import check_zip_crc

# Keys under which common training scripts nest the state_dict in a saved dict.
STATE_DICT_KEYS = ("state_dict", "model_state", "model_state_dict", "model")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    for line in text.splitlines():
        if "Unsupported global" in line:  # the informative line of a refused weights_only unpickling
            return line.strip()[:200]
    return f"{type(err).__name__}: {text.splitlines()[0][:200]}" if text else type(err).__name__


def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise FlatnessError(f"weights file not found: {path}")
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file  # noqa: PLC0415 - optional; only .safetensors files need it
        except ImportError:
            raise FlatnessError(
                "reading .safetensors needs the safetensors package: "
                "pip install 'flatness[safetensors]' (or pip install safetensors)"
            ) from None
        try:
            return load_file(path, device="cpu")
        except Exception as err:  # the library raises its own error types for damaged files
            raise FlatnessError(f"cannot read {path} as safetensors: {_first_line(err)}") from None
    check_zip_crc(path, "state_dict file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError for pickled code, RuntimeError/EOFError for damage
        raise FlatnessError(
            f"cannot read {path} as a state_dict (torch.load with weights_only): {_first_line(err)}"
        ) from None
    if isinstance(obj, dict):
        for key in STATE_DICT_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise FlatnessError(
            f"{path} holds no state_dict (a dict of name -> tensor, or a dict with a "
            f"{'/'.join(repr(k) for k in STATE_DICT_KEYS)} entry)"
        )
    return obj


def _describe_keys(label: str, keys: list[str]) -> str:
    return f"{len(keys)} {label} (first: {keys[0]!r})"


def load_weights_into(model: nn.Module, path: str) -> nn.Module:
    """Load a plain state_dict or ``.safetensors`` file into ``model`` (strictly, in place).

    Args:
        model: the module the weights belong to (built from the same architecture and arguments).
        path: a ``torch.save(model.state_dict())`` file (optionally nested under a ``state_dict`` /
            ``model_state`` key), read with ``weights_only=True``, or a ``.safetensors`` file.

    Returns:
        ``model``, with its parameters and buffers replaced by the file's tensors.

    Raises:
        FlatnessError: unreadable file, missing or unexpected keys (the first of each and the counts),
            or a tensor whose shape differs from the model's (the key and both shapes).
    """
    return load_state_into(model, _read_state_dict(path), path)


def load_state_into(model: nn.Module, state: dict[str, torch.Tensor], path: str) -> nn.Module:
    """Load ``state`` into ``model`` strictly, with a one-line error naming what does not fit.

    The one check of weights against a model, for every source (a state_dict file, a flatness checkpoint).

    Args:
        model: the module the weights belong to.
        state: name -> tensor.
        path: where the weights came from (for the message).

    Returns:
        ``model``, with its parameters and buffers replaced.

    Raises:
        FlatnessError: missing or unexpected keys (the first of each and the counts), or a tensor whose
            shape differs from the model's (the key and both shapes).
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = ([_describe_keys("missing keys", missing)] if missing else []) + (
            [_describe_keys("unexpected keys", unexpected)] if unexpected else []
        )
        raise FlatnessError(f"the weights in {path} do not fit the model: {'; '.join(parts)}")
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise FlatnessError(
                f"the weights in {path} do not fit the model: {key!r} has shape "
                f"{tuple(state[key].shape)} in the file but {tuple(tensor.shape)} in the model"
            )
    model.load_state_dict(state, strict=True)
    return model


# --------------------------------------------------------------------------- .pt2 (torch.export)

# Archive members that torch reads as plain text or JSON (never unpickled).
_TEXT_NAMES = {"archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id"}
# Folders whose members torch would load as compiled native code or other runtimes' artifacts.
_FOREIGN_DIRS = ("data/aotinductor/", "data/executorch/", "data/mtia", "xl_model_weights/")

DYNAMIC_EXPORT_HINT = (
    "export with a dynamic batch dimension: torch.export.export(model, (x,), "
    "dynamic_shapes=({0: torch.export.Dim('batch')},))"
)


def _member_names(archive: zipfile.ZipFile, path: str) -> tuple[str, list[str]]:
    """The archive's root folder and its member names below it (torch strips that root)."""
    names = archive.namelist()
    if len(set(names)) != len(names):
        raise FlatnessError(f"refusing {path}: the archive lists a member twice")
    roots = {name.split("/", 1)[0] for name in names}
    if len(roots) != 1 or not all("/" in name for name in names):
        raise FlatnessError(f"{path} is not a torch.export .pt2 archive (no single root folder)")
    root = roots.pop()
    return root, [name.split("/", 1)[1] for name in names]


def _payload_members(read, configs: Iterable[str], folder: str, path: str) -> tuple[set[str], set[str]]:
    """Members a weights/constants config marks as raw tensor bytes, and those torch would unpickle."""
    raw, pickled = set(), set()
    for config_name in configs:
        try:
            config = json.loads(read(config_name))["config"]
            entries = list(config.values())
        except (ValueError, KeyError, TypeError, AttributeError):
            raise FlatnessError(f"refusing {path}: {config_name} is not a valid payload config") from None
        for entry in entries:
            name = entry.get("path_name") if isinstance(entry, dict) else None
            # torch writes plain names (weight_0, tensor_0); a path could point torch at another member
            if not isinstance(name, str) or not name or "/" in name or "\\" in name or name.startswith("."):
                raise FlatnessError(f"refusing {path}: {config_name} has an entry without a plain path_name")
            if name.startswith(("custom_obj_", "opaque_obj_")):
                raise FlatnessError(
                    f"refusing {path}: it holds a custom object constant ({name}), which "
                    "torch can only load by running arbitrary pickled code"
                )
            (pickled if entry.get("use_pickle") else raw).add(folder + name)
    return raw - pickled, pickled


def _check_json(data: bytes, name: str, path: str) -> None:
    # torch hands some .json members of older layouts to its pickle loader, so a .json member must
    # really be JSON
    try:
        json.loads(data)
    except ValueError:
        raise FlatnessError(f"refusing {path}: member {name} is not JSON") from None


def _check_pickle(data: bytes, name: str, path: str) -> None:
    try:
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError for globals outside the allow-list, or damage
        raise FlatnessError(f"refusing {path}: member {name} is not plain tensor data ({_first_line(err)})") from None


def check_pt2_archive(path: str) -> None:
    """Refuse a ``.pt2`` that ``torch.export.load`` could not load without running foreign code.

    Every member must be one of: a text/JSON file, a raw tensor payload that a weights/constants config
    marks as such (read as bytes, never unpickled), or a pickle that loads with ``weights_only=True``.
    Custom-object constants and compiled (AOTInductor and similar) members are refused outright.

    Args:
        path: the file to check.

    Raises:
        FlatnessError: one line saying what was refused and why.
    """
    if not os.path.isfile(path):
        raise FlatnessError(f".pt2 file not found: {path}")
    if not zipfile.is_zipfile(path):
        raise FlatnessError(f"{path} is not a torch.export .pt2 archive (not a zip file)")
    check_zip_crc(path, ".pt2 program")
    with zipfile.ZipFile(path) as archive:
        root, names = _member_names(archive, path)

        def read(name: str) -> bytes:
            return archive.read(f"{root}/{name}")

        if "archive_version" not in names or "archive_format" not in names:
            raise FlatnessError(
                f"{path} is not a torch.export .pt2 archive of this torch's format "
                "(no archive_version); save it again with torch.export.save"
            )
        foreign = [n for n in names if n.startswith(_FOREIGN_DIRS)]
        if foreign:
            raise FlatnessError(
                f"refusing {path}: it holds compiled code or a foreign runtime's "
                f"artifact ({foreign[0]}); only plain exported programs are loaded"
            )
        weights_raw, weights_pickled = _payload_members(
            read,
            [n for n in names if n.startswith("data/weights/") and n.endswith("_weights_config.json")],
            "data/weights/",
            path,
        )
        const_raw, const_pickled = _payload_members(
            read,
            [n for n in names if n.startswith("data/constants/") and n.endswith("_constants_config.json")],
            "data/constants/",
            path,
        )
        pickled = weights_pickled | const_pickled
        raw = (weights_raw | const_raw) - pickled
        for name in names:
            if name.endswith("/"):
                continue  # a folder entry holds no bytes
            if name not in pickled:
                if name in raw or name in _TEXT_NAMES or name.startswith("extra/"):
                    continue
                if name.endswith(".json"):
                    _check_json(read(name), name, path)
                    continue
            # Anything else is (or could be read as) a pickle: it must load with the restricted
            # unpickler, so that torch's weights_only=False reading of the same bytes runs nothing.
            _check_pickle(read(name), name, path)


def _first_input(program):
    """The example value (a fake tensor: shape and dtype) of the program's first tensor input, or None."""
    user_inputs = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in user_inputs:
            value = node.meta.get("val")
            if getattr(value, "shape", None) is not None:
                return value
    return None


def _static_batch_size(program) -> int | None:
    """The batch size a program was exported with, or None where dimension 0 is dynamic."""
    value = _first_input(program)
    if value is None or len(value.shape) == 0:
        return None
    return int(value.shape[0]) if isinstance(value.shape[0], int) else None


class ExportedModule(nn.Module):
    """A loaded ``.pt2`` program as an ``nn.Module``; runs a static-batch program in chunks.

    ``static_batch_size`` is the batch size a program was exported with (None when dynamic); a batch
    whose size is a multiple of it runs chunk by chunk and the outputs are concatenated, so any
    loss (and its double backward) sees the whole batch. ``input_dtype`` is the dtype of the
    example input it was exported with: ``.double()`` converts its parameters and buffers, but a
    tensor the graph creates itself keeps that dtype, so such a program fails on float64 inputs
    (a FlatnessError saying so).
    """

    def __init__(self, module: nn.Module, static_batch_size: int | None, input_dtype: torch.dtype | None = None):
        super().__init__()
        self.program = module
        self.static_batch_size = static_batch_size
        self.input_dtype = input_dtype
        # An exported graph is fixed in the mode it was exported in and refuses .train()/.eval();
        # marking its modules as not training lets eval_mode and train() pass over them.
        for sub in module.modules():
            sub.training = False

    def train(self, mode: bool = True) -> ExportedModule:
        """Record the mode only: the exported graph keeps the behaviour it was exported with."""
        self.training = mode
        return self

    def forward(self, x, *rest):
        """The program's outputs for the batch ``x`` (and any further positional inputs)."""
        try:
            return self._run(x, *rest)
        except RuntimeError as err:
            dtype = getattr(x, "dtype", None)
            if self.input_dtype is None or dtype is None or dtype == self.input_dtype:
                raise
            raise FlatnessError(
                f"this .pt2 program was exported for {self.input_dtype} inputs and does not run on {dtype} "
                f"ones ({_first_line(err)}): leave out --dtype float64, or export the model in float64"
            ) from None

    def _run(self, x, *rest):
        size = self.static_batch_size
        if size is None or x.shape[0] == size:
            return self.program(x, *rest)
        if rest or x.shape[0] % size != 0:
            raise FlatnessError(
                f"this .pt2 program was exported for batches of exactly {size}; got a batch "
                f"of {x.shape[0]}: use a batch size that is a multiple of {size}, or "
                f"{DYNAMIC_EXPORT_HINT}"
            )
        return torch.cat([self.program(chunk) for chunk in x.split(size)])


# Ops whose behaviour depends on train vs eval mode, and the position of their "training" argument.
# torch.export freezes the mode the model was in: a program exported in train mode keeps dropping
# units and using batch statistics whatever .eval() says later.
_MODE_OPS = {
    "batch_norm": 5,
    "native_batch_norm": 5,
    "_native_batch_norm_legit": 5,
    "_native_batch_norm_legit_functional": 5,
    "dropout": 2,
    "native_dropout": 2,
    "feature_dropout": 2,
    "alpha_dropout": 2,
    "feature_alpha_dropout": 2,
}


def _train_mode_op(program) -> str | None:
    """The name of the first dropout or batch-statistics op of ``program`` run in train mode (else None)."""
    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        parts = str(node.target).split(".")  # "aten.dropout.default"
        name = parts[1] if len(parts) > 2 and parts[0] == "aten" else ""
        index = _MODE_OPS.get(name)
        if index is None:
            continue
        flag = node.args[index] if len(node.args) > index else node.kwargs.get("train", node.kwargs.get("training"))
        if flag is None or flag is True:  # native_dropout's train=None means train
            return name
    return None


def check_eval_mode_program(program, path: str) -> None:
    """FlatnessError when ``program`` was exported in train mode (dropout or batch-statistics BatchNorm).

    Args:
        program: a ``torch.export.ExportedProgram``.
        path: its file, for the message.
    """
    op = _train_mode_op(program)
    if op is not None:
        raise FlatnessError(
            f"{path} was exported in train mode ({op} runs in training mode in its graph): "
            "export it again after model.eval()"
        )


def load_exported_program(path: str) -> ExportedModule:
    """Load a ``torch.export.save`` program as a module, after proving that loading runs no foreign code.

    Args:
        path: the ``.pt2`` file.

    Returns:
        An ``ExportedModule`` (trainable parameters, double backward works through it) whose
        ``static_batch_size`` is the exported batch size, or None for a dynamic batch dimension.

    Raises:
        FlatnessError: not a .pt2 archive, an archive holding anything but plain tensors and JSON
            (see ``check_pt2_archive``), a program torch cannot deserialize, or one exported in
            train mode (``check_eval_mode_program``).
    """
    check_pt2_archive(path)
    try:
        program = torch.export.load(path)
    except Exception as err:  # deserialization failures surface as many exception types
        raise FlatnessError(f"cannot load {path} as a torch.export program: {_first_line(err)}") from None
    check_eval_mode_program(program, path)
    module = program.module()
    for param in module.parameters():
        param.requires_grad_(True)
    example = _first_input(program)
    return ExportedModule(module, _static_batch_size(program), getattr(example, "dtype", None))
