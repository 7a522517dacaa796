"""Compiled programs with a bounded lifetime: an LRU of jaxmlm's jitted kernels, per model shape.

Every XLA:CPU executable keeps memory mappings of its code (hundreds per
program for the engine's kernels) and some megabytes of memory. A module-level
``jax.jit`` function keeps every executable it ever compiled for as long as the
function lives, that is for the whole process, so a long-lived process that fits
model shape after model shape grows without bound and ends at the kernel's
``vm.max_map_count`` (65,530), where XLA aborts ("LLVM ERROR: Unable to
allocate section memory"; issue 12: the 38th shape, each with its
Satterthwaite table and a prediction).

:func:`jit` is ``jax.jit`` with a bounded lifetime. The decorated kernel keeps
one ``jax.jit`` wrapper per *program key* — its static arguments and the shapes
and dtypes of its array arguments, which is what decides the compiled program —
around a fresh function object of its own. JAX's caches (its C++ dispatch cache,
the traced jaxprs, the lowered modules, the executables) are keyed on that
function object or weakly on objects that only it keeps, so dropping the
wrapper frees its executables, mappings and memory. All wrappers of all kernels
share one least-recently-used list (:func:`cached`); past
:func:`max_programs` entries the least recently used one is dropped. The
exported-program cache (``_programs.py``) keeps its loaded programs in the same
list, so one number bounds everything jaxmlm compiles.

The bound counts program keys, not executables: one key may hold a few
executables (e.g. the float32 and float64 variants of a fit), and a kernel
called inside another one's trace takes a key without an executable (its
traced jaxpr is freed with the key too). A fit with its ``summary()``,
``coef_table()`` and ``predict()`` uses about five keys, two of them compiled.
The default, :data:`DEFAULT_MAX_PROGRAMS`, keeps about ten model shapes warm;
measured over hundreds of shapes (``benchmarks/bench_shapes.py``) it peaked at
~24,000 mappings and ~1.5 GB resident, well below the kernel's mapping limit; ``$JAXMLM_MAX_PROGRAMS`` (read
when the first program is made) or :func:`set_max_programs` change it. A
program dropped and needed again is compiled again (or read from the persistent
compilation cache, ``_cache.py``): the bound costs time, never a result.

The warm path is a key built from the arguments and a dictionary look-up
(a few microseconds) before JAX's own C++ dispatch.
"""

from __future__ import annotations

import functools
import inspect
import os
import threading
from collections import OrderedDict

from ._errors import ConfigurationError

__all__ = ["jit", "cached", "max_programs", "set_max_programs", "program_count", "clear"]

DEFAULT_MAX_PROGRAMS = 48
_ENV = "JAXMLM_MAX_PROGRAMS"

_lru: OrderedDict = OrderedDict()  # key -> callable, least recently used first
_lock = threading.Lock()
_state: dict = {"max": None}  # None: not read from the environment yet


def _parse_bound(value, source: str) -> int:
    """A program bound (an integer ≥ 1) from ``value``; ConfigurationError naming ``source`` otherwise."""
    try:
        n = int(str(value).strip())
    except ValueError:
        raise ConfigurationError(f"{source} must be a whole number of programs (≥ 1), got {value!r}") from None
    if n < 1:
        raise ConfigurationError(f"{source} must be at least 1 (a program must stay alive while it runs), got {n}")
    return n


def max_programs() -> int:
    """How many compiled programs jaxmlm keeps alive (see the module docstring)."""
    if _state["max"] is None:
        value = os.environ.get(_ENV, "").strip()
        _state["max"] = _parse_bound(value, f"${_ENV}") if value else DEFAULT_MAX_PROGRAMS
    return _state["max"]


def set_max_programs(n: int) -> int:
    """Keep at most ``n`` compiled programs alive (least recently used dropped first); returns ``n``.

    Each program of jaxmlm's engine holds hundreds of memory mappings and
    some megabytes; a process that fits many model shapes stays within the
    bound's memory. Lowering the bound drops programs at once.
    """
    n = _parse_bound(n, "max_programs")
    with _lock:
        _state["max"] = n
        dropped = _shrink(n)
    del dropped  # released outside the lock (freeing executables takes a moment)
    return n


def program_count() -> int:
    """How many program keys are alive now."""
    return len(_lru)


def clear() -> None:
    """Drop every compiled program jaxmlm keeps (they are compiled again when needed)."""
    with _lock:
        dropped = list(_lru.values())
        _lru.clear()
    del dropped


