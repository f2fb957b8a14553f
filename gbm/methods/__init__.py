"""The registry of diffusion methods: every method the pipeline, the command line, config validation and
the tables know, by name.

Built in: ``gbm`` (``gbm.methods.gbm``), ``vp``, ``subvp``, ``ve`` (``gbm.methods.additive``), ``cld``
(``gbm.methods.cld``), ``beta`` (``gbm.methods.beta``, Beta diffusion) and ``logvp`` (``gbm.methods.logspace``,
the log-space control: this project's, not a published method). More come from modules named in
the environment variable ``GBM_METHOD_MODULES``
(``os.pathsep``-separated dotted module names or ``.py`` files; the pipeline sets it from the config key
``method_modules``), each of which calls ``register``; a method is then usable by every ``gbm`` command.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path

from gbm.methods import additive, beta, cld, logspace
from gbm.methods import gbm as gbm_method
from gbm.methods.base import Method
from gbm.sde import SDE

MODULES_ENV = "GBM_METHOD_MODULES"
#: The method ``gbm train`` trains when its config names none (``sde.name``).
DEFAULT_METHOD = gbm_method.METHOD.name

_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add ``method`` under its name (a second registration of the same name must be the same method)."""
    if not isinstance(method, Method):
        raise TypeError(f"register: expected a gbm.methods.Method, got {type(method).__name__}")
    known = _REGISTRY.get(method.name)
    if known is not None and known != method:
        raise ValueError(f"method {method.name!r} is already registered by {known.sde.__module__}")
    _REGISTRY[method.name] = method
    return method


for _method in (gbm_method.METHOD, *additive.METHODS, cld.METHOD, beta.METHOD, logspace.METHOD):
    register(_method)


def load_method_modules(entries: str | list[str] | None = None) -> None:
    """Import the method modules named in ``entries`` (default: ``$GBM_METHOD_MODULES``)."""
    if entries is None:
        entries = os.environ.get(MODULES_ENV, "")
    if isinstance(entries, str):
        entries = [e for e in entries.split(os.pathsep) if e.strip()]
    for entry in entries:
        _import_entry(entry.strip())


def _import_entry(entry: str) -> None:
    if entry.endswith(".py"):
        path = Path(entry).resolve()
        if not path.is_file():
            raise ValueError(f"{MODULES_ENV}: method module file {entry!r} does not exist")
        name = f"gbm_method_module_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:12]}"
        if name in sys.modules:
            return
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return
    try:
        importlib.import_module(entry)
    except ImportError as error:
        raise ValueError(f"{MODULES_ENV}: cannot import method module {entry!r}: {error}") from None


def registered() -> dict[str, Method]:
    """Every registered method by name (the built-ins and those of ``$GBM_METHOD_MODULES``)."""
    load_method_modules()
    return dict(_REGISTRY)


def get_method(name: str, field: str = "sde.name") -> Method:
    """The method called ``name``; an unknown name is an error naming ``field`` and the registered methods."""
    methods = registered()
    if name not in methods:
        raise ValueError(f"{field}: unknown method {name!r}; registered methods: {', '.join(sorted(methods))}")
    return methods[name]


def method_of(sde: SDE) -> Method:
    """The method an SDE instance belongs to."""
    return get_method(sde.name)


def make_sde(name: str, **params) -> SDE:
    """The SDE of method ``name`` with its ``sde:`` parameters, naming the field on bad input."""
    return get_method(name).make_sde(**params)


__all__ = ["Method", "register", "registered", "get_method", "method_of", "make_sde", "load_method_modules"]
