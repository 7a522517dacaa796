"""A fitted model written as equations, in the level-by-level notation of multilevel courses.

``m.equations()`` writes the model the way Raudenbush & Bryk (2002, *Hierarchical Linear
Models*, 2nd ed., ch. 2, 4, 8) and most course notes do:

* a **level-1** equation for the response, one coefficient per level-1 predictor,
  ``Y_ij = β_0j + β_1j X_ij + ε_ij`` (j the group of observation i);
* a **level-2** equation for each of those coefficients, with the group-level predictors
  that explain it and, where the coefficient varies between groups, a random effect:
  ``β_0j = γ_00 + γ_01 W_j + u_0j``; ``β_1j = γ_10`` for a slope that does not vary;
* with nested grouping factors a **level-3** equation for every level-2 coefficient
  (``Y_ijk``, ``β_0jk = γ_00k + u_0jk``, ``γ_00k = δ_000 + v_00k``), and so on;
* the **composite** (mixed) form, the level equations substituted into each other;
* the **distributions**: ``ε_ij ~ N(0, σ²)`` and ``(u_0j, u_1j)ᵀ ~ N(0, T)``.

A GLMM (``glmer``) is written the same way with its link of the conditional mean on the left of
the level-1 and composite equations (``logit(π_ij) = β_0j + β_1j X_ij``: no ε) and the
response's conditional distribution first among the distributions (``Y_ij ~ Bernoulli(π_ij)``,
``Binomial(n_ij, π_ij)``, ``Poisson(λ_ij)``, ``NegBinomial(μ_ij, θ)``), as equatiomatic writes
glmer fits.

This is what R's equatiomatic (Anderson, Heiss & Sumners; ``extract_eq()`` for lme4 fits)
does, in another notation (its Gelman & Hill style writes ``α_j[i]``); jaxmlm follows it in
the one decision that needs the data: **the level of each predictor**. A predictor that is
constant within every group of a grouping factor is a property of the group and belongs to
that factor's level (the highest such level, for nested factors); otherwise it is a level-1
predictor. A fixed-effects column then splits into its parts at each level: the level-1 part
(``cses``) picks the level-1 coefficient, the level-2 part (``meanses``) the term of that
coefficient's level-2 equation — so a cross-level interaction ``meanses:cses`` is the
``γ_11 meanses_j`` of the slope's equation ``β_1j = γ_10 + γ_11 meanses_j + u_1j``, as in
equatiomatic. (Where the slope does not vary between groups, equatiomatic moves such a product
into the intercept's mean; a level-2 equation cannot hold a level-1 variable, so here it stays
in the slope's equation, Raudenbush & Bryk's non-randomly varying slope ``β_1j = γ_10 + γ_11
W_j``. tests/test_equations.py compares this structure with equatiomatic's output for six
models.) Coefficients are numbered as Raudenbush & Bryk number them: 0 for the
intercept of an equation, then 1, 2, … in the order the formula gives the predictors.

Where the levels cannot be written — crossed grouping factors (neither nested in the other),
a random slope of a predictor that is constant within that very grouping factor, a fit from
data in pieces that keeps no rows to decide levels from — the equations are the composite
form only, and ``note`` says why.

``estimates=True`` puts the fitted numbers in place of the fixed coefficients and of the
variance components (σ², and the covariance matrices of the random effects), rounded to
``digits`` decimals, as equatiomatic's ``use_coefs = TRUE``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ._design import r_column_name
from ._errors import DataError, FormulaError
from ._formula import split_cbind

__all__ = ["Equations", "equations"]

# Letters by level: the coefficients of the level-1 equation are β, those of the level-2
# equations γ, of the level-3 equations δ (Raudenbush & Bryk's π/β/γ shifted to start at β,
# as course notes with two levels write them); random effects at level 2, 3, 4 are u, v, w
# with covariance matrices T (τ), Ω (ω), Ψ (ψ); groups at level 2, 3, 4 are indexed j, k, l.
_COEF = ("beta", "gamma", "delta", "zeta")
_RANDOM = ("u", "v", "w")
_COV = (("T", "tau"), ("Ω", "omega"), ("Ψ", "psi"))
_INDEX = ("j", "k", "l")

_GREEK = {"beta": "β", "gamma": "γ", "delta": "δ", "zeta": "ζ", "tau": "τ", "omega": "ω", "psi": "ψ",
          "epsilon": "ε", "sigma": "σ", "pi": "π", "lambda": "λ", "mu": "μ", "theta": "θ"}
# A GLMM's conditional mean by family (the level-1 equation is its link), as course notes write them.
_MEAN = {"binomial": "pi", "poisson": "lambda"}
_LATEX_NAME = {"epsilon": "varepsilon"}
_LATEX_MATRIX = {"T": r"\mathbf{T}", "Ω": r"\boldsymbol{\Omega}", "Ψ": r"\boldsymbol{\Psi}"}
_SUB = dict(zip("0123456789ijklm,", "₀₁₂₃₄₅₆₇₈₉ᵢⱼₖₗₘ,"))  # no subscript comma in Unicode


@dataclass(frozen=True)
class Equations:
    """The equations of a fitted model (see :mod:`jaxmlm._equations`).

    ``text``: plain text with Unicode subscripts (what ``print`` shows); ``latex``: the same as
    a LaTeX ``aligned`` environment (a notebook renders it through ``_repr_latex_``);
    ``levels``: the number of levels written (2 for one grouping factor, 3 for two nested ones),
    None where only the composite form could be written; ``note``: why not, or None.
    """

    text: str
    latex: str
    levels: int | None
    note: str | None = None

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return self.text

    def _repr_latex_(self) -> str:
        return f"$$\n{self.latex}\n$$"


# ---- symbols and their two renderings ------------------------------------------------------------


def _sub_text(s: str) -> str:
    if all(c in _SUB for c in s):
        return "".join(_SUB[c] for c in s)
    return f"_{s}" if len(s) == 1 else f"_({s})"


def _escape(s: str) -> str:
    """Text for LaTeX's \\text{}: its special characters escaped."""
    out = []
    for c in s:
        if c == "\\":
            out.append(r"\textbackslash{}")
        elif c in "{}_#$%&":
            out.append("\\" + c)
        elif c == "^":
            out.append(r"\^{}")
        elif c == "~":
            out.append(r"\~{}")
        else:
            out.append(c)
    return "".join(out)


