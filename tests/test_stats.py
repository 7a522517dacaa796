"""Sufficient statistics: equal to the Gram blocks of [Z X y] computed directly, whatever the chunking."""

import jax.numpy as jnp
import numpy as np
import pytest
from _dense import dense_z_lambda
from conftest import CASES, case_data

from jaxmlm._frontend import build_design
from jaxmlm._objective import deviance
from jaxmlm._solution import solve
from jaxmlm._stats import a22_dense, bucket, fixed_width, sufficient_stats, widen


def test_bucket_grid():
    vals = [bucket(n) for n in range(1, 5000)]
    assert all(v >= n for n, v in zip(range(1, 5000), vals))
    assert all(v <= max(16, 1.125 * n) for n, v in zip(range(1, 5000), vals))
    assert len(set(vals)) < 120  # few distinct shapes → few compilations


@pytest.mark.parametrize("cid", ["sleepstudy_rs", "penicillin_crossed", "pastes_nested", "crossed_item_slope"])
def test_gram_blocks_match_direct_products(cid):
    c = CASES[cid]
    d = build_design(c["formula"], case_data(c))
    layout, st, _ = sufficient_stats(d)
    Z, _ = dense_z_lambda(d, np.ones(layout.ntheta))
    W = np.column_stack([d.X, d.y - d.X @ np.asarray(st.beta0)])
    np.testing.assert_allclose(np.asarray(st.WW), W.T @ W, rtol=1e-12, atol=1e-10)
    b1 = d.blocks[0]
    k1, l1 = b1.k, b1.nlev
    ZtZ, ZtW = Z.T @ Z, Z.T @ W
    A11 = np.asarray(st.A11)
    for g in range(l1):
        np.testing.assert_allclose(A11[g], ZtZ[g * k1 : (g + 1) * k1, g * k1 : (g + 1) * k1], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(np.asarray(st.Z1W)[g], ZtW[g * k1 : (g + 1) * k1], rtol=1e-12, atol=1e-12)
    assert np.all(A11[l1:] == 0), "padded levels must be empty"
    if layout.qr:
        # Map the engine's (padded) rest rows back onto the dense Z's columns.
        cols, zoff = [], l1 * k1
        for (off, lev, k), blk in zip(layout.rest, d.blocks[1:]):
            cols += list(range(zoff, zoff + blk.nlev * k))
            zoff += blk.nlev * k
        rows = np.concatenate([np.arange(off, off + blk.nlev * k) for (off, lev, k), blk in zip(layout.rest, d.blocks[1:])])
        A22 = np.asarray(a22_dense(st.A22))
        np.testing.assert_allclose(A22[np.ix_(rows, rows)], ZtZ[np.ix_(cols, cols)], atol=1e-12)
        np.testing.assert_allclose(np.asarray(st.ZrW)[rows], ZtW[cols], atol=1e-12)
        A21 = np.zeros((layout.qr, l1 * k1))
        pa, pg = np.asarray(st.pair_a), np.asarray(st.pair_g)
        for e, v in enumerate(np.asarray(st.A21)):
            A21[pa[e], pg[e] * k1 : (pg[e] + 1) * k1] += v
        np.testing.assert_allclose(A21[rows][:, : l1 * k1], ZtZ[np.ix_(cols, range(l1 * k1))], atol=1e-12)


@pytest.mark.parametrize("cid", ["sleepstudy_rs", "crossed_subj_slope"])
def test_chunked_pass_equals_single_pass(cid):
    c = CASES[cid]
    d = build_design(c["formula"], case_data(c))
    lay_a, st_a, _ = sufficient_stats(d)
    lay_b, st_b, _ = sufficient_stats(d, chunk_rows=64)
    assert lay_a == lay_b
    for a, b in zip(st_a, st_b):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-10)
    theta = jnp.asarray(np.linspace(0.3, 1.1, lay_a.ntheta))
    assert float(deviance(theta, st_a, 1.0, lay_a)) == pytest.approx(float(deviance(theta, st_b, 1.0, lay_b)), rel=1e-12)


