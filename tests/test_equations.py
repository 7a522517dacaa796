"""m.equations() (jaxmlm/_equations.py): the model in the level-1 / level-2 notation of the course
notes and of Raudenbush & Bryk, as R's equatiomatic writes lme4 models.

The expected equations are written by hand from the model formulas and the data's design (which
predictor is constant within which grouping factor), not produced by the code. The numbers of
``estimates=True`` are checked against the published High School and Beyond fit of the course
notes (Model C) and against the model's own estimates at the printed rounding.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

import jaxmlm
from jaxmlm import DataError, FormulaError
from test_glmer import fitted as glmer_fitted


@pytest.fixture(scope="module")
def hsb():
    return jaxmlm.load_example("Hsb82")


@pytest.fixture(scope="module")
def classroom():
    return jaxmlm.load_example("classroom")


def _body(e) -> str:
    """The equations without the closing 'where ...' line."""
    return "\n".join(line for line in e.text.splitlines() if not line.startswith("where"))


def _balanced(tex: str) -> bool:
    depth = 0
    for piece in re.sub(r"\\[{}]", "", tex):  # escaped braces are text
        depth += piece == "{"
        depth -= piece == "}"
        if depth < 0:
            return False
    envs = re.findall(r"\\(begin|end)\{(\w+)\}", tex)
    stack = []
    for kind, name in envs:
        if kind == "begin":
            stack.append(name)
        elif not stack or stack.pop() != name:
            return False
    return depth == 0 and not stack


def test_random_intercept(hsb):
    m = jaxmlm.lmer("mAch ~ 1 + (1 | school)", hsb)
    e = m.equations()
    assert _body(e) == """\
Level 1:
  mAchᵢⱼ = β₀ⱼ + εᵢⱼ
Level 2:
  β₀ⱼ = γ₀₀ + u₀ⱼ
Composite:
  mAchᵢⱼ = γ₀₀ + u₀ⱼ + εᵢⱼ
Distributions:
  εᵢⱼ ~ N(0, σ²)
  u₀ⱼ ~ N(0, τ₀₀)"""
    assert e.text.splitlines()[-1] == "where i: observation (7185); j: school (160)"
    assert e.levels == 2 and e.note is None and str(e) == e.text
    assert e.latex == r"""\begin{aligned}
&\text{Level 1:} \\
\text{mAch}_{ij} &= \beta_{0j} + \varepsilon_{ij} \\
&\text{Level 2:} \\
\beta_{0j} &= \gamma_{00} + u_{0j} \\
&\text{Composite:} \\
\text{mAch}_{ij} &= \gamma_{00} + u_{0j} + \varepsilon_{ij} \\
&\text{Distributions:} \\
\varepsilon_{ij} &\sim N(0, \sigma^2) \\
u_{0j} &\sim N(0, \tau_{00}) \\
&\text{where }i \text{: observation (7185)},\ j \text{: school (160)}
\end{aligned}"""
    assert e._repr_latex_() == f"$$\n{e.latex}\n$$"
    # the notes' Model A: 12.64, σ² 39.148, τ00 8.614
    est = m.equations(estimates=True, digits=3)
    assert "  β₀ⱼ = 12.637 + u₀ⱼ" in est.text
    assert "εᵢⱼ ~ N(0, 39.148)" in est.text and "u₀ⱼ ~ N(0, 8.614)" in est.text


def test_random_slope_and_the_notes_model_c(hsb):
    m = jaxmlm.lmer("mAch ~ ses + (ses | school)", hsb)
    assert _body(m.equations()) == """\
Level 1:
  mAchᵢⱼ = β₀ⱼ + β₁ⱼ sesᵢⱼ + εᵢⱼ
Level 2:
  β₀ⱼ = γ₀₀ + u₀ⱼ
  β₁ⱼ = γ₁₀ + u₁ⱼ
Composite:
  mAchᵢⱼ = γ₀₀ + γ₁₀ sesᵢⱼ + u₀ⱼ + u₁ⱼ sesᵢⱼ + εᵢⱼ
