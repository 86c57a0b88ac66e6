"""The scipy.special ufuncs scoring calls, without scipy.special's package import.

``import scipy.special`` costs about 0.2 s of every cold ``syncguard score``: its
``__init__`` loads scipy's array-API layer, which copies numpy's whole namespace and so
imports ``numpy.f2py`` and ``numpy.testing``. The ufuncs themselves live in one compiled
module, ``scipy.special._ufuncs``, which needs none of that. It is loaded here with
``scipy.special`` stood in for, for that moment only, by an empty package at the same
path; a later ``import scipy.special`` (fitting imports ``scipy.stats``) finds the module
already loaded and uses the very same ufunc objects (a test holds them identical). When
scipy.special is imported already, or the short way fails (another scipy layout), it is
imported the ordinary way.

Examples
--------
>>> from detector.special import ufuncs
>>> float(ufuncs.ndtri(0.5))
0.0
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

__all__ = ["ufuncs"]

_PACKAGE = "scipy.special"
_MODULE = "scipy.special._ufuncs"


def _load() -> types.ModuleType:
    if _PACKAGE in sys.modules or _MODULE in sys.modules:
        return importlib.import_module(_MODULE)
    import scipy

    before = set(sys.modules)
    stand_in = types.ModuleType(_PACKAGE)
    stand_in.__path__ = [str(Path(scipy.__file__).parent / "special")]
    stand_in.__package__ = _PACKAGE
    sys.modules[_PACKAGE] = stand_in
    try:
        return importlib.import_module(_MODULE)
    except Exception:  # noqa: BLE001 - any failure: forget the attempt, go the long way
        for name in set(sys.modules) - before:
            if name.startswith(_PACKAGE + "."):
                del sys.modules[name]
    finally:
        if sys.modules.get(_PACKAGE) is stand_in:
            del sys.modules[_PACKAGE]
            if vars(scipy).get("special") is stand_in:  # not getattr: scipy's would import it
                del scipy.special
    return importlib.import_module(_MODULE)


ufuncs = _load()
"""``scipy.special._ufuncs``: ``ndtri``, ``expit``, ``inv_boxcox``, ``_nbinom_sf`` ..."""
