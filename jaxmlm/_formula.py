"""Stage 1 — formula text → terms.

Splits an lme4 formula into the fixed-effects formula (handed to formulaic
later) and the random-effects ("bar") terms, expanded as lme4 expands them:

* ``(x || g)``  → ``(1 | g) + (0 + x | g)``  (lme4's ``expandDoubleVerts``:
  one term per formula term, so ``(x * z || g)`` gives four; a factor stays
  one term)
* ``(1 | a/b)`` → ``(1 | b:a) + (1 | a)``      (lme4's ``expandSlash``; lme4
  names the nested factor ``b:a``, and ``c:(b:a)`` for three levels)

Only the ``( ... | ... )`` syntax is parsed here; everything inside the
left-hand side of a bar and the fixed part is formulaic's job. One R idiom is
translated on the way: ``^`` inside a function call (``I(x^2)``) is R's power,
but Python's XOR, so it becomes ``**`` (and ``%%`` becomes ``%``); outside
calls ``(a + b)^2`` is the formula operator, which formulaic reads as R does.

All scanning runs on a *masked* copy of the text in which backquoted names
and string literals are blanked, so a column called ```a|b``` or ```f(x)```
cannot be mistaken for syntax.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field


from ._errors import FormulaError, FormulaSyntaxError

__all__ = ["RandomTerm", "ParsedFormula", "parse_formula", "split_cbind"]

# An R name (letters, digits, '.', '_'; not starting with a digit) or a backquoted name.
_NAME = re.compile(r"\s*(`[^`]+`|[A-Za-z_.][A-Za-z0-9_.]*)\s*")
_SYNTACTIC = re.compile(r"[A-Za-z_.][A-Za-z0-9_.]*")
_MASK = "_"


@dataclass(frozen=True)
class RandomTerm:
    """One random-effects term ``(expr | group)`` after lme4's expansions.

    ``expr`` is the formulaic formula of the term's model matrix (e.g.
    ``"1 + Days"``); ``factors`` the grouping columns, outermost last as lme4
    orders them (``b:a`` is ``("b", "a")``); ``group_name`` lme4's label;
    ``span`` the ``(start, stop)`` slice of the whole bar term in the formula
    text, for error messages (``None`` when built by hand); ``structure`` its
    covariance structure (:data:`STRUCTURES`) and ``hom`` whether its variances
    are one (``hom = TRUE``; ar1's default, as glmmTMB's).
    """

    expr: str
    factors: tuple[str, ...]
    group_name: str
    span: tuple[int, int] | None = field(default=None, compare=False)
    structure: str = "us"
    hom: bool = False


@dataclass(frozen=True)
class ParsedFormula:
    """A formula split into response, fixed-effects part and random terms."""

    text: str
    lhs: str
    fixed_rhs: str
    random: tuple[RandomTerm, ...]
    #: a GLMM's formula: lme4's glmerControl skips the checks of levels against observations
    glmm: bool = False

    @property
    def fixed(self) -> str:
        """The fixed-effects formula as formulaic reads it."""
        return f"{self.lhs} ~ {self.fixed_rhs}"


# ---- masking -------------------------------------------------------------------


def _mask_quoted(text: str, formula: str | None = None, offset: int = 0) -> str:
    """``text`` with the insides of backquoted names and string literals blanked.

    The result has the same length, so positions found in it index ``text``.
    Quotes left open are a syntax error (reported against ``formula``).
    """
    out = list(text)
    i = 0
    while i < len(text):
        q = text[i]
        if q in "`'\"":
            j = text.find(q, i + 1)
            if j < 0:
                what = "backquoted name" if q == "`" else "string"
                raise FormulaSyntaxError(f"this {what} is never closed (missing {q})", formula or text, offset + i)
            out[i + 1 : j] = _MASK * (j - i - 1)
            i = j + 1
        else:
            i += 1
    return "".join(out)


def _matching_paren(masked: str, start: int, formula: str, offset: int) -> int:
    depth = 0
    for i in range(start, len(masked)):
        if masked[i] == "(":
            depth += 1
        elif masked[i] == ")":
            depth -= 1
            if depth == 0:
                return i
    raise FormulaSyntaxError("unbalanced parenthesis: this '(' is never closed", formula, offset + start)


def _top_level_bar(inner: str) -> tuple[int, int] | None:
    """Position and width (1 or 2) of a ``|``/``||`` not nested in parentheses."""
    depth = 0
    for i, c in enumerate(inner):
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "|" and depth == 0:
            return (i, 2) if inner[i + 1 : i + 2] == "|" else (i, 1)
    return None


def _unwrap(masked: str, a: int, b: int) -> tuple[int, int]:
    """Strip redundant parentheses: ``((1 | g))`` is ``(1 | g)``, as lme4's findbars sees it.

    ``a``/``b`` index the outer ``(``/``)``; returns the innermost pair that
    still encloses everything between them.
    """
    while True:
        inner = masked[a + 1 : b]
        lead = len(inner) - len(inner.lstrip())
        trail = len(inner) - len(inner.rstrip())
        s, e = a + 1 + lead, b - 1 - trail
        if s < e and masked[s] == "(" and _close_of(masked, s) == e:
            a, b = s, e
        else:
            return a, b


def _close_of(masked: str, start: int) -> int:
    depth = 0
    for i in range(start, len(masked)):
        depth += masked[i] == "("
        depth -= masked[i] == ")"
        if depth == 0:
            return i
    return -1


# ---- R → Python translation ------------------------------------------------------


def _is_call(masked: str, i: int) -> bool:
    """Whether the '(' at ``i`` opens a function call (``log(``, ``np.exp (``) rather than a group."""
    before = masked[:i].rstrip()
    return bool(before) and (before[-1].isalnum() or before[-1] in "._`)]")


def _translate_r_operators(expr: str) -> str:
    """Rewrite R operators formulaic reads otherwise: in calls ``^`` → ``**``, ``%%`` → ``%``, ``%/%`` → ``//``.

    formulaic evaluates the inside of a call as Python, where ``^`` is XOR:
    ``I(x^2)`` on an integer column would silently give ``x XOR 2``. Outside
    calls ``^`` is the formula operator (``(a + b)^2``), left alone, and R's
    ``a %in% b`` (the interaction ``a:b``) becomes ``a:b``: formulaic would
    read it as ``b/a`` and add ``b``'s main effect.
    """
    masked = _mask_quoted(expr)
    out: list[str] = []
    calls: list[bool] = []  # one entry per open parenthesis: is it a call?
    i = 0
    while i < len(masked):
        c = masked[i]
        if c == "(":
            calls.append(_is_call(masked, i))
        elif c == ")" and calls:
            calls.pop()
        if not any(calls) and masked.startswith("%in%", i):
            out.append(":")  # R: `a %in% b` is a:b; formulaic reads it as b/a
            i += 4
            continue
        if any(calls) and c in "^%":
            if c == "^":
                out.append("**")
            elif masked.startswith("%%", i):
                out.append("%")
                i += 1
            elif masked.startswith("%/%", i):
                out.append("//")
                i += 2
            else:
                out.append(c)
        else:
            out.append(expr[i])
        i += 1
    return "".join(out)


# ---- grouping factors --------------------------------------------------------------


def _split_keep_offsets(masked: str, sep: str, offset: int) -> list[tuple[int, int]]:
    """(start, stop) of the ``sep``-separated pieces of ``masked``, shifted by ``offset``."""
    parts, start = [], 0
    for i, c in enumerate(masked):
        if c == sep:
            parts.append((offset + start, offset + i))
            start = i + 1
    parts.append((offset + start, offset + len(masked)))
    return parts


def _strip_ticks(name: str) -> str:
    return name[1:-1] if name.startswith("`") else name


def _parse_group(formula: str, masked: str, start: int, stop: int) -> list[tuple[tuple[str, ...], str]]:
    """Parse the grouping part ``formula[start:stop]`` (``a``, ``a:b``, ``a/b/c``).

    Returns lme4's expandSlash list of (factor tuple, label), deepest first:
    ``a/b/c`` → ``c:(b:a)``, ``b:a``, ``a`` — the order matters for lme4's
    ordering of terms with equal numbers of levels. The label is R's deparse
    of the interaction call: ``b:a``, ``c:(b:a)``, and ``b:c:a`` for ``a/b:c``.
    """
    levels: list[tuple[tuple[str, ...], str]] = []
    for p0, p1 in _split_keep_offsets(masked[start:stop], "/", start):
        names = []
        for n0, n1 in _split_keep_offsets(masked[p0:p1], ":", p0):
            m = _NAME.fullmatch(formula[n0:n1])
            if not m:
                piece = formula[n0:n1]
                pos = n0 + len(piece) - len(piece.lstrip()) if piece.strip() else n0
                raise FormulaSyntaxError(
                    "a grouping factor must be a column name, or names joined by ':' or '/'", formula, pos
                )
            names.append(_strip_ticks(m.group(1)))
        levels.append((tuple(names), ":".join(names)))
    out: list[tuple[tuple[str, ...], str]] = []
    acc: tuple[str, ...] = ()
    label = ""
    for names, lab in levels:
        if acc:
            # deparse(`:`(inner, outer)): the right operand is parenthesized when it is itself a ':'.
            label = f"{lab}:({label})" if len(acc) > 1 else f"{lab}:{label}"
        else:
            label = lab
        acc = names + acc
        out.append((acc, label))
    return out[::-1]


# ---- '||' --------------------------------------------------------------------------


def _factor_text(factor) -> str:
    """A formulaic factor back as formula text (non-syntactic names backquoted)."""
    if factor.eval_method.name == "LOOKUP" and not _SYNTACTIC.fullmatch(factor.expr):
        return f"`{factor.expr}`"
    return factor.expr


def _expand_double_vert(expr: str, formula: str, position: int) -> list[str]:
    """lme4's expandDoubleVerts: ``(x + z || g)`` → ``1``, ``0 + x``, ``0 + z``.

    One uncorrelated term per term of the formula ``expr`` as R's ``terms()``
    sees it, so interactions are expanded first (``x * z`` gives ``x``, ``z``
    and ``x:z``) and a factor stays one term (with all its levels).
    """
    import formulaic  # only for `||`: formulaic is slow to import

    try:
        terms = list(formulaic.Formula(expr))
    except (formulaic.errors.FormulaicError, SyntaxError) as exc:
        message = f"cannot parse the random-effects term {expr!r}: {_plain(exc)}"
        raise FormulaSyntaxError(message, formula, position) from None
    out = []
    for t in terms:
        factors = [f for f in t.factors if not (f.eval_method.name == "LITERAL" and f.expr == "1")]
        if not factors:
            out.append("1")
        else:
            out.append("0 + " + ":".join(_factor_text(f) for f in factors))
    return out


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _plain(exc: BaseException) -> str:
    """formulaic's message without its ANSI colours and ⧛…⧚ markers, on one line."""
    msg = _ANSI.sub("", str(exc)).split("\n\n")[0]
    return " ".join(msg.replace("⧛", "").replace("⧚", "").split())


# ---- the formula ---------------------------------------------------------------------


def _neighbours(masked: str, a: int, b: int) -> tuple[int | None, int | None]:
    """Index of the nearest non-blank character before ``a`` and at/after ``b``."""
    i = a - 1
    while i >= 0 and masked[i].isspace():
        i -= 1
    j = b
    while j < len(masked) and masked[j].isspace():
        j += 1
    return (i if i >= 0 else None), (j if j < len(masked) else None)


def parse_formula(formula: str) -> ParsedFormula:
    """Split an lme4 formula into response, fixed part and expanded bar terms.

    Raises :class:`FormulaSyntaxError` (with a caret under the offending
    position) for malformed text and :class:`FormulaError` when there is no
    random-effects term.
    """
    if not isinstance(formula, str):
        raise FormulaError(
            f"formula must be a string such as 'y ~ x + (1 | g)', got {type(formula).__name__} {formula!r:.80}"
        )
    return _parse(formula)


@functools.lru_cache(maxsize=256)  # the result is immutable; refits and batches re-parse the same text
def _parse(formula: str) -> ParsedFormula:
    masked = _mask_quoted(formula)
    if masked.count("~") != 1:
        first = masked.find("~")
        pos = masked.find("~", first + 1) if first >= 0 else len(formula)
        raise FormulaSyntaxError("a formula needs exactly one '~' between response and predictors", formula, pos)
    tilde = masked.index("~")
    lhs = formula[:tilde].strip()
    if not lhs:
        raise FormulaSyntaxError("the formula has no response before '~'", formula, 0)
    depth = 0
    for i, c in enumerate(masked):
        depth += c == "("
        depth -= c == ")"
        if depth < 0:
            raise FormulaSyntaxError("unbalanced parenthesis: this ')' has no '('", formula, i)
    if depth > 0:
        unclosed = next(i for i, c in enumerate(masked) if c == "(" and _close_of(masked, i) < 0)
        raise FormulaSyntaxError("unbalanced parenthesis: this '(' is never closed", formula, unclosed)
    if "|" in masked[:tilde]:
        raise FormulaSyntaxError("random-effects terms belong on the right of '~'", formula, masked.index("|"))

    random: list[RandomTerm] = []
    spans: list[tuple[int, int]] = []
    i = tilde + 1
    while i < len(masked):
        c = masked[i]
        if c == "|":
            raise FormulaSyntaxError("'|' outside parentheses: write random effects as (expr | group)", formula, i)
        if c != "(":
            i += 1
            continue
        j = _matching_paren(masked, i, formula, 0)
        a, b = _unwrap(masked, i, j)
        structure, hom, start = "us", None, i
        if _is_call(masked, i) and _top_level_bar(masked[i + 1 : j]) is not None:  # name(expr | g, ...)
            structure, hom, start, b = _structure_call(formula, masked, i, j)
            a = i
        bar = None if _is_call(masked, i) and structure == "us" and start == i else _top_level_bar(masked[a + 1 : b])
        if bar is None:
            if "|" in masked[i:j]:
                raise FormulaSyntaxError(
                    "a random-effects term (expr | group) must stand on its own, added to the formula with '+'",
                    formula,
                    masked.index("|", i),
                )
            i = j + 1
            continue
        before, after = _neighbours(masked, start, j + 1)
        if before is not None and masked[before] == "-":
            raise FormulaSyntaxError("a random-effects term cannot be subtracted", formula, start)
        if (before is not None and masked[before] not in "+~") or (after is not None and masked[after] not in "+-"):
            raise FormulaSyntaxError(
                "a random-effects term (expr | group) must be added to the formula with '+'", formula, start
            )
        pos, width = bar
        if width == 2 and start != i:
            raise FormulaSyntaxError(f"'||' inside {structure}(): write diag(... | g) for uncorrelated effects",
                                     formula, a + 1 + pos)
        bar_at = a + 1 + pos
        expr = formula[a + 1 : bar_at].strip()
        if not expr:
            raise FormulaSyntaxError("nothing before '|' in a random-effects term", formula, bar_at)
        g0, g1 = bar_at + width, b
        if not formula[g0:g1].strip():
            raise FormulaSyntaxError("no grouping factor after '|'", formula, g0)
        if masked[g0:g1].lstrip().startswith("|"):
            raise FormulaSyntaxError("'|||' is not a random-effects operator; use '|' or '||'", formula, g0)
        off = re.search(r"(?<![\w.])offset\s*\(", masked[a + 1 : bar_at])
        if off:
            raise FormulaSyntaxError("offset() belongs in the fixed part of the formula, not in a random-effects term",
                                     formula, a + 1 + off.start())
        expr = _translate_r_operators(expr)
        exprs = _expand_double_vert(expr, formula, a + 1) if width == 2 else [expr]
        nests = _parse_group(formula, masked, g0, g1)
        # lme4 expands '||' first, then the slash in each resulting term.
        for e in exprs:
            for factors, label in nests:
                random.append(RandomTerm(e, factors, label, span=(start, j + 1), structure=structure,
                                         hom=bool(hom) if hom is not None else structure == "ar1"))
        spans.append((start, j + 1))
        i = j + 1

    if not random:
        raise FormulaError(
            f"the formula {formula!r} has no random-effects term; add one such as "
            "'(1 | group)' (for a model without random effects use ordinary least squares)"
        )
    return ParsedFormula(
        text=formula,
        lhs=_translate_r_operators(lhs),
        fixed_rhs=_translate_r_operators(_fixed_part(formula, masked, tilde, spans)),
        random=tuple(random),
    )


#: Covariance structures of a random-effects term, as lme4 ≥ 2.0 and glmmTMB write them:
#: ``us(1 + x | g)`` (unstructured, the default), ``diag(...)``, ``cs(...)``, ``ar1(...)``.
STRUCTURES = ("us", "diag", "cs", "ar1")


def _structure_call(formula: str, masked: str, i: int, j: int) -> tuple[str, bool | None, int, int]:
    """A structure call ``name(expr | g[, hom = TRUE])`` whose '(' is at ``i`` and ')' at ``j``:
    (name, hom or None, where the name starts, where the bar term ends)."""
    m = re.search(r"([A-Za-z_.][A-Za-z0-9_.]*)\s*$", masked[:i])
    name = m.group(1) if m else ""
    if name not in STRUCTURES:
        raise FormulaSyntaxError(
            f"unknown covariance structure {name + '()' if name else ''}: a random-effects term is (expr | g) or "
            "one of us(expr | g) (unstructured), diag(expr | g), cs(expr | g) (compound symmetry), ar1(expr | g)",
            formula, m.start(1) if m else i)
    depth, commas = 0, []
    for k in range(i + 1, j):
        depth += masked[k] == "("
        depth -= masked[k] == ")"
        if masked[k] == "," and depth == 0:
            commas.append(k)
    end = commas[0] if commas else j
    hom = None
    for c0, c1 in zip(commas, [*commas[1:], j]):
        opt = re.fullmatch(r"\s*hom\s*=\s*(TRUE|FALSE|True|False|T|F)\s*", formula[c0 + 1 : c1])
        if not opt:
            raise FormulaSyntaxError(f"{name}() takes one random-effects term and optionally hom = TRUE or FALSE",
                                     formula, c0 + 1)
        hom = opt.group(1).startswith("T")
    if hom is not None and name == "us":
        raise FormulaSyntaxError("us() has no hom option (an unstructured covariance has a variance per column)",
                                 formula, commas[0] + 1)
    return name, hom, m.start(1), end


def _fixed_part(formula: str, masked: str, tilde: int, spans: list[tuple[int, int]]) -> str:
    """The right-hand side with the bar terms (and the '+' joining each) removed.

    ``x + (1 | g) - 1`` → ``x - 1``; ``(1 | g)`` alone → ``1`` (lme4's nobars).
    """
    text, mask = list(formula), list(masked)
    for a, b in spans:
        for k in range(a, b):
            text[k] = mask[k] = " "
        before, after = _neighbours("".join(mask), a, b)
        joint = before if before is not None and mask[before] == "+" else after
        if joint is not None and mask[joint] == "+":
            text[joint] = mask[joint] = " "
    rhs = " ".join("".join(text[tilde + 1 :]).split())
    return rhs or "1"


def split_cbind(lhs: str) -> tuple[str, str]:
    """The two arguments of a ``cbind(successes, failures)`` left-hand side, as text."""
    inner = lhs.strip()[len("cbind("):-1]
    depth = 0
    for i, ch in enumerate(inner):
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            return inner[:i].strip(), inner[i + 1:].strip()
    raise FormulaError(f"cbind() on the left-hand side needs two arguments, successes and failures: {lhs!r}")
