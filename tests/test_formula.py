"""Stage 1: formula text → response, fixed part and lme4-expanded random-effects terms.

Expected expansions, labels and fixed parts come from lme4 1.1-31
(``findbars(lme4:::expandDoubleVerts(f))`` and ``nobars(f)`` in R 4.2), not
from the code under test.
"""

import re

import pytest

import jaxmlm
from jaxmlm._errors import FormulaError, FormulaSyntaxError, JaxmlmError
from jaxmlm._formula import ParsedFormula, RandomTerm, parse_formula


def bars(p: ParsedFormula) -> list[tuple[str, str]]:
    """(expr, group label) of each term, whitespace-normalized, as R deparses ``expr | group``."""
    return [(" ".join(t.expr.split()), t.group_name) for t in p.random]


# ---- the lme4 random-effects syntax ---------------------------------------------------------------

# formula, R's nobars() right-hand side, R's findbars() terms as (lhs, group)
LME4_EXPANSIONS = [
    ("y ~ x + (1 | g)", "x", [("1", "g")]),
    ("y ~ x + (x | g)", "x", [("x", "g")]),
    ("y ~ x + (1 + x | g)", "x", [("1 + x", "g")]),
    ("y ~ (0 + x | g)", "1", [("0 + x", "g")]),
    ("y ~ (-1 + x | g)", "1", [("-1 + x", "g")]),
    ("y ~ (x - 1 | g)", "1", [("x - 1", "g")]),
    # expandDoubleVerts
    ("y ~ (x || g)", "1", [("1", "g"), ("0 + x", "g")]),
    ("y ~ x + (x + z || g)", "x", [("1", "g"), ("0 + x", "g"), ("0 + z", "g")]),
    ("y ~ (1 + x + z || g)", "1", [("1", "g"), ("0 + x", "g"), ("0 + z", "g")]),
    ("y ~ (0 + x + z || g)", "1", [("0 + x", "g"), ("0 + z", "g")]),
    ("y ~ (0 + x || g)", "1", [("0 + x", "g")]),
    ("y ~ (x - 1 || g)", "1", [("0 + x", "g")]),
    ("y ~ (-1 + x || g)", "1", [("0 + x", "g")]),
    ("y ~ (x + 0 || g)", "1", [("0 + x", "g")]),
    ("y ~ (f || g)", "1", [("1", "g"), ("0 + f", "g")]),
    ("y ~ (x * z || g)", "1", [("1", "g"), ("0 + x", "g"), ("0 + z", "g"), ("0 + x:z", "g")]),
    ("y ~ (x:z || g)", "1", [("1", "g"), ("0 + x:z", "g")]),
    ("y ~ (x || a:b)", "1", [("1", "a:b"), ("0 + x", "a:b")]),
    # expandSlash: deepest first, nested factors named as R deparses them
    ("y ~ (1 | a/b)", "1", [("1", "b:a"), ("1", "a")]),
    ("y ~ (1 | a/b/c)", "1", [("1", "c:(b:a)"), ("1", "b:a"), ("1", "a")]),
    ("y ~ (1 | a/b/c/d)", "1", [("1", "d:(c:(b:a))"), ("1", "c:(b:a)"), ("1", "b:a"), ("1", "a")]),
    ("y ~ (1 | a/b:c)", "1", [("1", "b:c:a"), ("1", "a")]),
    ("y ~ (x || a/b)", "1", [("1", "b:a"), ("1", "a"), ("0 + x", "b:a"), ("0 + x", "a")]),
    ("y ~ (1 | a) + (1 | a/b)", "1", [("1", "a"), ("1", "b:a"), ("1", "a")]),
    # interactions, several and crossed terms, position of the bars
    ("y ~ (1 | a:b)", "1", [("1", "a:b")]),
    ("y ~ x * z + (1 | g) + (0 + x | h)", "x * z", [("1", "g"), ("0 + x", "h")]),
    ("y ~ (1 | g) + x", "x", [("1", "g")]),
    ("y ~ x + (1 | g) - 1", "x - 1", [("1", "g")]),
    ("y ~ 0 + x + (1 | g)", "0 + x", [("1", "g")]),
    ("y ~ -1 + x + (1 | g)", "-1 + x", [("1", "g")]),
    ("y ~ (1 | g) + (1 | g)", "1", [("1", "g"), ("1", "g")]),
    ("y ~ ((1 | g))", "1", [("1", "g")]),
    ("y ~ (1 | g) + ((x))", "((x))", [("1", "g")]),
    ("y ~ (x + I(x^2) || g)", "1", [("1", "g"), ("0 + x", "g"), ("0 + I(x ** 2)", "g")]),
    ("log(y) ~ x + (1 | g)", "x", [("1", "g")]),
]