Distributions:
          εᵢⱼ ~ N(0, σ²)
  (u₀ⱼ, u₁ⱼ)ᵀ ~ N(0, T),  T = [τ₀₀ τ₀₁; τ₀₁ τ₁₁]"""
    # the notes print 12.67 (0.19), 2.39 (0.12), σ² = 36.83 and G = [4.83 -0.15; -0.15 0.41]
    assert _body(m.equations(estimates=True)) == """\
Level 1:
  mAchᵢⱼ = β₀ⱼ + β₁ⱼ sesᵢⱼ + εᵢⱼ
Level 2:
  β₀ⱼ = 12.67 + u₀ⱼ
  β₁ⱼ = 2.39 + u₁ⱼ
Composite:
  mAchᵢⱼ = 12.67 + 2.39 sesᵢⱼ + u₀ⱼ + u₁ⱼ sesᵢⱼ + εᵢⱼ
Distributions:
          εᵢⱼ ~ N(0, 36.83)
  (u₀ⱼ, u₁ⱼ)ᵀ ~ N(0, T),  T = [4.83 -0.15; -0.15 0.41]"""
    tex = m.equations().latex
    assert (r"\begin{pmatrix} u_{0j} \\ u_{1j} \end{pmatrix} &\sim N\left(\mathbf{0}, \mathbf{T}\right),\quad "
            r"\mathbf{T} = \begin{pmatrix} \tau_{00} & \tau_{01} \\ \tau_{01} & \tau_{11} \end{pmatrix}") in tex


def test_uncorrelated_slope_has_a_diagonal_T(hsb):
    m = jaxmlm.lmer("mAch ~ ses + (ses || school)", hsb)
    text = m.equations().text
    assert "  β₁ⱼ = γ₁₀ + u₁ⱼ" in text
    assert "(u₀ⱼ, u₁ⱼ)ᵀ ~ N(0, T),  T = [τ₀₀ 0; 0 τ₁₁]" in text
    est = m.equations(estimates=True, digits=4).text
    vc = m.varcorr.set_index("var1")["vcov"]
    assert f"T = [{vc['(Intercept)']:.4f} 0; 0 {vc['ses']:.4f}]" in est


def test_level2_predictor_and_cross_level_interaction(hsb):
    # meanses and sector are school properties (constant within school): level 2; cses varies: level 1.
    m = jaxmlm.lmer("mAch ~ meanses * cses + sector + (cses | school)", hsb)
    assert _body(m.equations()) == """\
Level 1:
  mAchᵢⱼ = β₀ⱼ + β₁ⱼ csesᵢⱼ + εᵢⱼ
Level 2:
  β₀ⱼ = γ₀₀ + γ₀₁ meansesⱼ + γ₀₂ sector[Catholic]ⱼ + u₀ⱼ
  β₁ⱼ = γ₁₀ + γ₁₁ meansesⱼ + u₁ⱼ
Composite:
  mAchᵢⱼ = γ₀₀ + γ₀₁ meansesⱼ + γ₀₂ sector[Catholic]ⱼ + γ₁₀ csesᵢⱼ + γ₁₁ meansesⱼ × csesᵢⱼ + u₀ⱼ + u₁ⱼ csesᵢⱼ + εᵢⱼ
