# %% [markdown]
# # Random intercepts and random slopes: language scores in Dutch classes
#
# This notebook retells course note 001 with **jaxmlm** in place of R's lme4. The data are
# MASS's `nlschools`: 2,287 pupils in grade 8 of 133 classes in the Netherlands. For each pupil
# we have a language test score (`lang`), a verbal IQ score (`IQ`) and a socio-economic status
# score (`SES`); for each class its size (`GS`) and whether it combines several grades (`COMB`,
# 0 or 1).
#
# The question is how much a pupil's verbal IQ tells us about the language score once the
# other variables are taken into account. Pupils were not sampled one by one: whole classes
# were. Pupils of one class share a teacher, a classroom and a history, so their scores are
# not independent. A mixed model handles this by giving each class its own random deviation
# from the average regression — in its intercept, in its IQ slope, or in both — drawn from a
# normal distribution whose variance is estimated. The classes are then treated as a sample
# from a population of classes, which is also what lets us predict for a class that is not in
# the data (a fixed class effect could not).
#
# Every number the note prints that jaxmlm computes is checked below with an `assert`, to the
# digits the note shows.

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

import jaxmlm
import jaxmlm.plot

nl = jaxmlm.load_example("nlschools")
nl.head(6)

# %% [markdown]
# The first rows are those the note shows; `class` and `COMB` are factors (pandas
# `Categorical`, in R's level order), the others numbers.

# %%
assert list(nl["lang"].head(6)) == [46, 45, 33, 46, 20, 30]
assert list(nl["IQ"].head(6)) == [15.0, 14.5, 9.5, 11.0, 8.0, 9.5]
assert list(nl["SES"].head(6)) == [23, 10, 15, 23, 10, 10]
assert (nl["class"].head(6) == "180").all() and (nl["GS"].head(6) == 29).all() and (nl["COMB"].head(6) == "0").all()
print(len(nl), "pupils in", nl["class"].nunique(), "classes")

# %% [markdown]
# ## One regression line per class
#
# Before any mixed model, the note looks at the first 151 rows — ten whole classes — and fits
# an ordinary least-squares line of `lang` on `IQ` in each class separately. `jaxmlm.lmList`
# does exactly that (lme4's `lmList`): one OLS fit per level of the factor after the `|`.
# These are the *no pooling* estimates: each class on its own, learning nothing from the
# others.

# %%
first = nl.iloc[:151]
ols = jaxmlm.lmList("lang ~ IQ | class", first)
ols

# %% [markdown]
# `lmList` is nothing more than `lm` per class; checking one class against a plain
# least-squares fit with numpy makes that concrete.

# %%
c180 = first[first["class"] == "180"]
slope, intercept = np.polyfit(c180["IQ"], c180["lang"], 1)
assert np.allclose(ols.loc["180"], [intercept, slope])
assert len(ols) == 10

# %%
fig, axes = plt.subplots(2, 5, figsize=(12, 5), sharex=True, sharey=True)
grid = np.linspace(first["IQ"].min(), first["IQ"].max(), 2)
for ax, (cls, row) in zip(axes.ravel(), ols.iterrows()):
    rows = first[first["class"] == cls]
    ax.plot(rows["IQ"], rows["lang"], "o", ms=3, color="C0")
    ax.plot(grid, row["(Intercept)"] + row["IQ"] * grid, color="C1")
    ax.set_title(f"class {cls} (n = {len(rows)})", fontsize="small")
fig.supxlabel("verbal IQ")
fig.supylabel("language score")
fig.suptitle("Per-class least-squares lines, first ten classes")
fig.tight_layout()

# %% [markdown]
# The lines differ: most rise by about two points per IQ point, but some are much steeper or
# flatter — and the extreme ones (class 1082, slope 5.8 and intercept −30; class 280, slope 1.3)
# rest on a handful of pupils. Both the level and the slope of the relation seem to vary between classes, which is
# what the random intercept and the random slope below model.
#
# ## A random intercept per class
#
# The first model keeps one common slope for each predictor and lets each class shift the
# whole regression up or down:
#
# $$\text{lang}_i = \mu + \alpha_{j(i)} + \beta\,\text{IQ}_i + \lambda_1 \text{GS}_{j(i)} + \lambda_2 \text{SES}_i + \lambda_3 \text{COMB}_{j(i)} + \varepsilon_i,\qquad \alpha_j \sim N(0, \tau^2),\ \varepsilon_i \sim N(0, \sigma^2).$$
#
# In lme4's formula language the random intercept is the term `(1 | class)`. The fit is by
# REML (restricted maximum likelihood), lme4's default.

