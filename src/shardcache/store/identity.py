"""What goes into a cache key for an object: an injective, type-tagged JSON description.

`describe` turns a loader's attribute, a transform or anything they hold into JSON that
changes whenever the value could change what the loader produces, and never confuses two
values of different types (``inf`` and ``"inf"``, ``Mode.GRAY`` and ``"gray"``,
``torch.float32`` and ``"torch.float32"``). JSON scalars stand for themselves (JSON keeps
``true``, ``1``, ``1.0`` and ``"true"`` apart); every other value is a one-key object
whose key names its kind:

==========================  =====================================================
``{"float": "inf"}``        infinities and NaN
``{"list": [...]}``         also ``tuple``, ``set`` (sorted), ``dict`` (str keys:
                            an object; other keys: sorted ``[key, value]`` pairs)
``{"path": "a/b"}``         ``pathlib`` paths; ``{"enum": ...}``, ``{"dtype": ...}``,
                            ``{"device": ...}``, ``{"bytes": sha256}``, ``{"regex": ...}``
``{"tensor": {...}}``       dtype, shape and the SHA-256 of the bytes (NumPy arrays too)
``{"module": {...}}``       ``torch.nn.Module``: class, class source, attributes,
                            parameters and buffers by content, child modules
``{"function": {...}}``     qualified name, source hash, defaults, closure cells;
                            also ``partial``, bound methods, classes, builtins
``{"object": {...}}``       anything with ``__dict__`` or ``__slots__``: class, class
                            source, every attribute; or its ``fingerprint()``
==========================  =====================================================

An object's attributes are all of them, private ones included, except those its class
lists in ``shardcache_key_ignores`` (`attributes`). Whatever cannot be described is a
`FingerprintError` naming its path (``RawDataLoader._reader``) and the two remedies: fail
closed, never a key that silently ignores a setting.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import inspect
import json
import math
import re
import sys
import types
from pathlib import PurePath
from typing import Any

import torch

from ..core.errors import FingerprintError
from .attributes import KEY_IGNORES, class_source_digest, instance_attributes, qualified

MAX_DEPTH = 32
"""Nesting a description follows before it refuses (cycles are found before that)."""

REMEDIES = (
    "give {owner} a fingerprint() -> str method that changes whenever its output would, "
    "or, if {attribute} does not change its output, list it in the class attribute "
    f"{KEY_IGNORES}"
)


class _Describer:
    """One description: tracks the objects being described, to find cycles."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.active: dict[int, str] = {}

    def refuse(self, where: str, problem: str) -> FingerprintError:
        return FingerprintError(
            f"{where} {problem}, which the cache key cannot describe: "
            + REMEDIES.format(owner=self.owner, attribute=where)
        )

    def __call__(self, value: Any, where: str, depth: int = 0) -> Any:
        kind = type(value)
        if value is None or kind in (bool, int, str):
            return value
        if kind is float:
            return value if math.isfinite(value) else {"float": repr(value)}
        if depth >= MAX_DEPTH:
            raise self.refuse(where, f"nests deeper than {MAX_DEPTH} levels")
        simple = self._simple(value, where)
        if simple is not None:
            return simple
        identity = id(value)
        if identity in self.active:
            return {"cycle": self.active[identity]}
        self.active[identity] = where
        try:
            return self._compound(value, where, depth + 1)
        finally:
            del self.active[identity]

    def _simple(self, value: Any, where: str) -> dict[str, Any] | None:
        """Values without parts: the description, or None."""
        if isinstance(value, enum.Enum):
            cls = type(value)
            return {"enum": [qualified(cls), value.name, self(value.value, f"{where}.value")]}
        if isinstance(value, PurePath):
            return {"path": str(value)}
        if isinstance(value, torch.dtype):
            return {"dtype": str(value)}
        if isinstance(value, torch.device):
            return {"device": str(value)}
        if isinstance(value, bytes | bytearray | memoryview):
            return {"bytes": hashlib.sha256(value).hexdigest()}
        if isinstance(value, re.Pattern):
            return {"regex": [self(value.pattern, f"{where}.pattern"), value.flags]}
        if isinstance(value, torch.Tensor):
            return {"tensor": _tensor(value, self, where)}
        numpy = sys.modules.get("numpy")
        if numpy is not None and isinstance(value, numpy.ndarray | numpy.generic):
            return {"numpy": _ndarray(numpy, value, self, where)}
        if isinstance(value, types.BuiltinFunctionType | types.BuiltinMethodType):
            owner = getattr(value, "__self__", None)
            if owner is not None and not isinstance(owner, types.ModuleType):
                raise self.refuse(where, f"is the built-in method {value!r} of an object")
            return {"builtin": f"{value.__module__}.{value.__qualname__}"}
        return None

    def _compound(self, value: Any, where: str, depth: int) -> Any:
        """Values with parts (cycle checked by the caller)."""
        kind = type(value)
        if kind is list or kind is tuple:
            name = "list" if kind is list else "tuple"
            return {name: [self(item, f"{where}[{i}]", depth) for i, item in enumerate(value)]}
        if kind is dict:
            return {"dict": self._mapping(value, where, depth)}
        if kind is set or kind is frozenset:
            parts = [self(item, f"{where}{{{item!r}}}", depth) for item in value]
            return {"set": sorted(parts, key=_canonical)}
        if isinstance(value, functools.partial):
            return {
                "partial": {
                    "func": self(value.func, f"{where}.func", depth),
                    "args": self(list(value.args), f"{where}.args", depth),
                    "keywords": self(dict(value.keywords), f"{where}.keywords", depth),
                }
            }
        if isinstance(value, types.MethodType):
            return {
                "method": {
                    "function": self(value.__func__, where, depth),
                    "self": self(value.__self__, f"{where}.__self__", depth),
                }
            }
        if isinstance(value, types.FunctionType):
            return {"function": self._function(value, where, depth)}
        if isinstance(value, type):
            return {"class": [qualified(value), self._source(value, where)]}
        if isinstance(value, torch.nn.Module):
            return {"module": self._module(value, where, depth)}
        if hasattr(value, "__dict__") or hasattr(kind, "__slots__"):
            return {"object": self._object(value, where, depth)}
        raise self.refuse(where, f"is a {kind.__module__}.{kind.__qualname__}")

    def _source(self, cls: type, where: str) -> str:
        digest = class_source_digest(cls)
        if digest is None:
            raise self.refuse(where, f"is a {qualified(cls)}, a class whose source cannot be read")
        return digest

    def _mapping(self, value: dict[Any, Any], where: str, depth: int) -> Any:
        if all(isinstance(key, str) for key in value):
            return {key: self(item, f"{where}[{key!r}]", depth) for key, item in value.items()}
        pairs = [
            [self(key, f"{where} key {key!r}", depth), self(item, f"{where}[{key!r}]", depth)]
            for key, item in value.items()
        ]
        return sorted(pairs, key=lambda pair: _canonical(pair[0]))

    def _function(self, value: types.FunctionType, where: str, depth: int) -> dict[str, Any]:
        try:
            source = inspect.getsource(value)
        except (OSError, TypeError) as error:
            raise self.refuse(where, f"is the function {value.__qualname__} ({error})") from error
        described: dict[str, Any] = {
            "name": qualified(value),
            "source_sha256": hashlib.sha256(source.encode()).hexdigest(),
        }
        if value.__defaults__:
            described["defaults"] = self(list(value.__defaults__), f"{where}.defaults", depth)
        if value.__kwdefaults__:
            described["kwdefaults"] = self(value.__kwdefaults__, f"{where}.kwdefaults", depth)
        if value.__closure__:
            cells: dict[str, Any] = {}
            for name, cell in zip(value.__code__.co_freevars, value.__closure__, strict=True):
                try:
                    content = cell.cell_contents
                except ValueError:  # an empty cell: a name not assigned yet
                    content = None
                cells[name] = self(content, f"{where}.<closure {name}>", depth)
            described["closure"] = cells
        return described

    def _attributes(self, value: object, where: str, depth: int) -> dict[str, Any]:
        return {
            name: self(attribute, f"{where}.{name}", depth)
            for name, attribute in instance_attributes(value, where)
        }

    def _object(self, value: object, where: str, depth: int) -> dict[str, Any]:
        cls = type(value)
        described: dict[str, Any] = {"class": qualified(cls)}
        fingerprint = getattr(value, "fingerprint", None)
        if callable(fingerprint):
            described["fingerprint"] = _checked_fingerprint(value, fingerprint)
            return described
        described["source_sha256"] = self._source(cls, where)
        described["attributes"] = self._attributes(value, where, depth)
        if isinstance(value, dict | list | tuple | set | frozenset):
            items = dict(value) if isinstance(value, dict) else list(value)
            described["items"] = self(items, f"{where}.items", depth)
        return described

    def _module(self, value: torch.nn.Module, where: str, depth: int) -> dict[str, Any]:
        described = self._object(value, where, depth)
        if "fingerprint" in described:
            return described
        attributes = described["attributes"]
        bookkeeping = _module_bookkeeping()
        described["attributes"] = {
            name: part for name, part in attributes.items() if name not in bookkeeping
        }
        described["training"] = value.training
        described["parameters"] = {
            name: _tensor(parameter, self, f"{where}.{name}")
            for name, parameter in value._parameters.items()
            if parameter is not None
        }
        described["buffers"] = {
            name: _tensor(buffer, self, f"{where}.{name}")
            for name, buffer in value._buffers.items()
            if buffer is not None
        }
        described["children"] = {
            name: self(child, f"{where}.{name}", depth)
            for name, child in value._modules.items()
            if child is not None
        }
        hooks = {
            name: [self(hook, f"{where}.{name}[{i}]", depth) for i, hook in enumerate(table)]
            for name in sorted(bookkeeping)
            if name.endswith("hooks")
            and isinstance(table := getattr(value, name, None), dict)
            and (table := list(table.values()))
        }
        if hooks:
            described["hooks"] = hooks
        return described


