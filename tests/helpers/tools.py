"""The LAION command-line tools as modules, for tests that call their ``main`` in-process.

The tools are scripts in tools/laion_data_utils, not a package: each is loaded from its file once, under
its own name (as ``import laion_filter_metadata`` would name it when run beside it).
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

TOOLS_DIR = Path(__file__).resolve().parents[2] / "tools" / "laion_data_utils"


@functools.cache
def load_tool(name: str) -> ModuleType:
    """``tools/laion_data_utils/<name>.py`` as a module, e.g. ``load_tool("laion_gen_data_stats").main([...])``."""
    path = TOOLS_DIR / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