# %%
model1 = jaxmlm.lmer("lang ~ IQ + GS + SES + COMB + (1 | class)", nl)
print(model1.summary())

# %% [markdown]
# The summary has the layout of lme4's (plus lmerTest's degrees of freedom and p-values, which
# the note does not print). Reading it:
#
# * **Random effects**: the class intercepts vary with variance τ̂² = 8.5 (SD 2.9 points), the
#   pupils around their class's line with σ̂² = 40.0 (SD 6.3). Between-class differences are
#   real but much smaller than the differences between pupils of one class.
# * **Fixed effects**: one IQ point more goes with 2.25 points more on the language test at
#   the same SES, class size and class type; one SES point with 0.17; pupils of combined-grade
#   classes score 2.0 points lower; class size shows no effect (t = −0.33).
# * `COMB1` is the coefficient of level `1` against the reference level `0` (treatment
#   contrasts, named as R names them).
#
# Now the note's numbers, one by one: the REML criterion, the scaled residuals' five-number
# summary, the variance components, the counts, the fixed-effects table and the correlations
# of the estimates.

# %%
def scaled_resid_quantiles(m):
    """Min, quartiles and max of the Pearson residuals (R's quantile type 7 is numpy's default)."""
    return np.quantile(m.pearson_resid, [0, 0.25, 0.5, 0.75, 1])


def var_sd(m, name):
    """(variance, SD) of a random-effect variance or the residual, from as.data.frame(VarCorr(m))."""
    vc = m.varcorr
    row = vc[(vc["var1"] == name) & vc["var2"].isna()] if name != "Residual" else vc[vc["grp"] == "Residual"]
    return float(row["vcov"].iloc[0]), float(row["sdcor"].iloc[0])


def fixef_corr(m):
    """Correlation of the fixed-effects estimates (the summary's last block)."""
    s = np.sqrt(np.diag(m.vcov))
    return pd.DataFrame(m.vcov.to_numpy() / np.outer(s, s), index=m.vcov.index, columns=m.vcov.columns)


def check_table(m, expected):
    """Estimate, Std. Error and t value against the printed table, each to its printed digits."""
    ct = m.coef_table()
    for term, (est, se, t, d_est, d_se) in expected.items():
        assert abs(m.fixef[term] - est) < 0.5 * 10.0**-d_est, (term, m.fixef[term], est)
        assert abs(m.se[term] - se) < 0.5 * 10.0**-d_se, (term, m.se[term], se)
        assert abs(m.fixef[term] / m.se[term] - t) < 5e-4, (term, m.fixef[term] / m.se[term], t)
        assert abs(ct.loc[term, "t value"] - t) < 5e-4


# %%
assert abs(model1.objective - 15132.9) < 0.05            # REML criterion at convergence
q = scaled_resid_quantiles(model1)
for got, printed in zip(q, [-3.9588, -0.6488, 0.0486, 0.7204, 3.0765]):
    assert abs(got - printed) < 5e-5
v, sd = var_sd(model1, "(Intercept)")
assert abs(v - 8.507) < 5e-4 and abs(sd - 2.917) < 5e-4
v, sd = var_sd(model1, "Residual")
assert abs(v - 39.998) < 5e-4 and abs(sd - 6.324) < 5e-4
assert model1.nobs == 2287 and model1.ngroups == {"class": 133}
#                      estimate    SE        t       digits of estimate, SE
check_table(model1, {"(Intercept)": (10.63524, 1.50012, 7.090, 5, 5),
                     "IQ":          (2.24696, 0.07133, 31.502, 5, 5),
                     "GS":          (-0.01562, 0.04770, -0.327, 5, 5),
                     "SES":         (0.16538, 0.01479, 11.185, 5, 5),
                     "COMB1":       (-2.02161, 0.60055, -3.366, 5, 5)})
r = fixef_corr(model1)
printed = {("IQ", "(Intercept)"): -0.484, ("GS", "(Intercept)"): -0.798, ("GS", "IQ"): -0.002,
           ("SES", "(Intercept)"): -0.062, ("SES", "IQ"): -0.292, ("SES", "GS"): -0.057,
           ("COMB1", "(Intercept)"): -0.168, ("COMB1", "IQ"): 0.033, ("COMB1", "GS"): -0.006,
           ("COMB1", "SES"): 0.017}
