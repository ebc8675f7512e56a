"""Package namespaces whose names load on first use (PEP 562), as ``govlab`` itself does: importing
one small module of a package (``govlab.routing.config``, as ``govlab.config`` does) runs the
package's ``__init__`` but imports none of its other modules."""

from __future__ import annotations

import importlib
import sys
import types


def lazy_exports(package: str, exports: dict[str, str]) -> None:
    """Make each name of ``exports`` (name -> module) an attribute of ``package``, imported when first
    read; ``from package import name`` and ``package.name`` work as with an eager import."""

    class LazyPackage(types.ModuleType):
        def __getattr__(self, name: str):
            if name not in exports:
                raise AttributeError(f"module {package!r} has no attribute {name!r}")
            value = getattr(importlib.import_module(exports[name]), name)
            self.__dict__[name] = value
            return value

        def __dir__(self):
            return sorted(set(self.__dict__) | set(exports))

        def __setattr__(self, name: str, value) -> None:
            # importing a submodule that shares its name with one of the exports (the module
            # govlab.provenance.attest, the function attest) binds the submodule on the package:
            # the name keeps meaning the export, as an eager ``from .attest import attest`` left it
            if name in exports and isinstance(value, types.ModuleType) and value.__name__ == f"{package}.{name}":
                value = getattr(value, name)
            super().__setattr__(name, value)

    sys.modules[package].__class__ = LazyPackage
