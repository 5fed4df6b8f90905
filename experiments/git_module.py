"""Load one source file of the package as it was at an earlier commit (for before/after measurements)."""

from __future__ import annotations

import importlib.util
import subprocess
import tempfile
from pathlib import Path
from types import ModuleType


def module_at(commit: str, path: str) -> ModuleType:
    """``git show COMMIT:PATH`` imported as a standalone module (its own imports must be absolute or none
    relative: balora's files import only torch here)."""
    source = subprocess.run(["git", "show", f"{commit}:{path}"], check=True, capture_output=True, text=True).stdout
    name = f"{Path(path).stem}_{commit}"
    file = Path(tempfile.gettempdir()) / f"balora_{name}.py"
    file.write_text(source)
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