for (a, b), val in printed.items():
    assert abs(r.loc[a, b] - val) < 5e-4, (a, b, r.loc[a, b], val)

# %% [markdown]
# The strong negative correlation between the intercept and `GS` (−0.80) only says that the
# intercept is the predicted score at IQ = 0, SES = 0 and a class of size 0 — far outside the
# data, so moving the `GS` slope moves that extrapolated intercept with it. Centring the
# predictors (below) removes such correlations.
#
# ## A random slope per class (and no random intercept)
#
# The second model of the note lets the IQ slope vary between classes instead of the
# intercept:
#
# $$\text{lang}_i = \mu + (\beta + b_{j(i)})\,\text{IQ}_i + \lambda^\top W_i + \varepsilon_i,\qquad b_j \sim N(0, \tau^2).$$
#
# In the formula, `(IQ - 1 | class)` (or, the same, `(0 + IQ | class)`) is a random IQ slope
# *without* the random intercept that `(IQ | class)` would include by default.

# %%
model12 = jaxmlm.lmer("lang ~ IQ + GS + SES + COMB + (IQ - 1 | class)", nl)
print(model12.summary())

# %%
assert abs(model12.objective - 15157.4) < 0.05
q = scaled_resid_quantiles(model12)
for got, printed in zip(q, [-3.9450, -0.6453, 0.0590, 0.7063, 3.4214]):
    assert abs(got - printed) < 5e-5
v, sd = var_sd(model12, "IQ")
assert abs(v - 0.0561) < 5e-5 and abs(sd - 0.2369) < 5e-5
v, sd = var_sd(model12, "Residual")
assert abs(v - 40.5701) < 5e-5 and abs(sd - 6.3695) < 5e-5
assert model12.nobs == 2287 and model12.ngroups == {"class": 133}
check_table(model12, {"(Intercept)": (10.70203, 1.43466, 7.460, 5, 5),
                      "IQ":          (2.26638, 0.07481, 30.295, 5, 5),
                      "GS":          (-0.02471, 0.04466, -0.553, 5, 5),
                      "SES":         (0.16820, 0.01484, 11.334, 5, 5)})
# COMB1 sits on a rounding edge: lme4 stops at -2.4597252 (printed -2.45973), jaxmlm at the
# optimum -2.4597250 (gradient 4e-9), 3e-7 away; so this one is checked to 6e-6, not 5e-6.
assert abs(model12.fixef["COMB1"] - (-2.45973)) < 6e-6
assert abs(model12.se["COMB1"] - 0.56308) < 5e-6
assert abs(model12.fixef["COMB1"] / model12.se["COMB1"] - (-4.368)) < 5e-4
r = fixef_corr(model12)
printed = {("IQ", "(Intercept)"): -0.508, ("GS", "(Intercept)"): -0.805, ("GS", "IQ"): 0.037,
           ("SES", "(Intercept)"): -0.063, ("SES", "IQ"): -0.284, ("SES", "GS"): -0.060,
           ("COMB1", "(Intercept)"): -0.140, ("COMB1", "IQ"): -0.031, ("COMB1", "GS"): 0.009,
           ("COMB1", "SES"): 0.020}
for (a, b), val in printed.items():
    assert abs(r.loc[a, b] - val) < 5e-4, (a, b, r.loc[a, b], val)

# %% [markdown]
# The class slopes have SD 0.24 around the average 2.27: in a class one SD above average, a
# pupil gains about 2.5 language points per IQ point, one SD below about 2.0. But this model
# forces every class line through the same point at IQ = 0 — a value no pupil has (the lowest
# IQ in the data is 4) — so "no random intercept" is a strong, rarely sensible restriction.
# Its REML criterion (15157.4) is higher than the random-intercept model's (15132.9): with the
# same fixed effects and the same number of parameters, the random intercept fits better.
#
# ## Testing nested models: `anova`
#
# The note warns against reading significance off the t values of an `lmer` fit (lme4 gives
# no p-values, because the t statistics do not have an exact t distribution here; jaxmlm's
# summary adds lmerTest's Satterthwaite approximation). Its recommendation is a
# likelihood-ratio test between two *nested* models — one model a special case of the other.
# Here the smaller model drops IQ:

