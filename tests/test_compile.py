"""A second fit of the same model shape must not recompile anything."""

import jax.monitoring

import jaxmlm

_COMPILES: list[str] = []
jax.monitoring.register_event_duration_secs_listener(
    lambda name, *a, **k: _COMPILES.append(name) if name == "/jax/core/compile/backend_compile_duration" else None
)


def test_second_fit_of_same_shape_does_not_recompile():
    d = jaxmlm.load_example("sleepstudy")
    m1 = jaxmlm.lmer("Reaction ~ Days + (Days | Subject)", d)
    before = len(_COMPILES)
    d2 = d.copy()
    d2["Reaction"] = d2["Reaction"].to_numpy()[::-1] * 1.5  # new data, same shape
    m2 = jaxmlm.lmer("Reaction ~ Days + (Days | Subject)", d2)
    m3 = jaxmlm.lmer("Reaction ~ Days + (Days | Subject)", d, REML=False)  # ML shares the program
    assert len(_COMPILES) == before, f"{len(_COMPILES) - before} recompilation(s)"
    assert m2.objective != m1.objective and m3.objective != m1.objective


def test_bucketed_group_counts_share_compiled_code():
    """17 and 18 subjects pad to the same bucket: no new compilation."""
    d = jaxmlm.load_example("sleepstudy")
    jaxmlm.lmer("Reaction ~ Days + (Days | Subject)", d)
    before = len(_COMPILES)
    sub = d[d["Subject"] != "308"].copy()
    sub["Subject"] = sub["Subject"].cat.remove_unused_categories()
    m = jaxmlm.lmer("Reaction ~ Days + (Days | Subject)", sub)
    assert m.ngroups == {"Subject": 17}
    assert len(_COMPILES) == before