def cached(key, make):
    """The program under ``key`` (hashable), made by ``make()`` and kept in the LRU if new.

    The one place where jaxmlm keeps compiled programs: using a program marks it
    most recent, and adding one past :func:`max_programs` drops the least recent.
    """
    prog = _lru.get(key)
    if prog is not None:
        try:
            _lru.move_to_end(key)
        except KeyError:  # dropped by another thread meanwhile: it is still ours to run
            pass
        return prog
    prog = make()
    limit = max_programs()
    with _lock:
        prog = _lru.setdefault(key, prog)  # another thread may have made it first
        _lru.move_to_end(key)
        dropped = _shrink(limit)
    del dropped
    return prog


def _shrink(limit: int) -> list:
    """Remove least recently used entries past ``limit`` (caller holds the lock); the removed ones."""
    out = []
    while len(_lru) > limit:
        out.append(_lru.popitem(last=False)[1])
    return out


def _signature(tree) -> tuple:
    """What of the arguments decides the compiled program: their tree structure and the shape
    and dtype of each array leaf (the type of any other leaf).

    Only chooses which wrapper runs the call (the wrapper's own jit cache checks
    the exact types, weak types included), so it need not be complete, only cheap
    and hashable: a few microseconds for the engine's statistics.
    """
    leaves, treedef = _flatten(tree)
    return treedef, tuple((x.shape, x.dtype) if hasattr(x, "dtype") else type(x) for x in leaves)


def _flatten(tree):
    import jax

    global _flatten
    _flatten = jax.tree.flatten  # bound on first use: importing this module does not load JAX
    return _flatten(tree)


class BoundedJit:
    """``jax.jit(fn, **options)`` whose programs live in the shared LRU (see the module docstring).

    Called like the jitted function (static arguments by name or position);
    also traceable inside another ``jit``, ``vmap`` or ``grad``.
    """

    def __init__(self, fn, options: dict):
        self.fn = fn
        self.options = dict(options)
        names = options.get("static_argnames") or ()
        self.static_argnames = (names,) if isinstance(names, str) else tuple(names)
        params = list(inspect.signature(fn).parameters)
        # positions of the static arguments when given positionally (as jax.jit infers them)
        self._static_pos = tuple((params.index(n), n) for n in self.static_argnames if n in params)
        self._static_idx = frozenset(pos for pos, _ in self._static_pos)
        self._first_static = min(self._static_idx, default=len(params))
        functools.update_wrapper(self, fn)

    def __call__(self, *args, **kwargs):
        return self.program(args, kwargs)(*args, **kwargs)

    def key(self, args: tuple, kwargs: dict) -> tuple:
        """The program key of a call: static argument values, then array shapes and dtypes."""
        n = len(args)
        static = tuple(args[pos] if pos < n else kwargs.get(name) for pos, name in self._static_pos)
        dynamic = args if n <= self._first_static else tuple(a for i, a in enumerate(args) if i not in self._static_idx)
        rest = {k: v for k, v in kwargs.items() if k not in self.static_argnames} or None if kwargs else None
        return (self, static, _signature((dynamic, rest)))

    def program(self, args: tuple, kwargs: dict):
        """The ``jax.jit`` wrapper that runs this call (made and kept in the LRU if new)."""
        return cached(self.key(args, kwargs), self._make)

    def _make(self):
        import jax

        fn = self.fn

        # A fresh function object per key: JAX keys its caches on it, so dropping
        # the wrapper releases everything compiled for it.
        @functools.wraps(fn)
        def program(*args, **kwargs):
            return fn(*args, **kwargs)

        return jax.jit(program, **self.options)

    def _cache_size(self) -> int:
        """Executables alive for this kernel (as ``jax.jit``'s ``_cache_size``, over its keys)."""
        return sum(p._cache_size() for k, p in list(_lru.items()) if k[0] is self)

    def __repr__(self) -> str:
        return f"<bounded jit {getattr(self.fn, '__qualname__', self.fn)!r}>"


def jit(fn=None, **options):
    """``jax.jit`` for jaxmlm's kernels, with programs kept in the bounded LRU.

    Use as ``@jit``, ``@jit(static_argnames=...)`` or ``jit(fn, **options)``;
    ``options`` are ``jax.jit``'s.
    """
    if fn is None:
        return lambda f: BoundedJit(f, options)
    return BoundedJit(fn, options)