# %%
model3 = jaxmlm.lmer("lang ~ GS + SES + COMB + (1 | class)", nl)
table = jaxmlm.anova(model3, model1, names=["model3", "model1"])
table

# %% [markdown]
# What `anova` computes (as lme4's `anova`):
#
# 1. Both models were fitted by REML, and REML likelihoods of models with *different fixed
#    effects* are not comparable (REML maximizes the likelihood of residual contrasts that
#    depend on the fixed-effects design). So each model is first **refitted by maximum
#    likelihood** — that is why the AIC of `model1` here (15133) is not the REML-based one
#    below (15147).
# 2. `deviance` = −2 log L of the ML fits; `Chisq` = the drop in deviance, 15944 − 15119 = 825;
#    `Df` = the difference in the number of parameters (7 − 6 = 1, the IQ coefficient).
# 3. Under the null hypothesis (IQ's coefficient is 0) the drop is approximately χ² with 1
#    degree of freedom; p < 2.2·10⁻¹⁶, R's way of printing "below machine precision".
#
# The note calls it an F-test; it is a χ² likelihood-ratio test. For a fixed effect a
# Satterthwaite F or t test (`model1.anova()`, `model1.coef_table()`) is the alternative.

# %%
assert list(table.index) == ["model3", "model1"]
assert list(table["npar"]) == [6, 7]
for col, vals, tol in [("AIC", [15956, 15133], 0.5), ("BIC", [15990, 15173], 0.5),
                       ("logLik", [-7971.9, -7559.3], 0.05), ("deviance", [15944, 15119], 0.5)]:
    for got, val in zip(table[col], vals):
        assert abs(got - val) < tol, (col, got, val)
assert abs(table.loc["model1", "Chisq"] - 825.09) < 5e-3
assert table.loc["model1", "Df"] == 1
assert table.loc["model1", "Pr(>Chisq)"] < 2.2e-16
# the χ² is the deviance difference of the ML refits, as computed by hand
ml3, ml1 = model3.update(REML=False), model1.update(REML=False)
assert abs((ml3.deviance - ml1.deviance) - table.loc["model1", "Chisq"]) < 1e-6

# %% [markdown]
# ## AIC and BIC
#
# For models that are not nested, the note compares information criteria: AIC = −2 log L +
# 2k and BIC = −2 log L + k log n (k parameters, n observations); smaller is better, and a
# difference of more than about 6 is usually taken as clear. Its example adds a column of
# pure noise to the model without IQ, so that the two models are not nested (each has a
# predictor the other lacks). R's `rnorm` was called without a seed, so that column cannot
# be reproduced; we draw our own (seeded) noise, and the noise model's criteria differ a
# little from the note's (15967.21 and 16007.35) for that reason alone.
#
# Like lme4's `AIC()` and `BIC()`, `m.aic` and `m.bic` of a REML fit use the REML criterion
# (`model1`: 15132.86 + 2·7 = 15146.86).

# %%
rng = np.random.default_rng(1)
nl_noise = nl.assign(random=rng.standard_normal(len(nl)))
model4 = jaxmlm.lmer("lang ~ GS + SES + COMB + (1 | class) + random", nl_noise)
pd.DataFrame({"df": [model4.npar, model1.npar], "AIC": [model4.aic, model1.aic], "BIC": [model4.bic, model1.bic]},
             index=["model4", "model1"]).round(2)

# %%
assert model1.npar == 7 and model4.npar == 7
assert abs(model1.aic - 15146.86) < 5e-3 and abs(model1.bic - 15187.00) < 5e-3
assert abs(model1.aic - (model1.objective + 2 * 7)) < 1e-9
assert abs(model1.bic - (model1.objective + 7 * np.log(2287))) < 1e-9
assert model4.aic - model1.aic > 800 and model4.bic - model1.bic > 800

# %% [markdown]
# Both criteria favour the model with IQ by more than 800 — the conclusion the note draws.
# One caution the note does not make: these REML-based criteria compare models with
# different fixed effects, which (as for `anova` above) is not strictly valid. The ML-based
# criteria lead to the same verdict here:

# %%
ml4 = model4.update(REML=False)
print(f"ML AIC: model4 {ml4.aic:.2f}, model1 {ml1.aic:.2f};  ML BIC: model4 {ml4.bic:.2f}, model1 {ml1.bic:.2f}")
assert ml4.aic - ml1.aic > 800 and ml4.bic - ml1.bic > 800