Distributions:
          εᵢⱼ ~ N(0, σ²)
  (u₀ⱼ, u₁ⱼ)ᵀ ~ N(0, T),  T = [τ₀₀ τ₀₁; τ₀₁ τ₁₁]"""
    # the numbers go where the symbols were: γ11 is the meanses:cses estimate, and so on
    est = m.equations(estimates=True).text
    fe = m.fixef
    slope = re.search(r"β₁ⱼ = (-?[\d.]+) \+ (-?[\d.]+) meansesⱼ \+ u₁ⱼ", est)
    assert float(slope.group(1)) == round(fe["cses"], 2) and float(slope.group(2)) == round(fe["meanses:cses"], 2)
    icpt = re.search(r"β₀ⱼ = (-?[\d.]+) \+ (-?[\d.]+) meansesⱼ \+ (-?[\d.]+) sector\[Catholic\]ⱼ", est)
    assert [float(g) for g in icpt.groups()] == [round(fe[k], 2) for k in ("(Intercept)", "meanses", "sectorCatholic")]
    S = m.varcorr_matrices["school"].to_numpy()
    assert f"T = [{S[0, 0]:.2f} {S[0, 1]:.2f}; {S[1, 0]:.2f} {S[1, 1]:.2f}]" in est
    assert f"εᵢⱼ ~ N(0, {m.sigma ** 2:.2f})" in est


def test_three_levels_nested(classroom):
    m = jaxmlm.lmer("mathgain ~ mathkind + ses + (1 | schoolid/classid)", classroom)
    e = m.equations()
    assert e.levels == 3
    assert _body(e) == """\
Level 1:
  mathgainᵢⱼₖ = β₀ⱼₖ + β₁ⱼₖ mathkindᵢⱼₖ + β₂ⱼₖ sesᵢⱼₖ + εᵢⱼₖ
Level 2:
  β₀ⱼₖ = γ₀₀ₖ + u₀ⱼₖ
  β₁ⱼₖ = γ₁₀ₖ
  β₂ⱼₖ = γ₂₀ₖ
Level 3:
  γ₀₀ₖ = δ₀₀₀ + v₀₀ₖ
  γ₁₀ₖ = δ₁₀₀
  γ₂₀ₖ = δ₂₀₀
Composite:
  mathgainᵢⱼₖ = δ₀₀₀ + δ₁₀₀ mathkindᵢⱼₖ + δ₂₀₀ sesᵢⱼₖ + u₀ⱼₖ + v₀₀ₖ + εᵢⱼₖ
Distributions:
  εᵢⱼₖ ~ N(0, σ²)
  u₀ⱼₖ ~ N(0, τ₀₀)
  v₀₀ₖ ~ N(0, ω₀₀,₀₀)"""
    assert e.text.splitlines()[-1] == "where i: observation (1190); j: classid:schoolid (312); k: schoolid (107)"
    assert r"\gamma_{00k} &= \delta_{000} + v_{00k}" in e.latex


def test_three_levels_with_class_and_school_predictors(classroom):
    # yearstea (the teacher's experience) is constant within class, housepov within school
    m = jaxmlm.lmer("mathgain ~ ses * housepov + yearstea + (1 | schoolid/classid)", classroom)
    text = _body(m.equations())
    assert """\
Level 1:
  mathgainᵢⱼₖ = β₀ⱼₖ + β₁ⱼₖ sesᵢⱼₖ + εᵢⱼₖ
Level 2:
  β₀ⱼₖ = γ₀₀ₖ + γ₀₁ₖ yearsteaⱼₖ + u₀ⱼₖ
  β₁ⱼₖ = γ₁₀ₖ
Level 3:
  γ₀₀ₖ = δ₀₀₀ + δ₀₀₁ housepovₖ + v₀₀ₖ
  γ₀₁ₖ = δ₀₁₀
  γ₁₀ₖ = δ₁₀₀ + δ₁₀₁ housepovₖ
Composite:
  mathgainᵢⱼₖ = δ₀₀₀ + δ₀₀₁ housepovₖ + δ₀₁₀ yearsteaⱼₖ + δ₁₀₀ sesᵢⱼₖ + δ₁₀₁ sesᵢⱼₖ × housepovₖ + u₀ⱼₖ + v₀₀ₖ + εᵢⱼₖ