def test_sparse_and_dense_bbt_agree():
    """Both ways of forming B Bᵀ for the fill-in block give the same criterion."""
    c = CASES["crossed_subj_slope"]
    d = build_design(c["formula"], case_data(c))
    lay, st, _ = sufficient_stats(d)
    other = "dense" if lay.bbt == "sparse" else "sparse"
    if other == "sparse":
        from jaxmlm._stats import _pair_products

        pa, pg = np.asarray(st.pair_a), np.asarray(st.pair_g)
        real = np.flatnonzero(np.abs(np.asarray(st.A21)).sum(1) > 0)
        e1, e2, t = _pair_products(pa[real], pg[real], lay.qr)
        st2 = st._replace(bb_e1=jnp.asarray(real[e1]), bb_e2=jnp.asarray(real[e2]), bb_t=jnp.asarray(t.astype(np.int32)))
    else:
        st2 = st
    lay2 = lay._replace(bbt=other)
    theta = jnp.asarray(np.linspace(0.4, 1.2, lay.ntheta))
    assert float(deviance(theta, st, 1.0, lay)) == pytest.approx(float(deviance(theta, st2, 1.0, lay2)), rel=1e-12)


def test_pair_list_is_every_lower_pair_of_a_level():
    """_pair_products against brute force: all (e, e') of one block-1 level with a_e ≥ a_e', in
    (g, a_e, a_e') order, targets a_e·q_r + a_e', padding; _pair_count its length."""
    from jaxmlm._stats import _pair_count, _pair_products

    rng = np.random.default_rng(7)
    for trial in range(60):
        qr, l1 = int(rng.integers(1, 30)), int(rng.integers(1, 25))
        keys = np.unique(rng.integers(0, qr * l1, int(rng.integers(1, 200))))
        perm = rng.permutation(len(keys)) if trial % 2 else np.arange(len(keys))  # sorted or not
        pa, pg = (keys // l1).astype(np.int32)[perm], (keys % l1).astype(np.int32)[perm]
        ref = sorted(
            (int(pg[i]), int(pa[i]), int(pa[j]), i, j)
            for i in range(len(pa)) for j in range(len(pa))
            if pg[i] == pg[j] and pa[i] >= pa[j]
        )
        e1, e2, t = _pair_products(pa, pg, qr)
        assert _pair_count(pg) == len(e1) == len(ref)
        assert [(i, j) for *_, i, j in ref] == list(zip(e1.tolist(), e2.tolist()))
        np.testing.assert_array_equal(t, pa[e1].astype(np.int64) * qr + pa[e2])
        size = len(ref) + 5
        f1, f2, ft = _pair_products(pa, pg, qr, size=size, pad=999)
        assert f1.dtype == f2.dtype == np.int32 and len(f1) == size
        np.testing.assert_array_equal(f1[: len(e1)], e1)
        np.testing.assert_array_equal(f2[: len(e2)], e2)
        np.testing.assert_array_equal(ft[: len(t)], t)
        assert np.all(f1[len(e1):] == 999) and np.all(f2[len(e1):] == 999) and np.all(ft[len(e1):] == 0)


@pytest.mark.parametrize("cid", ["sleepstudy_rs", "penicillin_crossed", "pastes_nested", "nested_slash", "factors_na",
                                 "nested_explicit", "rank_deficient", "slopes3_corr", "crossed_item_slope"])
@pytest.mark.filterwarnings("ignore::jaxmlm.RankDeficiencyWarning")
def test_one_chunk_program_makes_the_pass_statistics(cid):
    """The pass run inside a caller's program (one_chunk + stats_from_chunk) gives the
    statistics and layout of sufficient_stats; above the smallest chunk (over 256 rows), and for
    nested designs, with X padded to the programs' common width as widen pads it (narrow takes
    them back). Data over one chunk are left to sufficient_stats."""
    import jax

    from jaxmlm._stats import ONE_PROGRAM_CHUNKS, _widen_arrays, is_nested, narrow, one_chunk, stats_from_chunk

    c = CASES[cid]
    d = build_design(c["formula"], case_data(c))
    layout, st, _ = sufficient_stats(d)
    oc = one_chunk(d)
    rows = min(size for size in ONE_PROGRAM_CHUNKS if d.n <= size)
    padded = rows > 256 or is_nested(layout)  # X at the fit programs' common width (OneChunk)
    assert oc.layout == layout and oc.wide == layout._replace(p=fixed_width(layout.p) if padded else layout.p)
    assert oc.floats.dtype == np.float64 and oc.ints.dtype.kind == "i"
    st_b = jax.jit(stats_from_chunk, static_argnames=("spec", "layout"))(oc.floats, oc.ints, spec=oc.spec, layout=oc.wide)
    Z1W, WW, ZrW, beta0 = _widen_arrays(st.Z1W, st.WW, st.ZrW, st.beta0, pw=oc.wide.p)  # the staged path's widening
    wide = st._replace(Z1W=Z1W, WW=WW, ZrW=ZrW, beta0=beta0)
    for expect, got in [(wide, st_b), (st, narrow(st_b, layout))]:
        for name, a, b in zip(st._fields, expect, got):
            assert np.asarray(a).dtype == np.asarray(b).dtype and np.shape(a) == np.shape(b), name
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-13, atol=1e-9, err_msg=name)
    assert float(st_b.p) == layout.p  # the count of fixed effects, not X's width
    # every data size up to a chunk size: one program (the smallest chunk that holds the rows)
    assert oc.spec[0][1][0] == rows
    assert one_chunk(d, rows=d.n - 1) is None