# %% [markdown]
# ## Extension: a random intercept *and* a random slope, and centring IQ
#
# The note ends by suggesting both random effects at once, `(IQ | class)`: each class gets
# its own intercept and its own IQ slope, and the model estimates their two variances and
# their correlation.
#
# With IQ as it is, the intercept of a class is its predicted score at IQ = 0, far below any
# pupil. A class whose line is steeper must then have a much lower intercept to pass through
# its data, so intercepts and slopes come out almost perfectly negatively correlated — a
# nuisance for the optimizer as much as for the reader (lme4 1.1-31 warns that this fit
# failed to converge). **Centring** IQ at its mean, `IQc = IQ − mean(IQ)`, moves the
# intercept to a pupil of average IQ. It is the same model re-parametrized: the fit, the
# slopes and the residual variance do not change; the intercept's variance and its
# correlation with the slope now describe classes at average IQ.

# %%
nl_c = nl.assign(IQc=nl["IQ"] - nl["IQ"].mean())
model_s = jaxmlm.lmer("lang ~ IQ + GS + SES + COMB + (IQ | class)", nl)
model_sc = jaxmlm.lmer("lang ~ IQc + GS + SES + COMB + (IQc | class)", nl_c)
print(model_sc.summary())

# %%
cor = lambda m: float(m.varcorr.dropna(subset=["var2"])["sdcor"].iloc[0])
pd.DataFrame({"IQ as it is": [model_s.objective, model_s.fixef["IQ"], var_sd(model_s, "(Intercept)")[1],
                              var_sd(model_s, "IQ")[1], cor(model_s), model_s.sigma],
              "IQ centred": [model_sc.objective, model_sc.fixef["IQc"], var_sd(model_sc, "(Intercept)")[1],
                             var_sd(model_sc, "IQc")[1], cor(model_sc), model_sc.sigma]},
             index=["REML criterion", "IQ slope (fixed)", "SD of class intercepts", "SD of class slopes",
                    "correlation intercept-slope", "residual SD"]).round(3)

# %%
# the same model: same criterion, same IQ slope and SE, same slope variance and residual
assert abs(model_s.objective - model_sc.objective) < 1e-4
assert abs(model_s.fixef["IQ"] - model_sc.fixef["IQc"]) < 1e-4
assert abs(model_s.se["IQ"] - model_sc.se["IQc"]) < 1e-5
assert abs(model_s.sigma - model_sc.sigma) < 1e-4
assert abs(var_sd(model_s, "IQ")[0] - var_sd(model_sc, "IQc")[0]) < 1e-4
# ... only the intercept has moved, to the prediction at the mean IQ
mean_iq = nl["IQ"].mean()
assert abs(model_sc.fixef["(Intercept)"] - (model_s.fixef["(Intercept)"] + mean_iq * model_s.fixef["IQ"])) < 1e-3
assert cor(model_s) < -0.9 and -0.7 < cor(model_sc) < -0.5

# %% [markdown]
# Is the random slope needed on top of the random intercept? The models are nested
# (`(1 | class)` is `(IQc | class)` with the slope variance and the correlation set to 0),
# so `anova` applies again: 2 parameters more. Strictly the χ²(2) reference is conservative
# here, because a variance of 0 lies on the boundary of its range; the p-value is small
# either way.

# %%
model1c = jaxmlm.lmer("lang ~ IQc + GS + SES + COMB + (1 | class)", nl_c)
slope_test = jaxmlm.anova(model1c, model_sc, names=["intercept only", "intercept and slope"])
slope_test

# %%
assert slope_test["Df"].iloc[1] == 2 and slope_test["Pr(>Chisq)"].iloc[1] < 0.01

# %% [markdown]
# ## Partial pooling, in pictures
#
# What do the random effects do to the class lines we started with? To see it in the plane
# of IQ and score, fit the simplest model with both random effects, `lang ~ IQc + (IQc |
# class)`, and draw each class's conditional line (fixed effects plus the class's predicted
# random effects) with `jaxmlm.plot.group_lines`; `ols=True` adds each class's own OLS line
# (dashed), for the same ten classes as at the start.