@dataclass(frozen=True)
class _Sym:
    """A Greek or Latin letter with a subscript (``β_0j``)."""

    name: str
    sub: str = ""

    def text(self) -> str:
        return _GREEK.get(self.name, self.name) + _sub_text(self.sub)

    def latex(self) -> str:
        base = "\\" + _LATEX_NAME.get(self.name, self.name) if self.name in _GREEK else self.name
        return f"{base}_{{{self.sub}}}" if self.sub else base


@dataclass(frozen=True)
class _Var:
    """A predictor (or the response) with the subscript of its level (``ses_ij``, ``meanses_j``)."""

    name: str
    sub: str

    def text(self) -> str:
        return self.name + _sub_text(self.sub)

    def latex(self) -> str:
        return f"\\text{{{_escape(self.name)}}}_{{{self.sub}}}"


@dataclass(frozen=True)
class _Link:
    """A GLMM's linear predictor as its link of the conditional mean (``logit(π_ij)``)."""

    link: str
    mean: _Sym

    def text(self) -> str:
        return f"{self.link}({self.mean.text()})"

    def latex(self) -> str:
        return f"\\operatorname{{{self.link}}}({self.mean.latex()})"


def _number(x: float, digits: int) -> str:
    s = f"{x:.{digits}f}"
    return f"{0.0:.{digits}f}" if float(s) == 0 else s  # no "-0.00"


def _sum(terms: list[tuple[object, tuple[_Var, ...]]], digits: int, latex: bool) -> str:
    """Render Σ coef × vars: coef a _Sym, a float (an estimate) or None (a known term: offset)."""
    pieces: list[tuple[str, str]] = []  # (sign, body)
    times = r" \times " if latex else " × "
    for coef, vars_ in terms:
        product = times.join(v.latex() if latex else v.text() for v in vars_)
        if isinstance(coef, float):
            sign = "-" if _number(coef, digits).startswith("-") else "+"
            c = _number(abs(coef), digits)
            body = f"{c}\\,{product}" if latex and product else (f"{c} {product}" if product else c)
        elif coef is None:
            sign, body = "+", product
        else:
            c = coef.latex() if latex else coef.text()
            sign = "+"
            body = f"{c}\\,{product}" if latex and product else (f"{c} {product}" if product else c)
        pieces.append((sign, body))
    if not pieces:
        return "0"
    first_sign, first = pieces[0]
    out = ("-" + first) if first_sign == "-" else first
    for sign, body in pieces[1:]:
        out += f" {sign} {body}"
    return out


