"""How the person at the shell runs this program, so every command we print can be copied as printed.

After `make demo` the program is `.venv/bin/wgmesh` and no `wgmesh` is on PATH; after
`deploy/install.sh` it is `wgmesh`. Hints and error messages name the program the way it was started:
`wgmesh` when that name on PATH is this very program, else its path (relative to the working directory
when it lies below it).
"""

from __future__ import annotations

import os
import shutil
import sys
from functools import cache


def command_for(argv0: str, cwd: str, path_env: str | None) -> str:
    """The shortest spelling of `argv0` that runs the same program from `cwd` in a shell."""
    name = os.path.basename(argv0)
    if not name.startswith("wgmesh") or name.endswith(".py"):
        return "wgmesh"  # `python -m wgmesh`, pytest, an embedding program: the installed name
    if os.sep not in argv0:
        return argv0  # found on PATH under that name: the shell finds it again
    real = os.path.realpath(argv0)
    found = shutil.which(name, path=path_env)
    if found is not None and os.path.realpath(found) == real:
        return name
    absolute = os.path.abspath(os.path.join(cwd, argv0))
    relative = os.path.relpath(absolute, cwd)
    if not relative.startswith(".."):
        return relative if os.sep in relative else f".{os.sep}{relative}"
    return absolute


@cache
def program() -> str:
    """`wgmesh`, or the path that runs it (for example `.venv/bin/wgmesh`), for text shown to a person."""
    try:
        cwd = os.getcwd()
    except OSError:
        return "wgmesh"
    return command_for(sys.argv[0] if sys.argv else "wgmesh", cwd, os.environ.get("PATH"))