""" in text + "\n"


def test_categorical_predictors_one_term_per_dummy(hsb):
    # sx varies within school (level 1), sector does not (level 2); treatment contrasts: one dummy each
    m = jaxmlm.lmer("mAch ~ sx + sector + (1 | school)", hsb)
    text = m.equations().text
    assert "  mAchᵢⱼ = β₀ⱼ + β₁ⱼ sx[Female]ᵢⱼ + εᵢⱼ" in text
    assert "  β₀ⱼ = γ₀₀ + γ₀₁ sector[Catholic]ⱼ + u₀ⱼ" in text
    assert "  β₁ⱼ = γ₁₀" in text.splitlines()
    assert r"\gamma_{01}\,\text{sector[Catholic]}_{j}" in m.equations().latex
    est = m.equations(estimates=True).text
    # a negative estimate is written as a subtraction
    assert f"  β₁ⱼ = -{abs(m.fixef['sxFemale']):.2f}" in est.splitlines()
    fe = m.fixef
    assert (f"  mAchᵢⱼ = {fe['(Intercept)']:.2f} + {fe['sectorCatholic']:.2f} sector[Catholic]ⱼ "
            f"- {abs(fe['sxFemale']):.2f} sx[Female]ᵢⱼ + u₀ⱼ + εᵢⱼ") in est


def test_crossed_factors_composite_only():
    pen = jaxmlm.load_example("Penicillin")
    m = jaxmlm.lmer("diameter ~ 1 + (1 | plate) + (1 | sample)", pen)
    e = m.equations()
    assert e.levels is None and "crossed" in e.note
    assert _body(e).splitlines()[:6] == [
        "Composite:",
        "  diameterᵢⱼₖ = β₀ + u₀ⱼ + v₀ₖ + εᵢⱼₖ",
        "Distributions:",
        "  εᵢⱼₖ ~ N(0, σ²)",
        "   u₀ⱼ ~ N(0, τ₀₀)",
        "   v₀ₖ ~ N(0, ω₀₀)",
    ]
    assert "where i: observation (144); j: plate (24); k: sample (6)" in e.text
    assert "Level 1" not in e.text and e.note in e.text
    vc = m.varcorr.set_index("grp")["vcov"]
    est = m.equations(estimates=True, digits=3).text
    assert f"diameterᵢⱼₖ = {m.fixef.iloc[0]:.3f} + u₀ⱼ + v₀ₖ + εᵢⱼₖ" in est
    assert f"u₀ⱼ ~ N(0, {vc['plate']:.3f})" in est and f"v₀ₖ ~ N(0, {vc['sample']:.3f})" in est


def _design(w_varies_in_one_group: bool) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    g = np.repeat(np.arange(12), 6)
    w = np.repeat(rng.normal(size=12), 6)
    if w_varies_in_one_group:
        w = w.copy()
        w[0] += 0.5  # one group no longer holds w constant
    x = rng.normal(size=g.size)
    y = 1 + x + w + np.repeat(rng.normal(size=12), 6) + rng.normal(size=g.size)
    return pd.DataFrame({"y": y, "x": x, "w": w, "g": g.astype(str)})


@pytest.mark.parametrize("varies", [False, True])
def test_the_level_of_a_predictor_is_read_from_the_data(varies):
    df = _design(varies)
    text = jaxmlm.lmer("y ~ x + w + (1 | g)", df).equations().text
    if varies:  # not constant within every group: a level-1 predictor with its own β
        assert "  yᵢⱼ = β₀ⱼ + β₁ⱼ xᵢⱼ + β₂ⱼ wᵢⱼ + εᵢⱼ" in text
    else:  # constant within every group: it explains the intercept at level 2
        assert "  yᵢⱼ = β₀ⱼ + β₁ⱼ xᵢⱼ + εᵢⱼ" in text and "  β₀ⱼ = γ₀₀ + γ₀₁ wⱼ + u₀ⱼ" in text


def test_offsets_and_slopes_without_fixed_part(hsb):
    df = hsb.assign(expo=np.exp(hsb["ses"]))
    m = jaxmlm.lmer("mAch ~ cses + offset(log(expo)) + (0 + ses | school)", df)
    text = m.equations().text
    assert "  mAchᵢⱼ = β₀ⱼ + β₁ⱼ csesᵢⱼ + β₂ⱼ sesᵢⱼ + log(expo)ᵢⱼ + εᵢⱼ" in text
    assert "  β₂ⱼ = u₂ⱼ" in text.splitlines() and "  β₀ⱼ = γ₀₀" in text.splitlines()
    m2 = jaxmlm.lmer("mAch ~ cses + (1 | school)", hsb, offset="ses")
    assert "  mAchᵢⱼ = β₀ⱼ + β₁ⱼ csesᵢⱼ + sesᵢⱼ + εᵢⱼ" in m2.equations().text


def test_weights_and_two_digit_indices(hsb):
    df = hsb.assign(w=1.0 + np.arange(len(hsb)) % 3)
    m = jaxmlm.lmer("mAch ~ ses + (1 | school)", df, weights="w")
    assert "εᵢⱼ ~ N(0, σ²/wᵢⱼ)" in m.equations().text  # lme4's weights: residual variance σ²/w
    assert rf"\varepsilon_{{ij}} &\sim N(0, {m.sigma ** 2:.2f}/w_{{ij}})" in m.equations(estimates=True).latex
    # ten slopes: indices of two digits are separated by commas (γ_10,0 is slope 10's intercept)
    m10 = jaxmlm.lmer("mAch ~ poly(ses, 10) + (1 | school)", hsb)
    lines = m10.equations().text.splitlines()
    assert "  β₁₀ⱼ = γ₁₀,₀" in lines and "   β₁ⱼ = γ₁₀" in lines
    assert r"\beta_{10j} &= \gamma_{10,0}" in m10.equations().latex


def test_a_random_slope_of_a_group_constant_predictor_falls_back_to_the_composite(hsb):
    m = jaxmlm.lmer("mAch ~ meanses + (meanses | school)", hsb)
    e = m.equations()
    assert e.levels is None and "meanses" in e.note
    assert "  mAchᵢⱼ = β₀ + β₁ meansesᵢⱼ + u₀ⱼ + u₁ⱼ meansesᵢⱼ + εᵢⱼ" in e.text


def test_latex_is_balanced(hsb, classroom):
    fits = [jaxmlm.lmer("mAch ~ meanses * cses + sx + (cses | school)", hsb),
            jaxmlm.lmer("mathgain ~ mathkind * housepov + (mathkind | schoolid) + (1 | classid)", classroom),
            jaxmlm.lmer("diameter ~ 1 + (1 | plate) + (1 | sample)", jaxmlm.load_example("Penicillin"))]
    for m in fits:
        for est in (False, True):
            tex = m.equations(estimates=est).latex
            assert tex.startswith(r"\begin{aligned}") and tex.endswith(r"\end{aligned}")
            assert _balanced(tex), tex
    assert not _balanced(r"\begin{aligned} x_{1 \end{aligned}")  # the check can fail
    tex = fits[1].equations().latex
    assert r"\boldsymbol{\Omega} = \begin{pmatrix} \omega_{00,00} & \omega_{00,10} \\ \omega_{00,10} & \omega_{10,10} \end{pmatrix}" in tex


def test_what_it_cannot_write_is_a_clear_error(hsb):
    m = jaxmlm.lmer("mAch ~ cses + diag(1 + cses | school, hom = TRUE)", hsb)
    with pytest.raises(FormulaError, match="unstructured and diagonal"):
        m.equations()
    ok = jaxmlm.lmer("mAch ~ cses + (1 | school)", hsb)
    for bad in (-1, 1.5, "2", True):
        with pytest.raises(DataError, match="digits"):
            ok.equations(digits=bad)
    for bad in ("yes", 1, None):  # as summary(stddev=): True or False, not any truthy value
        with pytest.raises(DataError, match="estimates"):
            ok.equations(estimates=bad)


# ---- the structure equatiomatic gives the same models ---------------------------------------------
# tests/reference/equations/equatiomatic.json holds extract_eq()'s LaTeX for six models (written by
# make_equatiomatic.R beside it). equatiomatic writes Gelman & Hill's notation (α_j[i], γ^α), not
# the level equations, so what is compared is the structure: which predictors sit in the level-1
# equation, and which in the equation of each intercept and random slope at each grouping level.

import json  # noqa: E402
from pathlib import Path  # noqa: E402

_REFERENCE = json.loads((Path(__file__).parent / "reference" / "equations" / "equatiomatic.json").read_text())
_EQM_NAME = re.compile(r"\\operatorname\{([^}]*)\}(?:_\{\\operatorname\{([^}]*)\}\})?")


def _eqm_product(term: str) -> frozenset:
    return frozenset(f"{a}[{b}]" if b else a for a, b in _EQM_NAME.findall(term))


def _equatiomatic_structure(tex: str):
    """(level-1 products, [per grouping level: {0: intercept's products, p: slope p's products}])."""
    first = tex.splitlines()[1]
    mean = first[first.index(r"N \left(") + len(r"N \left("): first.rindex(r", \sigma^2")]
    level1 = {_eqm_product(t) for t in mean.split(" + ")} - {frozenset()}
    blocks = re.split(r"\\text\{, for ", tex)[:-1]
    levels = []
    for block in blocks:
        eqs: dict[int, set] = {}
        for beta, inside in re.findall(r"\\gamma(?:\^\{\\beta_\{(\d+)\}\})?_\{\d+\}(?:\^\{\\alpha\})?\(([^()]*)\)", block):
            eqs.setdefault(int(beta) if beta else 0, set()).add(_eqm_product(inside))
        levels.append(eqs)
    return level1, levels


def _jaxmlm_structure(e):
    """The same from m.equations()'s LaTeX: products of \\text{} variables per equation."""
    sections = re.split(r"&\\text\{Level \d+:\}", e.latex.split(r"&\text{Composite:}")[0])[1:]

    def products(rhs: str) -> set:
        return {frozenset(re.findall(r"\\text\{([^}]*)\}", t)) for t in rhs.split(" + ")} - {frozenset()}

    level1 = products(sections[0].split("&=")[1].split(r"\\")[0])
    levels = []
    for sec in sections[1:]:
        eqs = {}
        for line in sec.strip().split(" \\\\\n"):
            if "&=" not in line:
                continue
            lhs, rhs = line.split("&=")
            digits = re.search(r"_\{(\d+)[jk]*\}", lhs).group(1)
            if set(digits[1:]) <= {"0"}:  # an intercept (all 0) or a slope p of the level-1 equation (p0, p00)
                eqs[int(digits[0])] = products(rhs)
        levels.append(eqs)
    return level1, levels