@pytest.mark.parametrize("formula, fixed, expected", LME4_EXPANSIONS)
def test_lme4_expansions(formula, fixed, expected):
    p = parse_formula(formula)
    assert bars(p) == expected
    assert p.fixed_rhs == fixed
    assert p.fixed == f"{p.lhs} ~ {fixed}"


@pytest.mark.parametrize(
    "formula, factors",
    [
        ("y ~ (1 | g)", [("g",)]),
        ("y ~ (1 | a:b)", [("a", "b")]),
        ("y ~ (1 | a/b)", [("b", "a"), ("a",)]),
        ("y ~ (1 | a/b/c)", [("c", "b", "a"), ("b", "a"), ("a",)]),
        ("y ~ (1 | a/b:c)", [("b", "c", "a"), ("a",)]),
        # R's expandSlash mangles this one; we read it as (a:b)/c.
        ("y ~ (1 | a:b/c)", [("c", "a", "b"), ("a", "b")]),
        ("y ~ (1 | `my g`/`sub g`)", [("sub g", "my g"), ("my g",)]),
    ],
)
def test_grouping_factor_tuples(formula, factors):
    # Outermost factor last, so factor(f1:f2:...) has f1 slowest as R's interaction does.
    assert [t.factors for t in parse_formula(formula).random] == factors


def test_result_types():
    p = parse_formula("y ~ x + (1 + x | g)")
    assert isinstance(p, ParsedFormula)
    assert p.text == "y ~ x + (1 + x | g)"
    assert p.lhs == "y"
    assert all(isinstance(t, RandomTerm) for t in p.random)
    assert p.random == (RandomTerm("1 + x", ("g",), "g"),)


def test_span_points_at_the_bar_term():
    text = "y ~ x + (1 + x | g) + (1|h/k)"
    p = parse_formula(text)
    assert [text[slice(*t.span)] for t in p.random] == ["(1 + x | g)", "(1|h/k)", "(1|h/k)"]


def test_whitespace_free_and_spacious_formulas_agree():
    a = parse_formula("y~x+(1+x|g)+(1|h)")
    b = parse_formula("  y  ~  x  +  ( 1 + x  |  g )  +  ( 1 | h )  ")
    assert a.lhs == b.lhs and a.fixed_rhs == b.fixed_rhs
    assert [(t.expr.replace(" ", ""), t.factors, t.group_name) for t in a.random] == [
        (t.expr.replace(" ", ""), t.factors, t.group_name) for t in b.random
    ]


def test_backquoted_names_may_hold_syntax_characters():
    p = parse_formula("`y|1` ~ `x (cm)` + (`x (cm)` | `g|h`) + (1 | `a/b`)")
    assert p.lhs == "`y|1`"
    assert p.fixed_rhs == "`x (cm)`"
    assert [(t.expr, t.factors, t.group_name) for t in p.random] == [
        ("`x (cm)`", ("g|h",), "g|h"),
        ("1", ("a/b",), "a/b"),
    ]


def test_double_vert_keeps_backquoted_names_parseable():
    p = parse_formula("y ~ (`my x` + z || g)")
    assert [t.expr for t in p.random] == ["1", "0 + `my x`", "0 + z"]


# ---- R's arithmetic inside calls -------------------------------------------------------------


@pytest.mark.parametrize(
    "formula, fixed",
    [
        ("y ~ I(x^2) + (1 | g)", "I(x**2)"),  # Python's ^ is XOR: I(3^2) would be 1
        ("y ~ I((x + 1)^2) + (1 | g)", "I((x + 1)**2)"),
        ("y ~ log(x^2) + (1 | g)", "log(x**2)"),
        ("y ~ (a + b)^2 + (1 | g)", "(a + b)^2"),  # the formula operator stays
        ("y ~ x^2 + (1 | g)", "x^2"),
        ("y ~ I(x %% 3) + I(x %/% 3) + (1 | g)", "I(x % 3) + I(x // 3)"),
        ("y ~ a %in% b + (1 | g)", "a : b"),  # R: a %in% b is a:b (formulaic: b/a)
        ("y ~ I(x**2) + (1 | g)", "I(x**2)"),
        ("y ~ `x^2` + (1 | g)", "`x^2`"),
    ],
)
def test_r_operators_inside_calls(formula, fixed):
    assert parse_formula(formula).fixed_rhs == fixed


