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
import math
import os
import threading
from collections import OrderedDict

from ._errors import ConfigurationError

__all__ = ["jit", "cached", "ahead", "start_ahead", "wait_ahead", "max_programs", "set_max_programs", "program_count", "clear",
           "compile_options", "tiered"]

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
        _asked.clear()
    del dropped


def cached(key, make):
    """The program under ``key`` (hashable), made by ``make()`` and kept in the LRU if new.

    The one place where jaxmlm keeps compiled programs: using a program marks it
    most recent, and adding one past :func:`max_programs` drops the least recent.
    A program being prepared ahead (:func:`ahead`) is waited for, not made twice.
    """
    prog = _lru.get(key)
    if prog is None and _pending:
        event = _pending.get(key)
        if event is not None:
            event.wait()
            prog = _lru.get(key)
    if prog is not None:
        try:
            _lru.move_to_end(key)
        except KeyError:  # dropped by another thread meanwhile: it is still ours to run
            pass
        return prog
    return _keep(key, make())


def _keep(key, prog):
    limit = max_programs()
    with _lock:
        prog = _lru.setdefault(key, prog)  # another thread may have made it first
        _lru.move_to_end(key)
        dropped = _shrink(limit)
    del dropped
    return prog


# ---- programs prepared ahead: the next call's compile beside this one's -------------------------

_pending: dict = {}  # key -> threading.Event, set when the program under key is ready (or failed)
_ahead: dict = {"pool": None}
_AHEAD_ENV = "JAXMLM_COMPILE_AHEAD"


def ahead_enabled() -> bool:
    """Whether :func:`ahead` prepares programs: ``$JAXMLM_COMPILE_AHEAD`` ``0`` turns it off
    and ``1`` on; unset, it is on where this process may use at least two cores (a second
    core is what it uses). Read on each call."""
    value = os.environ.get(_AHEAD_ENV, "").strip()
    if value in ("0", "1"):
        return value == "1"
    if _ahead.get("cores") is None:
        try:
            _ahead["cores"] = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            _ahead["cores"] = os.cpu_count() or 1
    return _ahead["cores"] >= 2


def ahead(prepare) -> bool:
    """Prepare a program on a background thread: ``prepare()`` gives (key, ``make``,
    ``compile_``) or None, and the program under ``key`` is made (``make()``, as for
    :func:`cached`) and compiled (``compile_(program)``) unless it is in the LRU or being
    prepared already. Queued until the next :func:`start_ahead` (jaxmlm's calls of programs
    do that: ``_programs.call``); True if queued. A call that needs the program while it is
    being prepared waits for it (:func:`cached`); a failure leaves it to be made when called.

    Why: XLA compiles without holding Python's lock and, at the quick tier's settings, keeps
    about one core busy. A program that is all but sure to be needed next (a model's
    Satterthwaite derivatives, for the ``summary()`` that follows its fit) can then be traced
    and compiled on the second core while the first compiles the fit (issue 12). Started
    when the fit's program is called, after it is traced, its tracing does not compete with
    the fit's for Python's lock; ``prepare`` runs there too, so whatever it traces to find
    the program's shapes does not either. The worker is one thread that Python joins at
    exit, so a compile is never cut off."""
    if not ahead_enabled():
        return False
    _queued.append(prepare)
    return True


_queued: list = []  # ahead()'s prepare functions, not started yet
_asked: set = set()  # first_ask()'s keys


def first_ask(key) -> bool:
    """True the first time ``key`` (hashable) is given, until :func:`clear`: a caller's cheap
    check that it has not asked :func:`ahead` for a program of this kind before."""
    if key in _asked:
        return False
    if len(_asked) > 4096:
        _asked.clear()
    _asked.add(key)
    return True


def start_ahead() -> None:
    """Start what :func:`ahead` queued (cheap when nothing is)."""
    while _queued:
        try:
            prepare = _queued.pop(0)
        except IndexError:  # taken by another thread
            return
        with _lock:
            if _ahead["pool"] is None:
                from concurrent.futures import ThreadPoolExecutor

                _ahead["pool"] = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jaxmlm-ahead")
        try:
            _ahead["pool"].submit(_prepare, prepare)
        except RuntimeError:  # the interpreter is shutting down: the call compiles it, if it must
            return


