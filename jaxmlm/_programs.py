"""A disk cache of exported programs: run a jitted kernel in a fresh process without tracing it.

JAX's persistent compilation cache saves the *compiling* of a program, but every
new process still traces the Python function to a jaxpr and lowers it to
StableHLO, only to find the cache key: for the engine's Newton loop and the
second-order derivatives of the inference kernels that costs about half a
second per process. :mod:`jax.export` serializes the lowered program instead;
a later process deserializes it and calls it (the call is compiled, or found in
the persistent compilation cache, as usual), skipping the tracing.

On where jaxmlm's cache is on (``_cache.py``: beside JAX's persistent
compilation cache, in the user's cache directory unless turned off) and
``jax.export``'s serialization is available (it needs the ``flatbuffers``
package). When off, :func:`call` is ``fn(*args, **static)``.

A program file is keyed by everything that decides the lowered program: the
function, its static arguments, the shapes, dtypes and weak types of its array
arguments and their tree structure, the JAX and jaxlib versions, the backend,
the float64 mode and the source of this package (any edit to it invalidates
every entry). Anything that goes wrong (a missing or corrupt file, a type the
serialization does not know) falls back to the ordinary jitted call.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import os
import tempfile
from pathlib import Path

from . import _compiled

__all__ = ["enable", "disable", "enabled", "call", "ahead"]

_SUFFIX = ".jaxexport"
_state: dict = {"dir": None}


def enable(path) -> bool:
    """Keep exported programs under ``path``; False (and stay off) if that is impossible."""
    try:
        import flatbuffers  # noqa: F401  (jax.export's serialization format)
        from jax import export  # noqa: F401
    except ImportError:
        return False
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    _state["dir"] = path
    return True


def disable() -> None:
    """Stop using the program cache (programs already loaded stay in ``_compiled``'s LRU until dropped)."""
    _state["dir"] = None


def enabled() -> bool:
    return _state["dir"] is not None


def call(fn, args: tuple, static: dict | None = None, *, compiler_options: dict | None = None):
    """``fn(*args, **static)`` for a ``jax.jit`` function, through the program cache when enabled.

    ``args`` are the traced (array) arguments, in order; ``static`` the
    function's static arguments by name. ``compiler_options`` are passed to
    the jit of the deserialized program (give the ones ``fn`` was jitted with).
    """
    static = dict(static or {})
    if _state["dir"] is None:
        _compiled.start_ahead()
        return fn(*args, **static)
    try:
        prog = _program(fn, args, static, compiler_options)
    except Exception:  # noqa: BLE001 - the cache only ever costs speed, never a result
        _compiled.start_ahead()
        return fn(*args, **static)
    _compiled.start_ahead()  # traced: what was asked ahead can trace while this one compiles
    try:
        return prog(*args)
    except Exception:  # noqa: BLE001
        return fn(*args, **static)


# ---- internals ---------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _source_digest() -> str:
    """Hash of this package's Python sources: an edit anywhere invalidates every program."""
    h = hashlib.sha256()
    here = Path(__file__).resolve().parent
    for p in sorted(here.glob("*.py")):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def _key(fn, args, static, compiler_options) -> tuple[str, str]:
    import jax
    import jaxlib

    leaves, tree = jax.tree.flatten(args)
    avals = []
    for x in leaves:
        a = jax.typeof(x)
        avals.append((tuple(a.shape), str(a.dtype), bool(getattr(a, "weak_type", False))))
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", "program")
    desc = repr(
        (
            getattr(fn, "__module__", ""),
            name,
            sorted((k, repr(v)) for k, v in static.items()),
            str(tree),
            avals,
            sorted((compiler_options or {}).items()),
            jax.__version__,
            jaxlib.__version__,
            jax.default_backend(),
            bool(jax.config.jax_enable_x64),
            jax.config.jax_default_matmul_precision,
            _source_digest(),
        )
    )
    safe = "".join(c if c.isalnum() or c in "_-" else "_" for c in name)[:60]
    return safe, hashlib.sha256(desc.encode()).hexdigest()[:40]


def _namedtuple_types(treedef, out: dict) -> None:
    """Every NamedTuple class in a pytree structure (they must be registered to (de)serialize)."""
    data = treedef.node_data()
    if data is not None:
        cls = data[0]
        if isinstance(cls, type) and issubclass(cls, tuple) and hasattr(cls, "_fields"):
            out[f"{cls.__module__}:{cls.__qualname__}"] = cls
    for child in treedef.children():
        _namedtuple_types(child, out)


def _register(types: dict) -> None:
    from jax import export

    for name, cls in types.items():
        try:
            export.register_namedtuple_serialization(cls, serialized_name=name)
        except ValueError:  # already registered (by us, earlier in this process)
            pass


def _import_types(names) -> dict:
    types = {}
    for name in names:
        mod, _, qual = name.partition(":")
        obj = importlib.import_module(mod)
        for part in qual.split("."):
            obj = getattr(obj, part)
        types[name] = obj
    return types


def _default_device():
    import jax

    device = jax.config.jax_default_device  # a Device, a platform's name, or None
    return device if isinstance(device, jax.Device) else jax.devices(device)[0]


def _jit_call(exp, compiler_options, tiered: bool = True, device=None):
    """``exp.call`` jitted, with its arguments' placement fixed: one device, ``device`` (the
    default one when the program was loaded; :func:`_program` keys loaded programs by it).

    Why: an exported program's outputs are *committed* to their device, while host arrays and
    the outputs of ordinary jitted programs are not, and ``jax.jit`` compiles a program once
    for each pattern of committed arguments it meets. Statistics made by one program
    (committed) and by another (partly host arrays) then compiled the same Satterthwaite
    program twice (a classroom session: 0.39 s). With the placement given, every pattern
    runs the one compiled program."""
    import jax

    placed = {}
    if exp.nr_devices == 1 and device is not None:
        placed["in_shardings"] = jax.sharding.SingleDeviceSharding(device)

    def make(options):
        return jax.jit(exp.call, **placed, **({"compiler_options": options} if options else {}))

    return _compiled.tiered(make, _compiled.nbytes_of((a.shape, a.dtype) for a in exp.in_avals),
                            compiler_options, tiered)


def _program(fn, args, static, compiler_options):
    """The loaded program for this call, kept in ``_compiled``'s bounded LRU (made if new).

    The LRU entry is keyed by what decides the program within this process — the function, its
    static arguments, its arguments' tree, shapes, dtypes and weak types, the compile options,
    the backend, the float64 mode, the matmul precision and the device — read directly from the
    objects; the file's key (:func:`_key`, a digest of the same and of the versions and sources,
    which do not change within a process) is made only when the entry is new. Why: the digest
    costs ~90 µs, a tenth of a warm sleepstudy fit, on every call."""
    return _compiled.cached(*_entry(fn, args, static, compiler_options))


def _entry(fn, args, static, compiler_options):
    """(LRU key, ``make``) of :func:`_program`."""
    import jax

    device = _default_device()
    here = ("exported", fn, tuple(sorted(static.items())), _compiled._signature(args, weak=True),
            tuple(sorted((compiler_options or {}).items())),
            jax.default_backend(), bool(jax.config.jax_enable_x64), jax.config.jax_default_matmul_precision, device)
    return here, lambda: _load(fn, args, static, compiler_options, *_key(fn, args, static, compiler_options), device)


def ahead(fn, arguments, *, compiler_options: dict | None = None) -> bool:
    """Prepare the program of a call ``call(fn, args, static, compiler_options=...)`` expected
    soon, on a background thread (:func:`jaxmlm._compiled.ahead`): through the program cache
    when it is on, else ``fn``'s own (a :func:`jaxmlm._compiled.jit` kernel). ``arguments()``
    gives (args, static), on that thread; args may be ``jax.ShapeDtypeStruct``s: only their
    shapes and dtypes matter. True if queued."""

    def prepare():
        args, static = arguments()
        static = dict(static or {})
        if _state["dir"] is not None:
            key, make = _entry(fn, args, static, compiler_options)
            return key, make, lambda prog: prog.lower(*args).compile()
        if not isinstance(fn, _compiled.BoundedJit):
            return None
        key = fn.key(args, static)
        return key, lambda: fn._make(key[2][1]), lambda prog: prog.lower(*args, **static).compile()

    return _compiled.ahead(prepare)


def _exportable(fn):
    """A ``jax.jit`` function to export ``fn`` with: a bounded kernel's fresh wrapper (not kept
    in the LRU: exporting only traces it), or ``fn`` itself."""
    return fn._make() if isinstance(fn, _compiled.BoundedJit) else fn


def _load(fn, args, static, compiler_options, safe, key, device=None):
    from jax import export

    path = _state["dir"] / f"{safe}-{key}{_SUFFIX}"
    exp = None
    try:
        blob = path.read_bytes()
    except OSError:
        blob = None
    if blob is not None:
        try:
            head, _, body = blob.partition(b"\n")
            _register(_import_types(json.loads(head)))
            exp = export.deserialize(bytearray(body))
        except Exception:  # noqa: BLE001 - corrupt or foreign file: export afresh
            exp = None
    if exp is None:
        exp = export.export(_exportable(fn))(*args, **static)
        types: dict = {}
        _namedtuple_types(exp.in_tree, types)
        _namedtuple_types(exp.out_tree, types)
        _register(types)
        body = exp.serialize()
        _write(path, json.dumps(sorted(types)).encode() + b"\n" + bytes(body))
    return _jit_call(exp, compiler_options, getattr(fn, "tiered", True), device)


def _write(path: Path, data: bytes) -> None:
    """Write atomically (concurrent processes may race for the same entry); ignore failures."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=_SUFFIX)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
    except OSError:
        pass
