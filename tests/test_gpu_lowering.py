"""The engine's programs lower for GPUs: nothing host-only in the kernels.

No GPU is needed: ``jax.export`` lowers a program for another platform without
running it. A program that used a host callback or a CPU-only kernel (LAPACK's
``lapack_*`` targets) would fail to lower or show such a call. On a GPU the same
programs pick their solvers by platform (cuSOLVER/hipSOLVER for Cholesky and eigh).
Running there is another matter, checked only where a GPU is at hand (README).
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import CASES, case_data
from jax import export

import jaxmlm
from jaxmlm._frontend import build_design
from jaxmlm._inference import theta_derivatives
from jaxmlm._optimize import diagonal_mask
from jaxmlm._refit import _refit_chunk
from jaxmlm._stats import response_ops
from jaxmlm._fit import fit_and_solve as _fit_and_solve
from jaxmlm._fit import _pass_fit_and_solve
from jaxmlm._results import _pass
from jaxmlm._stats import _chunk_stats, _chunks, _pass_inputs, one_chunk, sufficient_stats

PLATFORMS = ("cuda", "rocm")


def _lowered(fn, *args, **static) -> str:
    from jaxmlm import _compiled

    # A bounded kernel (_compiled.jit) exports through a fresh jax.jit wrapper of its function.
    fn = fn._make() if isinstance(fn, _compiled.BoundedJit) else fn
    exp = export.export(fn, platforms=PLATFORMS)(*args, **static)
    assert exp.platforms == PLATFORMS
    return exp.mlir_module()


def _assert_device_only(text: str) -> None:
    targets = set(re.findall(r"custom_call @([\w.]+)", text)) | set(re.findall(r'call_target_name = "([\w.]+)"', text))
    host = {t for t in targets if t.startswith("lapack_") or "cpu" in t or "callback" in t}
    assert not host, f"host-only calls in a kernel: {sorted(host)}"


def _design(cid):
    c = CASES[cid]
    return build_design(c["formula"], case_data(c))


def test_one_program_fit_lowers_for_gpus():
    oc = one_chunk(_design("sleepstudy_rs"))
    theta0 = np.where(diagonal_mask(oc.layout), 1.0, 0.0)
    text = _lowered(_pass_fit_and_solve, theta0, oc.floats, oc.ints, np.asarray(1.0), np.int32(200), np.asarray(False),
                    spec=oc.spec, layout=oc.wide, method="newton")
    _assert_device_only(text)
    assert "cusolver" in text and "hipsolver" in text  # the factorizations, per platform
    _assert_device_only(_lowered(_pass, oc.floats, oc.ints, spec=oc.spec, layout=oc.wide))
    # a nested design's one program, with its moment start
    on = one_chunk(_design("pastes_nested"))
    theta0 = np.where(diagonal_mask(on.layout), 1.0, 0.0)
    _assert_device_only(_lowered(_pass_fit_and_solve, theta0, on.floats, on.ints, np.asarray(1.0), np.int32(200),
                                 np.asarray(True), spec=on.spec, layout=on.wide, method="newton",
                                 intercepts=(True, True)))


@pytest.mark.parametrize("method", ["newton", "ai", "bfgs"])
def test_crossed_fit_and_the_pass_lower_for_gpus(method):
    d = _design("penicillin_crossed")
    layout, stats, _ = sufficient_stats(d)
    assert layout.qr > 0
    theta0 = np.where(diagonal_mask(layout), 1.0, 0.0)
    _assert_device_only(_lowered(_fit_and_solve, theta0, stats, np.asarray(1.0), np.int32(200), layout=layout,
                                 method=method))
    if method == "newton":
        _, inp = _pass_inputs(d, 64)
        chunk = next(_chunks(inp))
        _assert_device_only(_lowered(_chunk_stats, None, *chunk, l1=inp.l1, qr=inp.qr, nnz=inp.nnz))


def test_batched_refits_and_inference_lower_for_gpus():
    m = jaxmlm.lmer("Reaction ~ Days + (Days | Subject)", jaxmlm.load_example("sleepstudy"))
    Y = np.tile(m.design.y, (4, 1))
    ops = response_ops(m.design, m.layout)
    _assert_device_only(_lowered(_refit_chunk, jnp.asarray(Y), jnp.asarray(m.theta), m.stats, ops, jnp.asarray(1.0),
                                 m.layout, max_iter=200))
    _assert_device_only(_lowered(theta_derivatives, jnp.asarray(m.theta), m.stats, jnp.asarray(1.0), layout=m.layout))


def test_the_check_sees_a_host_only_call():
    """The check itself: a LAPACK call lowered for the CPU is flagged."""
    text = export.export(jax.jit(jnp.linalg.cholesky), platforms=("cpu",))(np.eye(3)).mlir_module()
    with pytest.raises(AssertionError, match="lapack_"):
        _assert_device_only(text)