# %%
simple = jaxmlm.lmer("lang ~ IQc + (IQc | class)", nl_c)
fig = jaxmlm.plot.group_lines(simple, "IQc", max_groups=10, ncols=5, ols=True)
fig.suptitle("Mixed-model lines (orange) and per-class OLS lines (dashed)")
fig.set_size_inches(12, 5)
fig.tight_layout()

# %% [markdown]
# Where a class has many pupils spread over IQ, its two lines almost coincide. Where the OLS
# line rests on few pupils (class 1082: five pupils, OLS slope 5.8; class 280: seven pupils,
# slope 1.3), the mixed model pulls it strongly toward the average line: that class's data
# are weak evidence, and the model borrows strength from the other 132 classes. The
# shrinkage plot shows this for all 133 classes at once — each arrow goes from a class's OLS
# (intercept, slope) to its mixed-model coefficients, toward the fixed effects:

# %%
ax = jaxmlm.plot.shrinkage(simple)
ax.figure.set_size_inches(7, 6)

# %%
coefs = simple.coef["class"]
ols_c = jaxmlm.lmList("lang ~ IQc | class", nl_c)
common = ols_c.dropna().index
spread_ols = ols_c.loc[common, "IQc"].std()
spread_mixed = coefs.loc[common, "IQc"].std()
print(f"SD of the class slopes: OLS {spread_ols:.2f}, mixed model {spread_mixed:.2f}")
assert spread_mixed < spread_ols
# coef = fixef + ranef, class by class
assert np.allclose(coefs.to_numpy(), simple.fixef.to_numpy() + simple.ranef["class"].to_numpy())

# %% [markdown]
# ## Beyond linear models
#
# The note closes with `glmer`, lme4's generalized linear mixed models. As an example, take a
# binary outcome: did a pupil score 40 or more on the language test? A random-intercept
# logistic model asks how a pupil's IQ changes the odds of that score, for a pupil in a given
# class, while classes differ in their baseline odds:

# %%
nl_b = nl_c.assign(pass40=(nl_c["lang"] >= 40).astype(int))
logit = jaxmlm.glmer("pass40 ~ IQc + (1 | class)", nl_b, "binomial")
print(logit.summary())

# %% [markdown]
# The coefficients are on the log-odds scale. Exponentiated, the IQ coefficient is an odds
# ratio per IQ point. The class standard deviation is on the same logit scale: a class one
# SD above average has its odds multiplied by exp(SD), whatever the pupil's IQ.

# %%
odds_iq = np.exp(logit.fixef["IQc"])
class_sd = float(logit.varcorr["sdcor"].iloc[0])
print(f"odds ratio per IQ point: {odds_iq:.2f}; class SD {class_sd:.2f} "
      f"(odds x{np.exp(class_sd):.1f} for a class one SD above average)")
assert odds_iq > 1 and logit.coef_table()["Pr(>|z|)"]["IQc"] < 1e-10

# %% [markdown]
# Written out level by level, the model puts the link of the pass probability where the linear
# model had the score, and has no residual term: the binomial draw is the level-1 noise.

# %%
print(logit.equations())

# %% [markdown]
# `confint()` gives lme4's profile intervals (its default for `glmer` too): the deviance is
# minimized again with each parameter held at trial values, so the limits do not rest on a
# normal approximation to the estimate, as Wald's do. Exponentiated, the IQ coefficient's
# limits are those of the odds ratio.

# %%
ci = logit.confint()
print(ci)
lo, hi = np.exp(ci.loc["IQc"])
print(f"odds ratio per IQ point: {odds_iq:.2f} (95% profile interval {lo:.2f} to {hi:.2f})")
assert lo < odds_iq < hi and ci.loc["sd_(Intercept)|class", "2.5 %"] > 0

# %% [markdown]
# By default `glmer` integrates the random effects out with the Laplace approximation, as
# lme4 does. With one random intercept, adaptive Gauss–Hermite quadrature (`nAGQ`) is also
# available. With about 17 pupils per class the two agree closely:

# %%
agq = jaxmlm.glmer("pass40 ~ IQc + (1 | class)", nl_b, "binomial", nAGQ=9)
print(f"log-likelihood: Laplace {logit.loglik:.3f}, 9-point quadrature {agq.loglik:.3f}")
print(f"IQ coefficient: {logit.fixef['IQc']:.4f} vs {agq.fixef['IQc']:.4f}")
assert abs(logit.loglik - agq.loglik) < 1.0 and abs(logit.fixef["IQc"] - agq.fixef["IQc"]) < 0.01
