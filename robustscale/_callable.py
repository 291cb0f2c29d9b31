"""Let a module stand for the function it is named after (``robustscale.train(recipe)``).

``robustscale.train`` and ``robustscale.evaluate`` are both a public function and the
subpackage/module that defines it. Python binds a package attribute to the submodule as soon
as the submodule is imported, which would shadow a lazily exported function of the same name;
so instead the submodule itself is made callable. This keeps ``import robustscale`` free of
torch (``robustscale --help`` and ``robustscale status`` never import it) while
``from robustscale import train; train(recipe)`` keeps working.
"""

from __future__ import annotations

import sys
import types
from typing import Any


def make_callable(module_name: str, function_name: str) -> None:
    """Make ``sys.modules[module_name]`` callable as its attribute ``function_name``."""

    class _CallableModule(types.ModuleType):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return getattr(self, function_name)(*args, **kwargs)

    sys.modules[module_name].__class__ = _CallableModule