@pytest.mark.parametrize("name", sorted(_REFERENCE))
def test_structure_matches_equatiomatic(name, hsb, classroom):
    ref = _REFERENCE[name]
    data = {"Hsb82": hsb, "classroom": classroom}[ref["data"]]
    e = jaxmlm.lmer(ref["formula"], data).equations()
    l1_ref, levels_ref = _equatiomatic_structure(ref["latex"])
    l1, levels = _jaxmlm_structure(e)
    assert l1 == l1_ref
    level1_vars = {v for p in l1 for v in p}
    slope_index = {next(iter(p)): i + 1 for i, p in enumerate(sorted(l1, key=lambda p: e.latex.index(next(iter(p)))))}
    assert len(levels) == len(levels_ref)
    for mine, theirs in zip(levels, levels_ref):
        expected: dict[int, set] = {}
        for coef, prods in theirs.items():
            for p in prods:
                # equatiomatic puts a cross-level product into the intercept's mean when the slope it
                # modifies does not vary at that level; the level notation cannot (a level-1 variable
                # in a level-2 equation), so it is in that slope's equation (a non-randomly varying slope)
                if coef == 0 and p & level1_vars:
                    (v,) = p & level1_vars
                    expected.setdefault(slope_index[v], set()).add(p - {v})
                else:
                    expected.setdefault(coef, set()).add(p)
        assert {c: ps for c, ps in mine.items() if ps} == expected
    if name in ("cross_level", "categorical", "three_level_predictors"):  # the comparison is not empty
        assert any(levels_ref)