# ---- the model's columns as products of factors -----------------------------------------------


@dataclass(frozen=True)
class _Factor:
    """One factor of a model-matrix column: an expression of the data, and for a categorical one
    the level its dummy indicates."""

    expr: str
    label: str | None

    @property
    def display(self) -> str:
        name = r_column_name(self.expr).replace("`", "")
        return name if self.label is None else f"{name}[{self.label}]"


def _split_top(name: str, sep: str = ":") -> list[str]:
    """``name`` split at ``sep`` outside parentheses, brackets and backquotes."""
    out, depth, quoted, start = [], 0, False, 0
    for i, c in enumerate(name):
        if c == "`":
            quoted = not quoted
        elif quoted:
            continue
        elif c in "([":
            depth += 1
        elif c in ")]":
            depth -= 1
        elif c == sep and depth == 0:
            out.append(name[start:i])
            start = i + 1
    out.append(name[start:])
    return out


def _columns(spec) -> list[tuple[str, tuple[_Factor, ...]]]:
    """(formulaic column name, its factors) for every column of a formulaic ModelSpec."""
    out = []
    for structure in spec.structure:
        factors = [f for f in structure.term.factors if str(f.expr) != "1"]
        for col in structure.columns:
            if col == "Intercept" or not factors:
                out.append((col, ()))
                continue
            pieces = _split_top(col)
            if len(pieces) != len(factors):
                raise FormulaError(f"equations(): cannot split the column {col!r} into the factors of its term")
            parts = []
            for piece, f in zip(pieces, factors):
                expr = str(f.expr)
                if not piece.startswith(expr):
                    raise FormulaError(f"equations(): cannot read the column {col!r} of the term {structure.term}")
                rest = piece[len(expr):]
                label = None
                if rest:
                    m = re.fullmatch(r"\[(?:T\.)?(.*)\]", rest)
                    if m is None:
                        raise FormulaError(f"equations(): cannot read the column {col!r}")
                    label = m.group(1)
                parts.append(_Factor(expr, label))
            out.append((col, tuple(parts)))
    return out


def _fixed_columns(d) -> list[tuple[str, tuple[_Factor, ...]]]:
    """(R name, factors) of the fixed-effects columns the fit kept, in lme4's order (offsets apart)."""
    cols = _columns(d.fixed_spec)
    if len(cols) != len(d.fixed_columns_all):
        raise FormulaError("equations(): the fixed-effects columns do not match the model's specification")
    by_name = dict(zip(d.fixed_columns_all, (f for _, f in cols)))
    return [(name, by_name[name]) for name in d.fixef_names]


def _random_columns(d, block) -> list[tuple[str, tuple[_Factor, ...], int]]:
    """(R name, factors, term index) of a grouping factor's random-effects columns, in its order."""
    out = []
    for t in block.terms:
        term = d.terms[t]
        kind = getattr(term.cov, "kind", "us")
        if kind not in ("us", "diag") or getattr(term.cov, "hom", False):
            raise FormulaError(
                f"equations() writes unstructured and diagonal covariances of random effects; the term on "
                f"{term.group} has the structure {kind}{'(hom = TRUE)' if getattr(term.cov, 'hom', False) else ''}")
        cols = _columns(term.spec)
        if len(cols) != term.k:
            raise FormulaError(f"equations(): the random-effects columns on {term.group} do not match their term")
        out += [(name, factors, t) for name, (_, factors) in zip(term.columns, cols)]
    return out


# ---- levels ------------------------------------------------------------------------------------


def _nested_in(inner: np.ndarray, outer: np.ndarray) -> bool:
    """Every group of ``inner`` lies within one group of ``outer``."""
    return bool(pd.Series(outer).groupby(inner).nunique().max() <= 1)


def _chain(blocks) -> list | None:
    """The grouping factors from the lowest level up when each is nested in the next, else None."""
    order = sorted(blocks, key=lambda b: -b.nlev)
    for inner, outer in zip(order, order[1:]):
        if not _nested_in(inner.codes, outer.codes):
            return None
    return order