def test_r_operators_in_response_and_random_terms():
    p = parse_formula("I(y^2) ~ (I(x^2) | g)")
    assert p.lhs == "I(y**2)"
    assert p.random[0].expr == "I(x**2)"


# ---- errors ---------------------------------------------------------------------------------------


def caret(err: FormulaSyntaxError) -> int:
    """Column of the caret under the formula in the message (both indented by 4)."""
    *_, shown, mark = str(err).split("\n")
    assert shown == "    " + err.formula
    return mark.index("^") - 4


SYNTAX_ERRORS = [
    # formula, message fragment, caret position
    ("y ~ (x + (1|g)", "never closed", 4),
    ("y ~ x) + (1|g)", "has no '('", 5),
    ("y ~ x + (1|g) + (1|", "never closed", 16),
    ("y ~ log(x + (1|g)", "never closed", 7),
    ("y ~ x | g", "outside parentheses", 6),
    ("y ~ x + (|g)", "nothing before '|'", 9),
    ("y ~ x + (1|)", "no grouping factor", 11),
    ("y ~ x + (1 | )", "no grouping factor", 12),
    ("~ x + (1|g)", "no response", 0),
    ("y ~ x ~ z + (1|g)", "exactly one '~'", 6),
    ("y (1|g)", "exactly one '~'", 7),
    ("y ~ x + (1 | g + z)", "grouping factor must be a column name", 13),
    ("y ~ x + (1 | g/)", "grouping factor must be a column name", 15),
    ("y ~ x + (1 | log(g))", "grouping factor must be a column name", 13),
    ("y ~ x - (1 | g)", "cannot be subtracted", 8),
    ("y ~ x * (1 | g)", "added to the formula with '+'", 8),
    ("y ~ (1 | g)(1 | h)", "added to the formula with '+'", 4),
    ("y ~ log((1 | g))", "must stand on its own", 11),
    ("y ~ (x + (1 | g))", "must stand on its own", 12),
    ("y ~ x + (1 ||| g)", "'|||'", 13),
    ("y | z ~ x + (1 | g)", "right of '~'", 2),
    ("y ~ `x + (1 | g)", "never closed", 4),
    ("y ~ x + (1 + offset(z) | g)", "offset", 13),
    ("y ~ (x ** || g)", "cannot parse the random-effects term", 5),
]


@pytest.mark.parametrize("formula, fragment, position", SYNTAX_ERRORS)
def test_syntax_errors_show_where(formula, fragment, position):
    with pytest.raises(FormulaSyntaxError) as info:
        parse_formula(formula)
    err = info.value
    assert fragment in str(err)
    assert err.formula == formula
    assert err.position == position
    assert caret(err) == position
    assert "\x1b" not in str(err)  # no terminal colour codes
    assert isinstance(err, (FormulaError, JaxmlmError, ValueError))


@pytest.mark.parametrize("formula", ["y ~ x", "y ~ x + z", "y ~ 1", "y ~ (x + z)", "y ~ log(x)"])
def test_no_random_effects_term(formula):
    with pytest.raises(FormulaError, match="no random-effects term") as info:
        parse_formula(formula)
    assert not isinstance(info.value, FormulaSyntaxError)


@pytest.mark.parametrize("formula", [None, 3, b"y ~ (1|g)", ["y ~ (1|g)"]])
def test_formula_must_be_a_string(formula):
    with pytest.raises(FormulaError, match="must be a string"):
        parse_formula(formula)


def test_errors_are_exported():
    assert jaxmlm.FormulaSyntaxError is FormulaSyntaxError
    assert issubclass(FormulaSyntaxError, jaxmlm.FormulaError)
    assert issubclass(jaxmlm.FormulaError, jaxmlm.JaxmlmError)


def test_caret_message_layout():
    with pytest.raises(FormulaSyntaxError) as info:
        parse_formula("y ~ x + (1|)")
    assert re.fullmatch(r"no grouping factor after '\|'\n    y ~ x \+ \(1\|\)\n {15}\^", str(info.value))