def _prepare(prepare) -> None:
    try:
        got = prepare()
    except Exception:  # noqa: BLE001 - only time is at stake: the call makes it then
        return
    if got is None:
        return
    key, make, compile_ = got
    with _lock:
        if key in _lru or key in _pending:
            return
        event = _pending[key] = threading.Event()
    try:
        compile_(_keep(key, make()))
    except Exception:  # noqa: BLE001
        with _lock:
            _lru.pop(key, None)
    finally:
        with _lock:
            _pending.pop(key, None)
        event.set()


def wait_ahead() -> None:
    """Start what :func:`ahead` queued and wait until every program being prepared is ready (tests, benchmarks)."""
    start_ahead()
    if _ahead["pool"] is not None:  # one worker, first in first out: done with all before this
        _ahead["pool"].submit(lambda: None).result()


def _shrink(limit: int) -> list:
    """Remove least recently used entries past ``limit`` (caller holds the lock); the removed ones."""
    out = []
    while len(_lru) > limit:
        out.append(_lru.popitem(last=False)[1])
    return out


def _signature(tree, weak: bool = False) -> tuple:
    """What of the arguments decides the compiled program: their tree structure and the shape
    and dtype of each array leaf (the type of any other leaf); ``weak``: each array's weak type
    too (for a key that is the program itself, ``_programs._program``).

    Without ``weak`` it only chooses which wrapper runs the call (the wrapper's own jit cache
    checks the exact types, weak types included), so it need not be complete, only cheap
    and hashable: a few microseconds for the engine's statistics.
    """
    leaves, treedef = _flatten(tree)
    if weak:
        return treedef, tuple((x.shape, x.dtype, isinstance(x, _Tracer), getattr(x, "weak_type", False))
                              if hasattr(x, "dtype") else type(x) for x in leaves)
    return treedef, tuple((x.shape, x.dtype, isinstance(x, _Tracer)) if hasattr(x, "dtype") else type(x)
                          for x in leaves)


def _flatten(tree):
    import jax

    global _flatten, _Tracer
    _Tracer = jax.core.Tracer
    _flatten = jax.tree.flatten  # bound on first use: importing this module does not load JAX
    return _flatten(tree)


class _Tracer:  # replaced by jax.core.Tracer when JAX is first used (see _flatten)
    pass


# ---- compile options: cheaper code generation for small programs ---------------------------

SMALL_PROGRAM_BYTES = 1 << 18
"""Array arguments up to this size in all make a *small* program (see :func:`compile_options`)."""

_CHEAP_CODEGEN = {"xla_cpu_use_fusion_emitters": False}
_codegen_state: dict = {}  # option names -> whether this XLA takes them


def compile_options(nbytes: int, options: dict | None = None) -> dict | None:
    """XLA compile options for a program whose array arguments take ``nbytes``: ``options``,
    plus XLA:CPU's classic loop emitters (``xla_cpu_use_fusion_emitters=False``) for a small
    program on the CPU.

    Why: a fresh process spends most of a model's first fit in XLA:CPU compiling, and
    the default fusion emitters compile every fusion as an LLVM module of its own (a
    sleepstudy fit: ~170 of them). The classic emitters compile the same program in
    ~40 % less time (sleepstudy's fit program 2.4–3.0 → 1.3–1.75 s; issue 12) with the
    same results. At run time they are as fast on small arrays, but were up to ~20–40 %
    slower over large ones in some runs (100k-row fits), where one compile is paid
    against many runs: hence the size bound (the statistics of a few thousand groups).
    Other backends, and an XLA that does not know the option (checked once), get
    ``options`` unchanged.
    """
    base = dict(options or {})
    if nbytes > SMALL_PROGRAM_BYTES or not _cheap_codegen_available():
        return base or None
    return {**_CHEAP_CODEGEN, **base}


def _cheap_codegen_available() -> bool:
    return _known(_CHEAP_CODEGEN)