def _values(factor: _Factor, frame: pd.DataFrame) -> np.ndarray:
    """The factor's values on the model's rows, as numbers (n, c)."""
    name = factor.expr.strip("`")
    if name in frame.columns:
        col = frame[name]
        if pd.api.types.is_numeric_dtype(col) and not isinstance(col.dtype, pd.CategoricalDtype):
            return col.to_numpy(dtype=float).reshape(-1, 1)
        return pd.factorize(col)[0].astype(float).reshape(-1, 1)
    import formulaic

    try:
        mm = formulaic.model_matrix(f"0 + {factor.expr}", frame, na_action="ignore")
    except Exception as exc:  # formulaic raises many types; any failure means we cannot decide
        raise FormulaError(f"equations(): cannot evaluate {factor.expr!r} to decide its level: {exc}") from None
    return np.asarray(mm, dtype=float).reshape(len(frame), -1)


def _constant_within(values: np.ndarray, codes: np.ndarray) -> bool:
    frame = pd.DataFrame(values)
    g = frame.groupby(codes, sort=False)
    spread = np.nanmax(np.abs((g.max() - g.min()).to_numpy())) if len(frame) else 0.0
    scale = max(1.0, float(np.nanmax(np.abs(values))) if values.size else 1.0)
    return bool(spread <= 1e-9 * scale)


def _levels_of(factors, frame, chain) -> dict[_Factor, int]:
    """Level of each factor: the highest level whose groups hold it constant (1: none does)."""
    out = {}
    for f in factors:
        vals = _values(f, frame)
        level = 1
        for lev in range(len(chain), 0, -1):
            if _constant_within(vals, chain[lev - 1].codes):
                level = lev + 1
                break
        out[f] = level
    return out


# ---- the equations -------------------------------------------------------------------------------


def _indices(idx: tuple[int, ...]) -> str:
    return "".join(map(str, idx)) if all(i < 10 for i in idx) else ",".join(map(str, idx))


def _subscript(idx: tuple[int, ...], groups: str) -> str:
    s = _indices(idx)
    if groups and "," in s:
        return f"{s},{groups}"
    return s + groups


