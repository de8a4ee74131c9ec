"""A pickle reader that can rebuild a CIFAR batch and nothing else.

CIFAR's python release is a set of pickles, and ``pickle.load`` runs whatever
callable a file names (``os.system`` included), so a crafted ``data_batch_1``
would run code on the machine of whoever trains on it. ``load_restricted``
resolves only the globals that numpy needs to rebuild arrays, dtypes and
scalars (plus ``_codecs.encode``, which Python 3 emits for ``bytes`` in
protocol-2 pickles); dicts, lists, str, bytes and ints need no global at all.
Any other global is refused before it is imported, with the file and the
global named.
"""

from __future__ import annotations

import codecs
import io
import os
import pickle
from pathlib import Path
from typing import Any, Callable, Dict, Tuple

import numpy as np

__all__ = ["UnsafePickleError", "load_restricted", "ALLOWED_GLOBALS"]


def _np_multiarray():
    # numpy 2 renamed numpy.core to numpy._core; files written by either name the module they had.
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray
    return multiarray


def _np_frombuffer():
    try:
        from numpy._core.numeric import _frombuffer
    except ImportError:  # numpy 1.x
        from numpy.core.numeric import _frombuffer
    return _frombuffer


def _codecs_encode():
    return codecs.encode


# (module, name) as the pickle names it -> a zero-argument resolver. Resolving
# through our own import (never the file's module string) means a name on this
# list cannot be redirected to another object.
ALLOWED_GLOBALS: Dict[Tuple[str, str], Callable[[], Any]] = {}
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    ALLOWED_GLOBALS[(_mod, "_reconstruct")] = lambda: _np_multiarray()._reconstruct
    ALLOWED_GLOBALS[(_mod, "scalar")] = lambda: _np_multiarray().scalar
for _mod in ("numpy.core.numeric", "numpy._core.numeric"):
    ALLOWED_GLOBALS[(_mod, "_frombuffer")] = _np_frombuffer
ALLOWED_GLOBALS[("numpy", "ndarray")] = lambda: np.ndarray
ALLOWED_GLOBALS[("numpy", "dtype")] = lambda: np.dtype
ALLOWED_GLOBALS[("_codecs", "encode")] = _codecs_encode


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle names a global outside ``ALLOWED_GLOBALS``; nothing it names was imported or called."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, f, path: str, **kw) -> None:
        super().__init__(f, **kw)
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        resolve = ALLOWED_GLOBALS.get((module, name))
        if resolve is None:
            raise UnsafePickleError(
                f"{self._path}: refused to load the global '{module}.{name}': a CIFAR batch holds only dicts, "
                "lists, strings, bytes, ints and numpy arrays, so this file is not one and loading it could run "
                "code. Re-download the dataset (data.download=true) from its official source."
            )
        return resolve()

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self._path}: refused a persistent id ({pid!r}); CIFAR batches have none")


def load_restricted(path: str | os.PathLike, encoding: str = "latin1") -> Any:
    """Unpickle ``path`` allowing only the globals in ``ALLOWED_GLOBALS``.

    ``encoding='latin1'`` reads the official CIFAR pickles, written by Python 2.
    Raises ``UnsafePickleError`` naming the file and the refused global;
    other errors (truncated or garbled bytes) propagate as ``pickle`` raises them.
    """
    path = Path(path)
    with open(path, "rb") as f:
        data = f.read()
    return _RestrictedUnpickler(io.BytesIO(data), str(path), encoding=encoding).load()
