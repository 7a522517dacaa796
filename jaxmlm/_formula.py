"""Stage 1 — formula text → terms.

Splits an lme4 formula into the fixed-effects formula (handed to formulaic
later) and the random-effects ("bar") terms, expanded as lme4 expands them:

* ``(x || g)``  → ``(1 | g) + (0 + x | g)``  (lme4's ``expandDoubleVerts``:
  one term per formula term; a factor stays one term)
* ``(1 | a/b)`` → ``(1 | b:a) + (1 | a)``      (lme4's ``expandSlash``; lme4
  names the nested factor ``b:a``, and ``c:(b:a)`` for three levels)

Only the ``( ... | ... )`` syntax is parsed here; everything inside the
left-hand side of a bar and the fixed part is formulaic's job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ._errors import FormulaError, FormulaSyntaxError

__all__ = ["RandomTerm", "ParsedFormula", "parse_formula"]

_NAME = re.compile(r"\s*(`[^`]+`|[A-Za-z_.][A-Za-z0-9_.]*)\s*")


@dataclass(frozen=True)
class RandomTerm:
    """One random-effects term ``(expr | group)`` after lme4's expansions.

    ``expr`` is the formulaic formula of the term's model matrix (e.g.
    ``"1 + Days"``); ``factors`` the grouping columns, outermost last as lme4
    orders them (``b:a`` is ``("b", "a")``); ``group_name`` lme4's label.
    """

    expr: str
    factors: tuple[str, ...]
    group_name: str


@dataclass(frozen=True)
class ParsedFormula:
    """A formula split into response, fixed-effects part and random terms."""

    text: str
    lhs: str
    fixed_rhs: str
    random: tuple[RandomTerm, ...]

    @property
    def fixed(self) -> str:
        """The fixed-effects formula as formulaic reads it."""
        return f"{self.lhs} ~ {self.fixed_rhs}"


def _matching_paren(text: str, start: int, formula: str, offset: int) -> int:
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                return i
    raise FormulaSyntaxError("unbalanced parenthesis: this '(' is never closed", formula, offset + start)


def _top_level_bar(inner: str) -> tuple[int, int] | None:
    """Position and width (1 or 2) of a ``|``/``||`` not nested in parentheses."""
    depth = 0
    i = 0
    while i < len(inner):
        c = inner[i]
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "|" and depth == 0:
            return (i, 2) if inner[i + 1 : i + 2] == "|" else (i, 1)
        i += 1
    return None


def _strip_ticks(name: str) -> str:
    return name[1:-1] if name.startswith("`") else name


def _parse_group(text: str, formula: str, offset: int) -> list[tuple[str, ...]]:
    """Parse ``a``, ``a:b`` or ``a/b/c`` into lme4's list of factor tuples.

    ``a/b/c`` expands (expandSlash) to ``c:(b:a)``, ``b:a``, ``a`` — in that order,
    which matters for lme4's ordering of terms with equal numbers of levels.
    """
    nests: list[tuple[str, ...]] = []
    for part_text, part_off in _split_keep_offsets(text, "/", offset):
        names = []
        for name_text, name_off in _split_keep_offsets(part_text, ":", part_off):
            m = _NAME.fullmatch(name_text)
            if not m:
                pos = name_off + len(name_text) - len(name_text.lstrip())
                raise FormulaSyntaxError(
                    "a grouping factor must be a column name, or names joined by ':' or '/'",
                    formula,
                    pos,
                )
            names.append(_strip_ticks(m.group(1)))
        nests.append(tuple(names))
    # expandSlash: a/b -> a, b:a ; each deeper level is "inner:(outer)".
    out: list[tuple[str, ...]] = []
    acc: tuple[str, ...] = ()
    for level in nests:
        acc = level + acc
        out.append(acc)
    return out[::-1]


def _split_keep_offsets(text: str, sep: str, offset: int) -> list[tuple[str, int]]:
    parts, start = [], 0
    for i, c in enumerate(text):
        if c == sep:
            parts.append((text[start:i], offset + start))
            start = i + 1
    parts.append((text[start:], offset + start))
    return parts


def _split_terms(expr: str) -> list[str]:
    """Top-level ``+``-separated pieces of a term's left-hand side."""
    pieces, depth, start = [], 0, 0
    for i, c in enumerate(expr):
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "+" and depth == 0:
            pieces.append(expr[start:i].strip())
            start = i + 1
    pieces.append(expr[start:].strip())
    return [p for p in pieces if p]


