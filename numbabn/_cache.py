"""Give Numba's on-disk cache a writable home before any kernel is compiled.

Numba caches next to the package (``__pycache__``) or in the user's cache
directory. When neither is writable (a read-only install and no writable HOME)
and ``NUMBA_CACHE_DIR`` is unset, fall back to a directory under the system's
temporary directory instead of failing at import.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _writable(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, delete=True)
        probe.close()
    except OSError:
        return False
    return True


def ensure_cache_dir() -> None:
    """Set ``numba.config.CACHE_DIR`` to a writable fallback where needed."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return
    package_cache = Path(__file__).parent / "kernels" / "__pycache__"
    user_cache = Path(os.path.expanduser("~")) / ".cache" / "numba"
    if _writable(package_cache) or _writable(user_cache):
        return
    fallback = Path(tempfile.gettempdir()) / f"numbabn-numba-cache-{os.getuid()}"
    if not _writable(fallback):
        return  # Numba then reports its own error at the first cached compile
    import numba

    numba.config.CACHE_DIR = str(fallback)