# ---- GLMMs -------------------------------------------------------------------------------------------


def _glmm_case(cid):
    return glmer_fitted(cid)[2]


def test_glmm_bernoulli_with_a_random_slope_writes_the_link_and_no_residual():
    """A GLMM's level-1 equation is the link of the conditional mean; no ε; the response's
    distribution replaces N(0, σ²)."""
    m = _glmm_case("contra_slope")  # use ~ age + urban + (urban | district), binomial(logit)
    assert _body(m.equations()) == """\
Level 1:
  logit(πᵢⱼ) = β₀ⱼ + β₁ⱼ ageᵢⱼ + β₂ⱼ urban[Y]ᵢⱼ
Level 2:
  β₀ⱼ = γ₀₀ + u₀ⱼ
  β₁ⱼ = γ₁₀
  β₂ⱼ = γ₂₀ + u₂ⱼ
Composite:
  logit(πᵢⱼ) = γ₀₀ + γ₁₀ ageᵢⱼ + γ₂₀ urban[Y]ᵢⱼ + u₀ⱼ + u₂ⱼ urban[Y]ᵢⱼ
Distributions:
        useᵢⱼ ~ Bernoulli(πᵢⱼ)
  (u₀ⱼ, u₂ⱼ)ᵀ ~ N(0, T),  T = [τ₀₀ τ₀₂; τ₀₂ τ₂₂]"""
    tex = m.equations().latex
    assert r"\operatorname{logit}(\pi_{ij}) &= \beta_{0j}" in tex and r"\varepsilon" not in tex and _balanced(tex)


