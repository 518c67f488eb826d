"""The registry of base methods: the built-in ones, those of installed plugins, and those
registered at run time with :func:`register_method`.

Built-in methods are one line each in :data:`BUILTIN` ("module:attribute" of their
:class:`~fdbpl.methods.MethodSpec`), imported on first use. A package adds its own with an
entry point in the ``fdbpl.methods`` group (``name = "package.module:SPEC"``), so that
``fdbpl train --method NAME`` finds it, or by calling :func:`register_method` before
training (as open_clip's ``add_model_config``).
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from fdbpl.errors import InputValueError
from fdbpl.methods.spec import MethodSpec

__all__ = ["BUILTIN", "DEFAULT_METHOD", "ENTRY_POINTS", "method_names", "method_spec", "register_method"]

#: The built-in methods, in the order the docs and ``--help`` list them.
BUILTIN: dict[str, str] = {
    "coop": "fdbpl.methods.coop:COOP",
    "cocoop": "fdbpl.methods.cocoop:COCOOP",
    "vpt": "fdbpl.methods.deep:VPT",
    "ivlp": "fdbpl.methods.deep:IVLP",
    "maple": "fdbpl.methods.deep:MAPLE",
    "promptsrc": "fdbpl.methods.promptsrc:PROMPTSRC",
    "kgcoop": "fdbpl.methods.kgcoop:KGCOOP",
}

#: The method a run trains when none is named.
DEFAULT_METHOD = "coop"

#: The entry-point group of methods from other packages.
ENTRY_POINTS = "fdbpl.methods"

_REGISTRY: dict[str, MethodSpec] = {}
_LOADED = False


def _load(target: str, where: str) -> MethodSpec:
    module, _, attribute = target.partition(":")
    spec = getattr(importlib.import_module(module), attribute)
    if not isinstance(spec, MethodSpec):
        raise InputValueError(f"{where}: {target} is a {type(spec).__name__}, not a MethodSpec")
    return spec


def _load_all() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    for name, target in BUILTIN.items():
        _REGISTRY.setdefault(name, _load(target, "fdbpl.methods.BUILTIN"))
    for entry in entry_points(group=ENTRY_POINTS):
        if entry.name not in _REGISTRY:
            spec = _load(entry.value, f"entry point {entry.name} ({ENTRY_POINTS})")
            if spec.name != entry.name:
                raise InputValueError(
                    f"entry point {entry.name} ({ENTRY_POINTS}): names a method {spec.name!r}"
                )
            _REGISTRY[entry.name] = spec


def register_method(spec: MethodSpec, *, replace: bool = False) -> MethodSpec:
    """Make ``spec`` a base method of this process: ``TrainConfig(method=spec.name)``,
    :func:`~fdbpl.prompts.build_learner` and ``fdbpl train --method`` take it.

    Args:
        spec: the method.
        replace: allow replacing a method of the same name (default: refused).

    Returns:
        ``spec``, so that a module can write ``SPEC = register_method(MethodSpec(...))``.

    Raises:
        InputValueError: not a :class:`MethodSpec`, or a name already taken.
    """
    if not isinstance(spec, MethodSpec):
        raise InputValueError(f"spec: expected a MethodSpec, got {type(spec).__name__}")
    _load_all()
    if spec.name in _REGISTRY and not replace and _REGISTRY[spec.name] is not spec:
        raise InputValueError(f"spec: a method {spec.name!r} exists; pass replace=True to replace it")
    _REGISTRY[spec.name] = spec
    return spec


def method_names() -> tuple[str, ...]:
    """Every registered method's name: the built-in ones first, in :data:`BUILTIN` order."""
    _load_all()
    return tuple(_REGISTRY)


def method_spec(name: str) -> MethodSpec:
    """The registered method ``name``.

    Raises:
        InputValueError: an unknown name, listing the known ones.
    """
    _load_all()
    if name not in _REGISTRY:
        raise InputValueError(f"method: expected one of {list(_REGISTRY)}, got {name!r}")
    return _REGISTRY[name]