def _expand_double_vert(expr: str) -> list[str]:
    """lme4's expandDoubleVerts: one uncorrelated term per formula term."""
    pieces = _split_terms(expr)
    has_intercept = True
    terms = []
    for p in pieces:
        if p in ("0", "-1", "- 1"):
            has_intercept = False
        elif p == "1":
            continue
        elif p.startswith("-"):
            if p.replace(" ", "") == "-1":
                has_intercept = False
            else:
                terms.append(p)
        else:
            # "x - 1" inside one piece
            m = re.fullmatch(r"(.*?)\s*-\s*1", p)
            if m:
                has_intercept = False
                terms.append(m.group(1))
            else:
                terms.append(p)
    out = ["1"] if has_intercept else []
    out += [f"0 + {t}" for t in terms]
    return out


def _nested_label(factors: tuple[str, ...]) -> str:
    # lme4 deparses b:a as "b:a" and c:(b:a) as "c:(b:a)".
    if len(factors) <= 2:
        return ":".join(factors)
    return f"{factors[0]}:({_nested_label(factors[1:])})"


def parse_formula(formula: str) -> ParsedFormula:
    """Split an lme4 formula into response, fixed part and expanded bar terms.

    Raises :class:`FormulaSyntaxError` (with a caret under the offending
    position) for malformed text and :class:`FormulaError` when there is no
    random-effects term.
    """
    if not isinstance(formula, str):
        raise FormulaError(f"the formula must be a string, got {type(formula).__name__}")
    if formula.count("~") != 1:
        pos = formula.find("~", formula.find("~") + 1) if formula.count("~") > 1 else len(formula)
        raise FormulaSyntaxError("a formula needs exactly one '~' between response and predictors", formula, pos)
    tilde = formula.index("~")
    lhs = formula[:tilde].strip()
    if not lhs:
        raise FormulaSyntaxError("the formula has no response before '~'", formula, 0)
    rhs_off = tilde + 1
    rhs = formula[rhs_off:]

    depth = 0
    for i, c in enumerate(formula):
        depth += c == "("
        depth -= c == ")"
        if depth < 0:
            raise FormulaSyntaxError("unbalanced parenthesis: this ')' has no '('", formula, i)

    random: list[RandomTerm] = []
    spans: list[tuple[int, int]] = []
    i = 0
    while i < len(rhs):
        if rhs[i] == "(":
            j = _matching_paren(rhs, i, formula, rhs_off)
            inner = rhs[i + 1 : j]
            bar = _top_level_bar(inner)
            if bar is not None:
                pos, width = bar
                expr, group = inner[:pos].strip(), inner[pos + width :]
                bar_at = rhs_off + i + 1 + pos
                if not expr:
                    raise FormulaSyntaxError("nothing before '|' in a random-effects term", formula, bar_at)
                if not group.strip():
                    raise FormulaSyntaxError("no grouping factor after '|'", formula, bar_at + width)
                exprs = _expand_double_vert(expr) if width == 2 else [expr]
                nests = _parse_group(group, formula, rhs_off + i + 1 + pos + width)
                # lme4 expands '||' first, then the slash in each resulting term.
                for e in exprs:
                    for factors in nests:
                        random.append(RandomTerm(e, factors, _nested_label(factors)))
                spans.append((i, j + 1))
                i = j + 1
                continue
            i = j + 1
            continue
        if rhs[i] == "|":
            raise FormulaSyntaxError(
                "'|' outside parentheses: write random effects as (expr | group)", formula, rhs_off + i
            )
        i += 1

    if not random:
        raise FormulaError(
            f"the formula {formula!r} has no random-effects term; add one such as "
            "'(1 | group)' (for a model without random effects use ordinary least squares)"
        )

    fixed = rhs
    for a, b in reversed(spans):
        before = fixed[:a].rstrip()
        if before.endswith("-"):
            raise FormulaSyntaxError("a random-effects term cannot be subtracted", formula, rhs_off + a)
        fixed = fixed[:a] + " " * (b - a) + fixed[b:]
    fixed = re.sub(r"(\+\s*)+\+", "+", fixed)
    fixed = re.sub(r"^\s*\+|\+\s*$", "", fixed.strip()).strip()
    while fixed.startswith("+") or fixed.endswith("+"):
        fixed = fixed.strip("+").strip()
    if not fixed:
        fixed = "1"
    return ParsedFormula(text=formula, lhs=lhs, fixed_rhs=fixed, random=tuple(random))