_SMALL_DOTS = {"xla_cpu_experimental_ynn_fusion_type": ""}
"""Added to a small program's *optimized* compile (see :func:`tiered`): XLA:CPU's YNNPACK
fusions off. XLA hands dot products to YNNPACK as library calls of their own; in a Newton
loop with an autodiff Hessian of 2 × 2 to 4 × 4 blocks (a residual structure's fit: 47 of
them per evaluation) each call costs more than the product. Measured warm, both programs in
one process, alternating (issue 15): the AR(1) sleepstudy fit's program 1.11 → 0.93 ms,
plain sleepstudy's 0.32 → 0.30 ms, Penicillin's 0.93 → 0.87 ms, the classroom nested fit
0.97 → 1.00 ms (noise). The level-0 programs are left as they are: there they ran no faster
(AR(1) 6 % slower) and compiled in the same time."""


def _known(options: dict) -> bool:
    """Whether the default backend is the CPU and its XLA accepts ``options`` (checked once
    per set: an XLA without an option refuses it at compile time)."""
    key = tuple(sorted(options))
    if key not in _codegen_state:
        import jax

        ok = jax.default_backend() == "cpu"
        if ok:
            try:
                jax.jit(lambda x: x + 1, compiler_options=options).lower(1.0).compile()
            except Exception:  # noqa: BLE001 - only the compile or run time is at stake
                ok = False
        _codegen_state[key] = ok
    return _codegen_state[key]


def _optimized(chosen: dict | None) -> dict | None:
    """A small program's options for its fully optimized compile: :data:`_SMALL_DOTS` under
    ``chosen`` (a kernel's own options win)."""
    if not _known(_SMALL_DOTS):
        return chosen
    return {**_SMALL_DOTS, **(chosen or {})}


def nbytes_of(shapes_dtypes) -> int:
    """Bytes of arrays given as (shape, dtype) pairs."""
    import numpy as np

    return sum(math.prod(shape) * np.dtype(dtype).itemsize for shape, dtype in shapes_dtypes)


# ---- tiered compilation: small programs start quick, and are optimized once they are busy ----

TIER_UP_CALLS = 12
"""The call on which a small program is compiled again with XLA's full optimization (see :class:`Tiered`)."""

QUICK_COMPILE = {
    "xla_backend_optimization_level": 0,
    "xla_disable_hlo_passes": "while-loop-invariant-code-motion,simplify-while-loops",
}
"""XLA options for a program compiled to run a few times (a small program's first tier, the
inference kernels): the backend at optimization level 0, and XLA's two while-loop passes off.

Why the passes: the engine's programs are Newton loops, and XLA runs its loop-invariant code
motion and loop simplifier to a fixed point after every round of algebraic simplification
(16 times each for Penicillin's crossed fit, ~130 ms of its 1.05 s compile). Off, the eleven
largest programs of the course session compiled in 5.0 s instead of 5.7 s (CPU 6.2–6.4 s
instead of 6.6–7.9 s; four rounds, alternating, one process) and ran as fast to noise at the
first tier (medians of 8 fits in two processes each: classroom nested fit 4.84 / 4.66 ms
before, 4.97 / 7.42 after; Penicillin 3.63 / 4.11 → 3.51 / 3.60 ms), with the same criterion
to all printed digits. Hoisting is an optimization only, so the results do not depend on it;
the optimized tier keeps both passes."""


def tiered(make, nbytes: int, options: dict | None = None, tier: bool | str = True):
    """The program ``make(compile options)`` (a ``jax.jit`` callable) for arguments of
    ``nbytes``, with :func:`compile_options`; a small program on the CPU whose ``options``
    do not choose an optimization level themselves is :class:`Tiered`, unless ``tier`` is
    False (a kernel made to be run many times over: optimized from the start) or ``"once"``
    (a kernel a caller runs a handful of times, each run long: compiled once, at the quick
    tier — the profile's). Its fully optimized compile, tiered or not, adds
    :data:`_SMALL_DOTS`. A large program keeps the default options, whatever ``tier`` says."""
    chosen = compile_options(nbytes, options)
    if nbytes > SMALL_PROGRAM_BYTES or not _cheap_codegen_available():
        return make(chosen)
    if "xla_backend_optimization_level" in (options or {}):
        return make(chosen)  # a level of its own: compiled once, as asked
    if tier == "once":
        return make({**(chosen or {}), **QUICK_COMPILE})
    if not tier:
        return make(_optimized(chosen))
    return Tiered(make, chosen)