def test_fixed_width_grid():
    widths = [fixed_width(p) for p in range(40)]
    assert all(w >= p for p, w in enumerate(widths))
    assert sorted(set(widths[:16])) == [3, 7, 15]  # W's p + 1 columns: 4, 8 or 16
    assert widths[16:] == list(range(16, 40))  # wider designs keep their width


@pytest.mark.parametrize("cid", ["sleepstudy_rs", "hsb_null", "sleepstudy_nointercept", "nlschools_ri",
                                 "pastes_nested", "penicillin_crossed", "crossed_item_slope"])
def test_widened_statistics_give_the_same_criterion_and_estimates(cid):
    """Zero fixed-effect columns with a unit diagonal leave the criterion (REML and ML, at any θ),
    σ̂, b̂ and the real columns' β̂ and vcov unchanged; the padding β̂ are 0."""
    c = CASES[cid]
    layout, st, _ = sufficient_stats(build_design(c["formula"], case_data(c)))
    wst, wide = widen(st, layout)
    assert wide.p == fixed_width(layout.p) > layout.p and float(wst.p) == layout.p
    rng = np.random.default_rng(3)
    for theta in (np.ones(layout.ntheta), rng.uniform(0.1, 2.0, layout.ntheta)):
        for reml in (1.0, 0.0):
            d0 = float(deviance(jnp.asarray(theta), st, jnp.asarray(reml), layout))
            d1 = float(deviance(jnp.asarray(theta), wst, jnp.asarray(reml), wide))
            assert abs(d1 - d0) <= 1e-9 * abs(d0)
            s0 = solve(jnp.asarray(theta), st, jnp.asarray(reml), layout)
            s1 = solve(jnp.asarray(theta), wst, jnp.asarray(reml), wide)
            p = layout.p
            np.testing.assert_allclose(np.asarray(s1.beta)[:p], np.asarray(s0.beta), rtol=1e-10, atol=1e-12)
            np.testing.assert_array_equal(np.asarray(s1.beta)[p:], 0.0)
            np.testing.assert_allclose(np.asarray(s1.vcov)[:p, :p], np.asarray(s0.vcov), rtol=1e-9, atol=1e-14)
            np.testing.assert_allclose(float(s1.sigma), float(s0.sigma), rtol=1e-11)
            np.testing.assert_allclose(np.asarray(s1.b1), np.asarray(s0.b1), rtol=1e-9, atol=1e-11)
            np.testing.assert_allclose(np.asarray(s1.b_rest), np.asarray(s0.b_rest), rtol=1e-9, atol=1e-11)