@functools.cache
def _module_bookkeeping() -> frozenset[str]:
    """What every ``nn.Module`` holds for itself: described apart (parameters, children)."""
    return frozenset(vars(torch.nn.Module()))


def _checked_fingerprint(value: object, fingerprint: Any) -> str:
    text = fingerprint()
    if not isinstance(text, str):
        raise FingerprintError(
            f"{qualified(type(value))}.fingerprint() returned {type(text).__name__}, expected str"
        )
    return text


def _tensor(value: torch.Tensor, describer: _Describer, where: str) -> dict[str, Any]:
    if value.is_nested or value.layout != torch.strided or value.is_quantized:
        raise describer.refuse(where, f"is a {value.layout} tensor")
    if value.device.type == "meta":
        raise describer.refuse(where, "is a tensor on the meta device (it holds no data)")
    dense = value.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
    described: dict[str, Any] = {
        "dtype": str(value.dtype),
        "shape": list(value.shape),
        "sha256": hashlib.sha256(dense.numpy().tobytes()).hexdigest(),
    }
    if type(value) is not torch.Tensor:
        described["class"] = qualified(type(value))
    return described


def _ndarray(numpy: Any, value: Any, describer: _Describer, where: str) -> dict[str, Any]:
    array = numpy.asarray(value)
    if array.dtype.hasobject:
        raise describer.refuse(where, "is a NumPy array of Python objects")
    return {
        "class": qualified(type(value)),
        "dtype": array.dtype.str,
        "shape": list(array.shape),
        "sha256": hashlib.sha256(numpy.ascontiguousarray(array).tobytes()).hexdigest(),
    }


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def describe(value: object, where: str, *, owner: str | None = None) -> Any:
    """The injective JSON description of ``value`` (see the module docstring).

    Args:
        value: what to describe.
        where: its path in messages, e.g. ``RawDataLoader._reader`` or ``transforms[0]``.
        owner: what the remedies in an error speak of (default: ``where``).

    Raises:
        FingerprintError: naming the path of the part that cannot be described.
    """
    return _Describer(owner or where)(value, where)


def describe_attributes(value: object, where: str) -> dict[str, Any]:
    """The descriptions of every attribute of ``value`` the key covers, by name."""
    describer = _Describer(where)
    describer.active[id(value)] = where
    return describer._attributes(value, where, 1)