class _Writer:
    def __init__(self, m, estimates: bool, digits: int):
        self.m, self.d, self.estimates, self.digits = m, m.design, estimates, digits
        self.text: list[tuple[str, str, str]] = []  # (kind, lhs, rhs); kind "head", "eq", "line"
        self.latex: list[tuple[str, str, str]] = []

    # one line in both renderings
    def head(self, title: str) -> None:
        self.text.append(("head", title, ""))
        self.latex.append(("head", title, ""))

    def eq(self, lhs, rhs_text: str, rhs_latex: str, rel: str = "=") -> None:
        lt = lhs if isinstance(lhs, str) else lhs.text()
        ll = lhs if isinstance(lhs, str) else lhs.latex()
        rt, rl = ("~", r"\sim") if rel == "sim" else ("=", "=")
        self.text.append(("eq", lt, f"{rt} {rhs_text}"))
        self.latex.append(("eq", ll, f"{rl} {rhs_latex}"))

    def sum_(self, terms):
        return _sum(terms, self.digits, False), _sum(terms, self.digits, True)

    def num(self, x: float) -> str:
        return _number(x, self.digits)

    # ---- pieces shared by both forms ----
    def response(self, sub: str) -> _Var:
        return _Var(r_column_name(self.d.formula.lhs).replace("`", ""), sub)

    def offsets(self, sub: str) -> list[tuple[None, tuple[_Var, ...]]]:
        out = []
        for name in self.d.offset_columns:
            m = re.fullmatch(r"offset\((.*)\)", name.strip())
            out.append((None, (_Var(m.group(1) if m else name, sub),)))
        if self.d.arg_offset is not None:
            out.append((None, (_Var(self.d.offset_column or "offset", sub),)))
        return out

    def lhs(self, sub: str):
        """The left side of the level-1 and composite equations: the response, or a GLMM's link of
        its conditional mean."""
        fam = getattr(self.m, "family", None)
        if fam is None:
            return self.response(sub)
        return _Link(fam.link.name, _Sym(_MEAN.get(fam.name, "mu"), sub))

    def noise(self, sub: str) -> list:
        """The level-1 error term: ε for a linear model; none for a GLMM (its response's
        distribution is the conditional one, :meth:`residual`)."""
        return [(_Sym("epsilon", sub), ())] if getattr(self.m, "family", None) is None else []

    def conditional(self, sub: str) -> None:
        """A GLMM's response given the random effects: Bernoulli / binomial (trials n: cbind's two
        counts or the prior weights), Poisson, or negative binomial with its θ."""
        fam = self.m.family
        mean = _Sym(_MEAN.get(fam.name, "mu"), sub)
        mt, ml = mean.text(), mean.latex()
        lhs = self.m.formula.split("~")[0].strip()
        if fam.name == "binomial":
            n = _Var("n", sub)
            if lhs.startswith("cbind("):
                succ, fail = split_cbind(lhs)
                fail = f"({fail})" if re.search(r"[-+*/ ]", fail) else fail
                self.eq(_Var(succ, sub), f"Binomial({n.text()}, {mt}),  n = {succ} + {fail}",
                        f"\\operatorname{{Binomial}}({n.latex()}, {ml}),\\quad n = \\text{{{_escape(succ)} + {_escape(fail)}}}",
                        rel="sim")
            elif np.all(np.asarray(self.m._w) == 1.0):
                self.eq(self.response(sub), f"Bernoulli({mt})", f"\\operatorname{{Bernoulli}}({ml})", rel="sim")
            else:  # a proportion of n trials, n the prior weights
                y = self.response(sub)
                self.eq(f"{n.text()} {y.text()}", f"Binomial({n.text()}, {mt}),  n = the weights (trials)",
                        f"\\operatorname{{Binomial}}({n.latex()}, {ml}),\\quad n = \\text{{the weights (trials)}}",
                        rel="sim")
                self.latex[-1] = ("eq", f"{n.latex()}\\,{y.latex()}", self.latex[-1][2])
        elif fam.name == "poisson":
            self.eq(self.response(sub), f"Poisson({mt})", f"\\operatorname{{Poisson}}({ml})", rel="sim")
        else:
            th = _Sym("theta")
            tt, tl = (self.num(self.m.nb_theta),) * 2 if self.estimates else (th.text(), th.latex())
            self.eq(self.response(sub), f"NegBinomial({mt}, {tt})", f"\\operatorname{{NegBinomial}}({ml}, {tl})",
                    rel="sim")

    def residual(self, sub: str) -> None:
        if getattr(self.m, "family", None) is not None:
            self.conditional(sub)
            return
        eps = _Sym("epsilon", sub)
        w = self.d.weights is not None
        if self.estimates:
            v = self.num(self.m.sigma ** 2)
            t, l = (f"N(0, {v}/w{_sub_text(sub)})", f"N(0, {v}/w_{{{sub}}})") if w else (f"N(0, {v})", f"N(0, {v})")
        else:
            t, l = ((f"N(0, σ²/w{_sub_text(sub)})", f"N(0, \\sigma^2/w_{{{sub}}})") if w
                    else ("N(0, σ²)", r"N(0, \sigma^2)"))
        self.eq(eps, t, l, rel="sim")

    def covariance(self, block, syms: list[_Sym], labels: list[str], level: int, keys: list | None = None) -> None:
        """The distribution of one grouping factor's random effects (level: 0-based letter index),
        listed in the order of ``keys`` (their coefficients' indices; default the block's order)."""
        cols = _random_columns(self.d, block)
        k = len(cols)
        S = np.zeros((k, k))
        structural = np.zeros((k, k), dtype=bool)  # entries the model estimates
        mats = self.m.varcorr_matrices
        pos = 0
        for t in block.terms:
            term = self.d.terms[t]
            Sm = mats[term.vc_name].to_numpy()
            S[pos:pos + term.k, pos:pos + term.k] = Sm
            free = np.eye(term.k, dtype=bool) if term.cov.kind == "diag" else np.ones((term.k, term.k), dtype=bool)
            structural[pos:pos + term.k, pos:pos + term.k] = free
            pos += term.k
        big, small = _COV[level]
        order = sorted(range(k), key=lambda a: keys[a]) if keys is not None else list(range(k))
        S, structural = S[np.ix_(order, order)], structural[np.ix_(order, order)]
        syms, labels = [syms[a] for a in order], [labels[a] for a in order]

        def element(a: int, b: int, latex: bool) -> str:
            if not structural[a, b]:
                return "0"
            if self.estimates:
                return self.num(S[a, b])
            i, j = sorted((a, b))
            sub = labels[i] + labels[j] if len(labels[i]) == 1 and len(labels[j]) == 1 else f"{labels[i]},{labels[j]}"
            return _Sym(small, sub).latex() if latex else _Sym(small, sub).text()

        if k == 1:
            self.eq(syms[0], f"N(0, {element(0, 0, False)})", f"N(0, {element(0, 0, True)})", rel="sim")
            return
        vec_t = "(" + ", ".join(s.text() for s in syms) + ")ᵀ"
        vec_l = r"\begin{pmatrix} " + r" \\ ".join(s.latex() for s in syms) + r" \end{pmatrix}"
        mat_t = "[" + "; ".join(" ".join(element(a, b, False) for b in range(k)) for a in range(k)) + "]"
        mat_l = (r"\begin{pmatrix} " + r" \\ ".join(" & ".join(element(a, b, True) for b in range(k)) for a in range(k))
                 + r" \end{pmatrix}")
        bigl = _LATEX_MATRIX[big]
        self.eq(vec_t, f"N(0, {big}),  {big} = {mat_t}",
                f"N\\left(\\mathbf{{0}}, {bigl}\\right),\\quad {bigl} = {mat_l}", rel="sim")
        self.latex[-1] = ("eq", vec_l, self.latex[-1][2])

    # ---- rendering ----
    def render(self, where_text: str, where_latex: str, note: str | None = None) -> tuple[str, str]:
        lines, width = [], 0
        blocks: list[list[tuple[str, str, str]]] = []
        for item in self.text:
            if item[0] == "head":
                blocks.append([item])
            else:
                blocks[-1].append(item)
        for block in blocks:
            width = max((len(lhs) for kind, lhs, _ in block if kind == "eq"), default=0)
            for kind, lhs, rhs in block:
                lines.append(lhs + ":" if kind == "head" else f"  {lhs.rjust(width)} {rhs}")
        lines.append(where_text)
        if note:
            lines.append(note)
        text = "\n".join(lines)
        tex = [r"\begin{aligned}"]
        body = []
        for kind, lhs, rhs in self.latex:
            body.append(f"&\\text{{{_escape(lhs)}:}}" if kind == "head" else f"{lhs} &{rhs}")
        body.append(f"&{where_latex}")
        if note:
            body.append(f"&\\text{{{_escape(note)}}}")
        tex.append(" \\\\\n".join(body))
        tex.append(r"\end{aligned}")
        return text, "\n".join(tex)


