"""Tidy tables of a fit, as broom.mixed's ``tidy``, ``glance`` and ``augment`` give them for lmerTest fits.

One row per estimate (``tidy``), one row per model (``glance``), one row per observation
(``augment``), with broom's rows, term names and columns — spelt with underscores where broom
has a dot inside a name (``std_error``, ``p_value``, ``conf_low``, ``df_residual``), so that
they are plain Python identifiers — so that tables from many fits stack, merge and plot
without reshaping (Robinson 2014, "broom: an R package for converting statistical
analysis objects into tidy data frames"; broom.mixed 0.2.9.4, Bolker & Robinson). Tested
against broom.mixed on REML and ML, slope, nested and crossed fits
(``tests/reference/broom/``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as st

from ._errors import InferenceError

__all__ = ["augment", "glance", "tidy"]

_EFFECTS = ("fixed", "ran_pars", "ran_vals", "ran_coefs")


def _fixed(m, conf_int: bool, conf_level: float, ddf: str) -> pd.DataFrame:
    ct = m.coef_table(ddf=ddf)
    out = pd.DataFrame({
        "effect": "fixed", "group": None, "term": list(ct.index),
        "estimate": ct["Estimate"].to_numpy(), "std_error": ct["Std. Error"].to_numpy(),
        "statistic": ct.iloc[:, -2].to_numpy(),
    })
    if "df" in ct.columns:
        out["df"] = ct["df"].to_numpy()
    out["p_value"] = ct.iloc[:, -1].to_numpy()
    if conf_int:
        df = out["df"].to_numpy() if "df" in out else np.full(len(out), np.inf)
        q = st.t.ppf(0.5 + conf_level / 2, df)
        out["conf_low"] = out["estimate"] - q * out["std_error"]
        out["conf_high"] = out["estimate"] + q * out["std_error"]
    return out


def _ran_pars(m) -> pd.DataFrame:
    """SDs and correlations per term (broom's order: each SD, then its correlations with the
    columns after it), then the residual SD."""
    rows = []
    for t, term in enumerate(m.design.terms):
        S = m._term_cov(t)
        sd = np.sqrt(np.diag(S))
        cor = term.cov.shows_covariances()
        for i, c in enumerate(term.columns):
            rows.append((term.vc_name, f"sd__{c}", sd[i]))
            for j in range(i + 1, term.k if cor else 0):
                value = S[i, j] / (sd[i] * sd[j]) if sd[i] > 0 and sd[j] > 0 else np.nan
                rows.append((term.vc_name, f"cor__{c}.{term.columns[j]}", value))
    rows.append(("Residual", "sd__Observation", m.sigma))
    return pd.DataFrame({"effect": "ran_pars", "group": [r[0] for r in rows], "term": [r[1] for r in rows],
                         "estimate": [r[2] for r in rows]})


def _ran_vals(m) -> pd.DataFrame:
    rf = m.ranef_frame()
    return pd.DataFrame({"effect": "ran_vals", "group": rf["grpvar"].to_numpy(), "level": rf["grp"].astype(str).to_numpy(),
                         "term": rf["term"].to_numpy(), "estimate": rf["condval"].to_numpy(),
                         "std_error": rf["condsd"].to_numpy()})


def _ran_coefs(m) -> pd.DataFrame:
    parts = []
    for g, df in m.coef.items():
        long = df.reset_index(names="level").melt(id_vars="level", var_name="term", value_name="estimate")
        parts.append(long.assign(effect="ran_coefs", group=g, level=long["level"].astype(str)))
    out = pd.concat(parts, ignore_index=True)
    return out[["effect", "group", "level", "term", "estimate"]]


def tidy(m, effects=("fixed", "ran_pars"), conf_int: bool = False, conf_level: float = 0.95,
         ddf: str = "Satterthwaite") -> pd.DataFrame:
    """One row per estimate, as broom.mixed's ``tidy`` of an lmerTest fit.

    ``effects``: any of "fixed" (estimate, std_error, t statistic, ``ddf`` degrees of freedom
    and p-value: lmerTest's table), "ran_pars" (SDs ``sd__x`` and correlations ``cor__x.z``
    per grouping factor, then the residual ``sd__Observation``), "ran_vals" (conditional
    modes with conditional SDs per level) and "ran_coefs" (fixed plus random effects per
    level). ``conf_int``: t-based Wald intervals for the fixed effects at ``conf_level``
    (with the same df; broom's ``conf.method = "Wald"``); random-effect parameters get none.
    Columns and order are broom's (``std_error``, ``p_value``, ``conf_low``, ``conf_high`` for
    its ``std.error``, ...), which puts the fixed effects first.
    """
    if isinstance(effects, str):
        chosen = (effects,)
    elif isinstance(effects, (list, tuple)) and all(isinstance(e, str) for e in effects):
        chosen = tuple(effects)
    else:
        raise InferenceError(f"effects must be some of {list(_EFFECTS)} (a name or a list of names), got {effects!r}")
    bad = [e for e in chosen if e not in _EFFECTS]
    if bad or not chosen:
        raise InferenceError(f"effects must be some of {list(_EFFECTS)}, got {bad or list(chosen)}")
    if not 0 < conf_level < 1:
        raise InferenceError(f"conf_level must be between 0 and 1, got {conf_level!r}")
    parts = []
    for e in _EFFECTS:  # broom's order, whatever order they were asked in
        if e not in chosen:
            continue
        parts.append(_fixed(m, conf_int, conf_level, ddf) if e == "fixed" else
                     _ran_pars(m) if e == "ran_pars" else _ran_vals(m) if e == "ran_vals" else _ran_coefs(m))
    out = pd.concat(parts, ignore_index=True)
    columns = ["effect", "group", "level", "term", "estimate", "std_error", "statistic", "df", "p_value",
               "conf_low", "conf_high"]
    return out[[c for c in columns if c in out.columns]]


def glance(m) -> pd.DataFrame:
    """One row: nobs, sigma, logLik, AIC, BIC, REMLcrit (REML fits) or deviance (ML fits), df_residual."""
    crit = "REMLcrit" if m.REML else "deviance"
    return pd.DataFrame({"nobs": [m.nobs], "sigma": [m.sigma], "logLik": [m.loglik], "AIC": [m.aic], "BIC": [m.bic],
                         crit: [m.objective], "df_residual": [m.nobs - m.npar]})


def augment(m) -> pd.DataFrame:
    """The model frame with one column per diagnostic, as broom.mixed's ``augment``: .fitted, .resid,
    .hat and .cooksd (lme4's ``hatvalues`` and ``cooks.distance``), .fixed (the fixed part Xβ̂,
    offset included), .mu (the fitted mean), .offset, .sqrtXwt and .sqrtrwt (√ prior weights,
    as lme4's sqrtXWt and sqrtrwt of a linear model), .weights and .wtres (√w × residual)."""
    from ._influence import cooks_distance, hat_values

    d = m._rows("augment()")
    frame = d.frame.copy() if d.frame is not None else pd.DataFrame(index=d.rows)
    w = m.weights
    offset = np.zeros(d.n) if d.offset is None else d.offset
    frame[".fitted"] = m.fitted
    frame[".resid"] = m.resid
    frame[".hat"] = hat_values(m)
    frame[".cooksd"] = cooks_distance(m)
    frame[".fixed"] = m.predict(re_form="~0")  # Xβ̂ + offset
    frame[".mu"] = m.fitted
    frame[".offset"] = offset
    frame[".sqrtXwt"] = np.sqrt(w)  # lme4's sqrtXWt: √ prior weights for a linear mixed model
    frame[".sqrtrwt"] = np.sqrt(w)
    frame[".weights"] = w
    frame[".wtres"] = np.sqrt(w) * m.resid
    return frame