class Tiered:
    """A small program compiled first at XLA's backend optimization level 0 (``options``
    plus :data:`QUICK_COMPILE`) and, on its :data:`TIER_UP_CALLS`-th call, again with full optimization
    (``options`` plus :data:`_SMALL_DOTS`, whose availability is checked then, not on a
    fresh process's first fit: the check compiles a program of its own, ~20–50 ms).

    Why: a fresh process spends most of a model's first fit compiling. At level 0 the
    engine's small programs compile in about a third less time (a course session's fit
    programs 7.9 → 5.2 s of XLA compile; issue 12) but run 1.1–2× slower (warm Hsb82 slope model
    3.0 → 5.8 ms). A program that a session calls a few times (a fit, its ML refit)
    is done before full optimization would have paid (the busiest program of the
    course-session benchmark, the nested classroom fit, runs 8 times); one called
    in a loop (a simulation, a bootstrap, a benchmark) gets the optimized program
    from its twelfth call on, compiled once then (or read from the persistent
    compilation cache). Level 0 and full optimization give the same results to
    rounding.
    """

    __slots__ = ("_make", "_options", "_program", "_calls", "optimized", "__weakref__")

    def __init__(self, make, options: dict | None):
        self._make, self._options, self._calls = make, options, 0
        self.optimized = False  # whether calls run the fully optimized program
        self._program = make({**(options or {}), **QUICK_COMPILE})

    def __call__(self, *args, **kwargs):
        if not self.optimized:
            self._calls += 1
            if self._calls >= TIER_UP_CALLS:  # (two threads may both compile it: harmless)
                self.optimized = True
                self._program = self._make(_optimized(self._options))  # the quick one is dropped, and freed
        return self._program(*args, **kwargs)

    def lower(self, *args, **kwargs):
        """The current tier's program lowered for ``args`` (does not count as a call): its
        ``compile()`` puts the executable where calls find it."""
        return self._program.lower(*args, **kwargs)

    def _cache_size(self) -> int:
        return self._program._cache_size()


class BoundedJit:
    """``jax.jit(fn, **options)`` whose programs live in the shared LRU (see the module docstring).

    Called like the jitted function (static arguments by name or position);
    also traceable inside another ``jit``, ``vmap`` or ``grad``.
    """

    def __init__(self, fn, options: dict):
        self.fn = fn
        self.options = dict(options)
        self.tiered = self.options.pop("tiered", True)
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
        key = self.key(args, kwargs)
        return cached(key, lambda: self._make(key[2][1]))

    def _make(self, leaves=None):
        """A fresh ``jax.jit`` wrapper; ``leaves`` (the key's (shape, dtype, traced) triples)
        choose its compile options and tiers (:func:`tiered`) when the call is not traced:
        only a top-level ``jit`` takes compile options."""
        import jax

        fn, own = self.fn, self.options.get("compiler_options")

        def make(compiler_options):
            # A fresh function object per wrapper: JAX keys its caches on it, so dropping
            # the wrapper releases everything compiled for it.
            @functools.wraps(fn)
            def program(*args, **kwargs):
                return fn(*args, **kwargs)

            options = {k: v for k, v in self.options.items() if k != "compiler_options"}
            if compiler_options:
                options["compiler_options"] = compiler_options
            return jax.jit(program, **options)

        arrays = [x for x in (leaves or ()) if isinstance(x, tuple)]
        if leaves is None or any(traced for _, _, traced in arrays):
            return make(own)
        return tiered(make, nbytes_of((shape, dtype) for shape, dtype, _ in arrays), own, self.tiered)

    def _cache_size(self) -> int:
        """Executables alive for this kernel (as ``jax.jit``'s ``_cache_size``, over its keys)."""
        return sum(p._cache_size() for k, p in list(_lru.items()) if k[0] is self)

    def __repr__(self) -> str:
        return f"<bounded jit {getattr(self.fn, '__qualname__', self.fn)!r}>"


def jit(fn=None, **options):
    """``jax.jit`` for jaxmlm's kernels, with programs kept in the bounded LRU.

    Use as ``@jit``, ``@jit(static_argnames=...)`` or ``jit(fn, **options)``;
    ``options`` are ``jax.jit``'s, and ``tiered=False`` for a kernel made to be run many
    times over (its small programs are then optimized from the start; see :class:`Tiered`),
    ``tiered="once"`` for one run a handful of times (its small programs compiled once, quick).
    """
    if fn is None:
        return lambda f: BoundedJit(f, options)
    return BoundedJit(fn, options)