def _where(d, indexed: list[tuple[str, object]]) -> tuple[str, str]:
    """The index line: what i, j, k stand for."""
    parts_t = [f"i: observation ({d.n})"] + [f"{ix}: {b.group} ({b.nlev})" for ix, b in indexed]
    parts_l = [f"i \\text{{: observation ({d.n})}}"] + [
        f"{ix} \\text{{: {_escape(b.group)} ({b.nlev})}}" for ix, b in indexed]
    return "where " + "; ".join(parts_t), r"\text{where }" + r",\ ".join(parts_l)


def equations(m, estimates: bool = False, digits: int = 2) -> Equations:
    """The model's equations: level by level where the grouping factors nest, else composite
    (see :mod:`jaxmlm._equations`). ``estimates=True``: the fitted numbers, rounded to ``digits``."""
    if not isinstance(digits, (int, np.integer)) or isinstance(digits, bool) or digits < 0:
        raise DataError(f"digits must be a non-negative integer, got {digits!r}")
    if not isinstance(estimates, (bool, np.bool_)):
        raise DataError(f"estimates must be True or False, got {estimates!r}")
    d = m.design
    fixed = _fixed_columns(d)
    blocks = list(m._blocks_lme4_order)
    random = {b.group: _random_columns(d, b) for b in blocks}  # checks the structures first
    if len(blocks) > len(_RANDOM):
        raise FormulaError(f"equations() writes at most {len(_RANDOM)} grouping factors; the model has {len(blocks)}")
    note = None
    chain = None
    if not d.held or d.frame is None:
        note = ("The fit keeps no rows (data in pieces), so the level of each predictor cannot be decided: "
                "the model is written in its composite form.")
    else:
        chain = _chain(blocks)
        if chain is None:
            note = (f"The grouping factors {', '.join(b.group for b in blocks)} are crossed (not nested), so the "
                    "model has no level-by-level form: it is written in its composite form.")
    if chain is not None:
        factors = {f for _, fs in fixed for f in fs} | {f for cols in random.values() for _, fs, _ in cols for f in fs}
        level_of = _levels_of(sorted(factors, key=lambda f: (f.expr, f.label or "")), d.frame, chain)
        bad = [(name, b.group) for i, b in enumerate(chain) for name, fs, _ in random[b.group]
               if any(level_of[f] >= i + 2 for f in fs)]
        if bad:
            name, g = bad[0]
            note = (f"The random slope of {name} on {g} is of a predictor constant within {g}, which the "
                    "level-by-level form cannot write: the model is written in its composite form.")
        else:
            return _levelled(m, fixed, random, chain, level_of, estimates, digits)
    return _composite_only(m, fixed, random, blocks, estimates, digits, note)


