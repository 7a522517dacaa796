"""R's rules for rounding and printing numbers, in one place (R 4.2, the reference version).

``zapsmall`` rounds before hypotheses are compared (lmerTest) and before
columns are printed (printCoefmat); ``r_format`` is ``format(x, digits)``
of a numeric vector; ``format_pvalues_r`` is ``format.pval``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["zapsmall", "r_format", "format_pvalues_r"]


def zapsmall(x, digits: int = 7) -> np.ndarray:
    """R 4.2's ``zapsmall``: round to ``digits`` significant digits of the largest finite entry.

    The number of decimals is ``digits − log10(max|x|)`` rounded half up (R's
    ``round`` rounds a fractional ``digits`` so), at least 0.
    """
    x = np.asarray(x, dtype=float)
    fin = np.abs(x[np.isfinite(x)])
    mx = fin.max() if fin.size else 0.0
    d = max(0, int(np.floor(digits - np.log10(mx) + 0.5))) if mx > 0 else digits
    return np.round(x, d) + 0.0  # + 0.0: no negative zeros


def _sig_digits(x: float, digits: int) -> tuple[int, int]:
    """(significant digits needed, decimal exponent) of x rounded to ``digits`` significant digits."""
    mant, exp = f"{abs(x):.{digits - 1}e}".split("e")
    return len(mant.replace(".", "").rstrip("0")) or 1, int(exp)


def _nonfinite(v: float) -> str:
    return "NA" if np.isnan(v) else ("Inf" if v > 0 else "-Inf")


def r_format(values, digits: int = 7) -> list[str]:
    """R's ``format(x, digits)`` of a numeric vector: one common layout, fixed unless scientific is narrower.

    Each element keeps at least ``digits`` significant digits (trailing zeros
    dropped), the column shares one number of decimals, and scientific
    notation is chosen only when it is narrower than fixed (R's formatReal
    with scipen = 0). Non-finite values print as NA, Inf, -Inf.
    """
    x = np.asarray(values, dtype=float) + 0.0  # + 0.0: a negative zero prints as 0, as R's encodeReal
    fin = x[np.isfinite(x)]
    if not fin.size:
        return [_nonfinite(v) for v in x]
    neg = int(np.any(fin < 0))
    sig, exps = zip(*(_sig_digits(v, digits) if v != 0 else (1, 0) for v in fin))
    rgt = max(0, max(s - 1 - e for s, e in zip(sig, exps)))
    # R's formatReal: the widest integer part counts its own sign, not the sign of another entry
    left = max(int(v < 0) + max(e + 1, 1) for v, e in zip(fin, exps))
    fixed_w = left + (rgt > 0) + rgt
    mf = max(sig)
    big = max(abs(e) for e in exps) >= 100
    sci_w = neg + (mf + 1 if mf > 1 else mf) + (5 if big else 4)
    out = []
    for v in x:
        if not np.isfinite(v):
            out.append(_nonfinite(v))
        elif fixed_w <= sci_w:
            out.append(f"{v:.{rgt}f}")
        else:
            m, e = f"{v:.{mf - 1}e}".split("e")
            out.append(f"{m}e{int(e):+03d}")
    w = max(len(s) for s in out)
    return [s.rjust(w) for s in out]


def format_pvalues_r(p, digits: int = 4) -> list[str]:
    """R's ``format.pval(p, digits, eps = .Machine$double.eps)``.

    p-values ≥ 1e-3 (≥ 1e-4 when digits > 1) are formatted together, smaller ones together;
    values below eps print as ``< 2.2e-16`` (fewer digits when the others are
    narrow, as R shortens it); missing ones as "".
    """
    p = np.asarray(p, dtype=float)
    eps = np.finfo(float).eps
    out = [""] * len(p)
    ok = np.isfinite(p)
    small = ok & (p < eps)
    rest = ok & ~small
    expo = np.floor(np.log10(np.where(p > 0, p, 1e-50)))
    fixp = (expo >= -3) | ((expo == -4) & (digits > 1))
    for group in (rest & fixp, rest & ~fixp):
        idx = np.flatnonzero(group)
        for i, s in zip(idx, r_format(p[idx], digits) if idx.size else []):
            out[i] = s.strip()
    if small.any():
        d = max(1, digits - 2)
        if rest.any():
            nc = max(len(out[i]) for i in np.flatnonzero(rest))
            if d > 1 and d + 6 > nc:
                d = max(1, nc - 7)
            sep = "" if d == 1 and nc <= 6 else " "
        else:
            sep = "" if d == 1 else " "
        text = "<" + sep + r_format([eps], d)[0].strip()
        for i in np.flatnonzero(small):
            out[i] = text
    return out


def _vowel(c: str) -> bool:
    return c in "aeiou"


def _strip_to(name: str, minlength: int) -> str:
    """R's C routine ``stripchars`` (method "left.kept", use.classes = TRUE) for one name.

    Characters are dropped from the right, never the first of a word, in four rounds until
    the name is short enough: lower-case vowels that end a word, other lower-case vowels,
    lower-case letters that end a word, other lower-case letters; then anything.
    """
    b = list(name.strip())
    if len(b) <= minlength:
        return "".join(b)

    def first(i):
        return b[i - 1].isspace()

    def last(i):
        return not b[i - 1].isspace() and (i + 1 == len(b) or b[i + 1].isspace())

    def short():
        return len(b) - sum(c.isspace() for c in b) <= minlength

    rounds = [lambda i: _vowel(b[i]) and last(i), lambda i: _vowel(b[i]) and not first(i),
              lambda i: b[i].islower() and last(i), lambda i: b[i].islower() and not first(i),
              lambda i: not first(i) and not b[i].isspace()]
    for drop in rounds:
        for i in range(len(b) - 1, 0, -1):
            if i < len(b) and drop(i):
                del b[i]
            if short():
                return "".join(b).replace(" ", "")
    return "".join(b).replace(" ", "")


def abbreviate(names, minlength: int = 4) -> list[str]:
    """R's ``abbreviate(names, minlength)``: names shortened as R shortens them, kept distinct.

    Where two names would shorten to the same text, those get one character more, as R does.
    lme4 labels the columns of the fixed effects' correlation matrix with ``minlength = 6``.
    """
    names = [str(n) for n in names]
    out = [_strip_to(n, minlength) for n in names]
    length = minlength
    while len(set(out)) < len(out) and length < max(len(n) for n in names):
        length += 1
        seen = {}
        for i, a in enumerate(out):
            seen.setdefault(a, []).append(i)
        for idx in seen.values():
            if len(idx) > 1:
                for i in idx:
                    out[i] = _strip_to(names[i], length)
    return out


_SPACED = {"~", "+", "-", "*", "|", "||", "==", "!=", "<", ">", "<=", ">=", "&", "&&", "=", "<-"}
_TIGHT = {":", "/", "^", "$", "@", "::"}


def _formula_tokens(text: str) -> list[str]:
    """Names (backticked ones whole), numbers, strings and operators of a formula's text."""
    import re

    pattern = re.compile(r"""\s*(`[^`]*`|"[^"]*"|'[^']*'|%[^%]*%|\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?|"""
                         r"""[A-Za-z_.][A-Za-z0-9_.]*|\*\*|\|\||&&|::|==|!=|<=|>=|<-|[~+\-*/:^|(),\[\]=<>&!$@{}])""")
    out, pos = [], 0
    while pos < len(text):
        m = pattern.match(text, pos)
        if not m or m.end() == pos:
            if text[pos:].strip():
                raise ValueError(f"cannot read {text[pos:]!r}")
            break
        out.append(m.group(1))
        pos = m.end()
    return out


