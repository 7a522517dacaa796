"""Programs kept on disk between processes: traced programs and JAX's persistent compilation cache.

A fresh Python process spends most of its first fit tracing and compiling:
every model shape is a few XLA programs, and each costs a second or more to
compile. Two caches under one directory save that work for later processes:

* JAX's persistent compilation cache: the compiled executable, keyed by JAX
  on the program itself, the JAX/jaxlib versions, the backend and the
  compile options;
* ``_programs.py``'s exported (traced and lowered) programs, keyed by the
  kernel, its static arguments, the shapes and the package's source, so a
  later process does not even trace them.

A notebook, a script run twice or a course session then pays compilation
once per machine and model shape, not once per process: a fresh process
fits sleepstudy in about 0.4 s after its imports instead of 4–5 s.

On by default when jaxmlm's engine first loads, in a per-user directory
that also carries jaxmlm's version and a digest of its source code, so an
upgrade or an edit never meets programs compiled for other code:

* ``$JAXMLM_CACHE_DIR`` if set (``off``, ``0``, ``none``, ``false`` or an
  empty value turn the cache off), else ``$XDG_CACHE_HOME/jaxmlm`` or
  ``~/.cache/jaxmlm``;
* ``jaxmlm.set_cache_dir(path)`` moves it, ``jaxmlm.set_cache_dir(None)``
  turns it off for the rest of the process;
* a cache the caller configured through JAX itself
  (``jax_compilation_cache_dir`` / ``JAX_COMPILATION_CACHE_DIR``) is left
  as it is.

Several processes may share the directory: JAX never replaces an entry,
and an entry it cannot read — truncated, corrupt, or still being written by
another process — is ignored with JAX's warning ("Error reading persistent
compilation cache entry") and the program is compiled again; it is never
run. A directory that cannot be created only costs speed. The directory is
not pruned: delete it to reclaim the space (each model shape adds a few
hundred kB).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["base_dir", "configure", "set_cache_dir", "cache_dir"]

_OFF = {"", "0", "off", "none", "false", "no"}
_state: dict = {"dir": None, "configured": False}


def _version() -> str:
    from . import __version__

    return __version__


def base_dir(environ=None) -> Path | None:
    """The cache's base directory from the environment (None: turned off by ``$JAXMLM_CACHE_DIR``)."""
    env = os.environ if environ is None else environ
    if "JAXMLM_CACHE_DIR" in env:
        value = env["JAXMLM_CACHE_DIR"]
        return None if value.strip().lower() in _OFF else Path(value).expanduser()
    base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "jaxmlm"


def _xla_dir(base: Path) -> Path:
    from ._programs import _source_digest  # the digest the exported-program cache keys on too

    return Path(base) / f"xla-{_version()}-{_source_digest()[:16]}"


def set_cache_dir(path) -> Path | None:
    """Keep compiled programs under ``path`` (a directory), or turn the cache off with ``None``.

    Returns the directory the compiled programs go to (a subdirectory named
    after jaxmlm's version and source digest), or None when the cache is off
    or the directory cannot be created (that only costs speed).
    """
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    from . import _programs

    _state["configured"] = True
    compilation_cache.reset_cache()  # forget the directory JAX opened, if any
    _programs.disable()
    target = None if path is None else _xla_dir(Path(path).expanduser())
    if target is not None:
        try:
            target.mkdir(parents=True, exist_ok=True)
        except OSError:
            target = None
    if target is None:
        jax.config.update("jax_enable_compilation_cache", False)
        _state["dir"] = None
        return None
    _programs.enable(target / "programs")  # stays off where jax.export's serialization is missing
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", str(target))
    # Cache every executable: the engine's programs are small and each compiles quickly,
    # but a fresh process compiles dozens of them.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    _state["dir"] = target
    return target


def configure() -> Path | None:
    """The default set-up, once per process, when the engine first loads (see the module docstring)."""
    if _state["configured"]:
        return _state["dir"]
    _state["configured"] = True
    import jax

    if jax.config.jax_compilation_cache_dir:  # the caller set up JAX's cache: theirs to keep
        return None
    base = base_dir()
    return set_cache_dir(base) if base is not None else None


def cache_dir() -> Path | None:
    """The directory jaxmlm's compiled programs go to (None: no cache), set up first if need be."""
    configure()
    return _state["dir"]
