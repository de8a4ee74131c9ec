"""Registry of SSL methods; every module of this package is imported so that
dropping a new ``<method>.py`` here is all it takes to register a method."""

import importlib
import pkgutil

from .base import METHODS, Method, build_method, method_defaults, register_method

for _m in pkgutil.iter_modules(__path__):
    if _m.name != "base":
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["METHODS", "Method", "build_method", "method_defaults", "register_method"]