def deparse_formula(text: str) -> str:
    """A formula's text as R's ``deparse`` prints it: ``Reaction~Days+(Days|Subject)`` →
    ``Reaction ~ Days + (Days | Subject)``.

    Binary ``~ + - * |`` ``||``, comparisons and ``%op%`` get a space on each side, ``: / ^`` none;
    a unary sign sticks to its operand; ``**`` is ``^``; a comma is followed by a space; numbers
    print with 15 significant digits (``1e-3`` → ``0.001``). Text it cannot read is returned
    with its blanks normalized.
    """
    try:
        tokens = _formula_tokens(text)
    except ValueError:
        return " ".join(text.split())
    out, prev = [], None
    for tok in tokens:
        tok = "^" if tok == "**" else tok
        operand_before = prev is not None and (prev == ")" or prev == "]" or prev[0].isalnum() or prev[0] in "`._\"'")
        if tok[0].isdigit() or (tok[0] == "." and len(tok) > 1 and tok[1].isdigit()):
            value = float(tok)
            tok = str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:.15g}"
        if (tok in _SPACED or (tok.startswith("%") and len(tok) > 1)) and operand_before:
            out.append(f" {tok} ")
        elif tok == ",":
            out.append(", ")
        else:
            out.append(tok)
        prev = tok
    return "".join(out).strip()