@pytest.mark.parametrize("cid, first, dist", [
    ("cbpp_cbind", "logit(πᵢⱼ) = β₀ⱼ + β₁ⱼ period[2]ᵢⱼ + β₂ⱼ period[3]ᵢⱼ + β₃ⱼ period[4]ᵢⱼ",
     "incidenceᵢⱼ ~ Binomial(nᵢⱼ, πᵢⱼ),  n = incidence + (size - incidence)"),
    ("cbpp_prop", "logit(πᵢⱼ) = β₀ⱼ + β₁ⱼ period[2]ᵢⱼ + β₂ⱼ period[3]ᵢⱼ + β₃ⱼ period[4]ᵢⱼ",
     "nᵢⱼ propᵢⱼ ~ Binomial(nᵢⱼ, πᵢⱼ),  n = the weights (trials)"),
    ("contra_probit", "probit(πᵢⱼ) = β₀ⱼ + β₁ⱼ ageᵢⱼ + β₂ⱼ urban[Y]ᵢⱼ + β₃ⱼ livch[1]ᵢⱼ + β₄ⱼ livch[2]ᵢⱼ"
                      " + β₅ⱼ livch[3+]ᵢⱼ", "useᵢⱼ ~ Bernoulli(πᵢⱼ)"),
    ("pois_offset", "log(λᵢⱼ) = β₀ⱼ + β₁ⱼ xᵢⱼ + log(expo)ᵢⱼ", "countᵢⱼ ~ Poisson(λᵢⱼ)"),
    ("nb_glmer", "log(μᵢⱼ) = β₀ⱼ + β₁ⱼ xᵢⱼ", "countᵢⱼ ~ NegBinomial(μᵢⱼ, θ)"),
])
def test_glmm_families_links_and_trials(cid, first, dist):
    lines = [line.strip() for line in _glmm_case(cid).equations().text.splitlines()]
    assert lines[1] == first
    assert dist in lines


def test_glmm_estimates_fill_in_the_coefficients_and_the_negative_binomial_theta():
    m = _glmm_case("nb_glmer")
    est = m.equations(estimates=True, digits=3).text
    b0, b1 = m.fixef.to_numpy()
    assert f"β₀ⱼ = {b0:.3f} + u₀ⱼ" in est and f"β₁ⱼ = {b1:.3f}" in est
    assert f"NegBinomial(μᵢⱼ, {m.nb_theta:.3f})" in est
    assert f"u₀ⱼ ~ N(0, {m.theta[0] ** 2:.3f})" in est
