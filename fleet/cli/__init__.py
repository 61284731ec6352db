"""Task modules, one per area of the builder, gathered by tasks.py."""

import importlib
import pkgutil
from types import ModuleType


def load_task_modules() -> list[ModuleType]:
    """Import every module in this package, in name order."""
    names = sorted(info.name for info in pkgutil.iter_modules(__path__))
    return [importlib.import_module(f"{__name__}.{name}") for name in names]