def _levelled(m, fixed, random, chain, level_of, estimates, digits) -> Equations:
    d = m.design
    H = len(chain) + 1  # number of levels
    groups_above = ["".join(_INDEX[lev - 1] for lev in range(ell, H)) for ell in range(1, H + 1)]
    # groups_above[ell - 1]: the group letters of levels ell+1..H, e.g. "jk" for level 1 of 3

    def var_sub(level: int) -> str:
        return ("i" if level == 1 else "") + "".join(_INDEX[lev - 2] for lev in range(max(level, 2), H + 1))

    def parts(fs: tuple[_Factor, ...]) -> tuple[tuple[_Factor, ...], ...]:
        return tuple(tuple(f for f in fs if level_of[f] == ell) for ell in range(1, H + 1))

    # the tree of coefficients: node = tuple of parts (P1, ..., Pl); children numbered 0 (empty part) then 1, 2, ...
    children: dict[tuple, list] = {}

    def add(path: tuple) -> None:
        for depth in range(1, len(path) + 1):
            parent, part = path[: depth - 1], path[depth - 1]
            kids = children.setdefault(parent, [])
            if part not in kids:
                kids.append(part)

    leaves = []  # (path, fixef name, factors in column order)
    for name, fs in fixed:
        path = parts(fs)
        add(path)
        leaves.append((path, name, fs))
    rand_nodes: dict[tuple, tuple[str, tuple[_Factor, ...]]] = {}  # (node, level) → (column, factors)
    for lev, b in enumerate(chain, start=2):
        for name, fs, _ in random[b.group]:
            path = parts(fs)[: lev - 1]
            add(path)
            if (path, lev) in rand_nodes:
                raise FormulaError(f"equations(): two random effects on {b.group} for the same coefficient ({name})")
            rand_nodes[(path, lev)] = (name, fs)

    def index(parent: tuple, part: tuple) -> int:
        kids = children[parent]
        if () in kids:
            return 0 if part == () else [k for k in kids if k != ()].index(part) + 1
        return kids.index(part) + 1

    def idx_of(path: tuple) -> tuple[int, ...]:
        return tuple(index(path[:i], path[i]) for i in range(len(path)))

    def coef(path: tuple) -> _Sym:
        depth = len(path)
        return _Sym(_COEF[depth - 1], _subscript(idx_of(path), groups_above[depth - 1]))

    def ranef(path: tuple, lev: int) -> _Sym:
        return _Sym(_RANDOM[lev - 2], _subscript(idx_of(path), groups_above[lev - 2]))

    def vars_of(fs) -> tuple[_Var, ...]:
        return tuple(_Var(f.display, var_sub(level_of[f])) for f in fs)

    def sorted_kids(parent: tuple) -> list[tuple]:
        return sorted(children.get(parent, []), key=lambda part: index(parent, part))

    estimate = dict(zip(d.fixef_names, m.fixef.to_numpy()))
    leaf_name = {path: name for path, name, _ in leaves}
    w = _Writer(m, estimates, digits)
    sub1 = var_sub(1)
    y = w.lhs(sub1)

    w.head("Level 1")
    terms = [(coef((p,)), vars_of(p)) for p in sorted_kids(())] + w.offsets(sub1) + w.noise(sub1)
    w.eq(y, *w.sum_(terms))
    for ell in range(2, H + 1):
        w.head(f"Level {ell}")
        nodes = _nodes_at(children, ell - 1)
        for node in sorted(nodes, key=idx_of):
            terms = []
            for part in sorted_kids(node):
                child = node + (part,)
                c = coef(child)
                if estimates and ell == H:
                    c = float(estimate[leaf_name[child]])
                terms.append((c, vars_of(part)))
            if (node, ell) in rand_nodes:
                terms.append((ranef(node, ell), ()))
            w.eq(coef(node), *w.sum_(terms))

    w.head("Composite")
    terms = []
    for path, name, fs in sorted(leaves, key=lambda leaf: idx_of(leaf[0])):
        terms.append((float(estimate[name]) if estimates else coef(path), vars_of(fs)))
    for lev in range(2, H + 1):
        for node in sorted((node for node, ell in rand_nodes if ell == lev), key=idx_of):
            _, fs = rand_nodes[(node, lev)]
            terms.append((ranef(node, lev), vars_of(fs)))
    terms += w.offsets(sub1) + w.noise(sub1)
    w.eq(y, *w.sum_(terms))

    w.head("Distributions")
    w.residual(sub1)
    for lev, b in enumerate(chain, start=2):
        syms, labels, keys = [], [], []
        for name, fs, _ in random[b.group]:
            node = parts(fs)[: lev - 1]
            syms.append(ranef(node, lev))
            labels.append(_indices(idx_of(node)))
            keys.append(idx_of(node))
        w.covariance(b, syms, labels, lev - 2, keys)
    where = _where(d, [(_INDEX[lev - 2], b) for lev, b in enumerate(chain, start=2)])
    text, latex = w.render(*where)
    return Equations(text, latex, H)


def _nodes_at(children: dict, depth: int) -> list[tuple]:
    """Nodes of the coefficient tree at ``depth`` (1: the level-1 coefficients)."""
    nodes = [()]
    for _ in range(depth):
        nodes = [n + (part,) for n in nodes for part in children.get(n, [])]
    return nodes


def _composite_only(m, fixed, random, blocks, estimates, digits, note) -> Equations:
    """The composite form with one index letter per grouping factor (crossed factors: Y_ijk)."""
    d = m.design
    letters = {b.group: _INDEX[i] for i, b in enumerate(blocks)}
    sub = "i" + "".join(letters[b.group] for b in blocks)
    number: dict[tuple, int] = {}
    nxt = 1
    for _, fs in fixed:
        if fs == ():
            number[fs] = 0
        elif fs not in number:
            number[fs] = nxt
            nxt += 1
    for b in blocks:
        for _, fs, _ in random[b.group]:
            if fs not in number:
                number[fs] = 0 if fs == () else nxt
                nxt += fs != ()

    def vars_of(fs):
        return tuple(_Var(f.display, sub) for f in fs)

    estimate = dict(zip(d.fixef_names, m.fixef.to_numpy()))
    w = _Writer(m, estimates, digits)
    y = w.lhs(sub)
    w.head("Composite")
    terms = [(float(estimate[name]) if estimates else _Sym("beta", str(number[fs])), vars_of(fs)) for name, fs in fixed]
    for i, b in enumerate(blocks):
        seen = set()
        for name, fs, _ in random[b.group]:
            if fs in seen:
                raise FormulaError(f"equations(): two random effects on {b.group} for the same column ({name})")
            seen.add(fs)
            terms.append((_Sym(_RANDOM[i], f"{number[fs]}{letters[b.group]}"), vars_of(fs)))
    terms += w.offsets(sub) + w.noise(sub)
    w.eq(y, *w.sum_(terms))
    w.head("Distributions")
    w.residual(sub)
    for i, b in enumerate(blocks):
        cols = random[b.group]
        syms = [_Sym(_RANDOM[i], f"{number[fs]}{letters[b.group]}") for _, fs, _ in cols]
        w.covariance(b, syms, [str(number[fs]) for _, fs, _ in cols], i, [number[fs] for _, fs, _ in cols])
    where = _where(d, [(letters[b.group], b) for b in blocks])
    text, latex = w.render(*where, note=note)
    return Equations(text, latex, None, note)
