# %% [markdown]
# # Pupils in classrooms in schools: error structure, group-mean residuals and model selection
#
# This notebook retells course note 002 ("MLM conceptualization") with jaxmlm. The data are the
# *classroom* study (West, Welch and Galecki, *Linear Mixed Models*): 1190 first-graders, taught in
# 312 classrooms, in 107 schools. Each pupil has a kindergarten maths score (`mathkind`), the gain
# in maths over first grade (`mathgain`) and a socio-economic index (`ses`); each classroom has its
# teacher's maths knowledge (`mathknow`), missing for some teachers.
#
# The lesson has three parts:
#
# 1. **What a random effect is**, looked at in four ways (a piece of the error, a latent trait,
#    a random coefficient, an equation at a higher level), and then built by hand: the average
#    residual of each school (and of each classroom) from an ordinary regression is a crude
#    estimate of the school's (classroom's) effect. The mixed model estimates the same variance
#    more carefully.
# 2. **Which random effects a model needs**: likelihood-ratio tests of variance components
#    (`ranova`, and `anova` of two fits without the ML refit).
# 3. **Which fixed effects a model needs**: likelihood-ratio tests of a block of predictors,
#    which need ML fits and — the trap the note walks into on purpose — the *same rows* in both
#    models when a predictor has missing values.
#
# We finish with a profile-likelihood interval for the variance components and its ζ plot.
#
# Every number the note prints is checked below by an `assert` at the precision the note prints it.

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

import jaxmlm
import jaxmlm.plot

T0 = time.time()


def printed(got, shown: str, rel: float = 0.0):
    """Assert that ``got`` rounds to the number the note printed as ``shown`` (half a unit of its
    last printed digit; for "9.796e-09" the last digit of the mantissa), widened by ``rel`` of it
    relatively more (used only where the note prints more digits than the fit determines; see below)."""
    mantissa, _, exp = shown.lower().partition("e")
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    tol = 0.5 * 10.0 ** (-decimals + (int(exp) if exp else 0)) + rel * abs(float(shown))
    assert abs(got - float(shown)) <= tol * (1 + 1e-9), (got, shown)


dat = jaxmlm.load_example("classroom")
print(dat.shape)
dat.head()

# %% [markdown]
# Three levels of nesting: a classroom belongs to one school, a pupil to one classroom. The
# identifiers are integers; `classid` is unique across schools, so `(1 | schoolid/classid)` — a
# school effect and a classroom-within-school effect — gives the same classrooms as `classid` alone.

# %%
sizes = pd.Series({"pupils": len(dat), "classrooms": dat["classid"].nunique(), "schools": dat["schoolid"].nunique()})
print(sizes.to_string())
per_class = dat.groupby("classid").size()
print(f"pupils per classroom: {per_class.min()} to {per_class.max()}, "
      f"{(per_class == 1).sum()} classrooms with a single pupil")
print("missing values:", dat.isna().sum()[lambda s: s > 0].to_dict())
assert tuple(sizes) == (1190, 312, 107)

# %% [markdown]
# ## 1. Four ways to look at one random intercept
#
# Start simpler than the data: pupils in schools only (classrooms come back later), one pupil-level
# predictor. Pupil *i* in classroom *j* of school *k*:
#
# $$Y_{ijk} = b_0 + b_1 X_{1ijk} + \zeta_k + \varepsilon_{ijk},\qquad
#   \zeta_k \sim N(0, \sigma^2_\zeta),\ \varepsilon_{ijk} \sim N(0, \sigma^2_\varepsilon)\ \text{independent}.$$
#
# * **Part of the error.** Write $\varepsilon'_{ijk} = \zeta_k + \varepsilon_{ijk}$; the model then
#   looks like ordinary regression, except that these composite errors are *not* independent. Two
#   pupils of the same school share $\zeta_k$, so
#   $\mathrm{Cov}(\varepsilon'_{ijk}, \varepsilon'_{i'j'k}) = \mathrm{Var}(\zeta_k) = \sigma^2_\zeta$
#   (all cross terms vanish by independence), while each has variance $\sigma^2_\zeta + \sigma^2_\varepsilon$.
#   Their correlation, $\sigma^2_\zeta / (\sigma^2_\zeta + \sigma^2_\varepsilon)$, is the intraclass
#   correlation (ICC): the share of the (conditional) variance that lies between schools. Errors of
#   pupils in *different* schools share nothing and are uncorrelated.
# * **A latent variable.** $\zeta_k$ is the combined effect of everything unmeasured about school *k*;
#   all its pupils' outcomes load on it, as indicators load on a factor in a path diagram.
# * **A random coefficient.** Regroup: $Y_{ijk} = (b_0 + \zeta_k) + b_1 X_{1ijk} + \varepsilon_{ijk}
#   = \beta_{0k} + b_1 X_{1ijk} + \varepsilon_{ijk}$. Each school has its own intercept
#   $\beta_{0k}$, drawn from a normal distribution around $b_0$. That is *not* a separate regression
#   per school: the intercepts are tied together by their common distribution, and $b_1$ and
#   $\sigma^2_\varepsilon$ are shared.
# * **Equations by level.** Level 1 (pupils): $Y_{ijk} = \beta_{0k} + \beta_{1k} X_{1ijk} + \varepsilon_{ijk}$;
#   level 2 (schools): $\beta_{0k} = b_0 + \zeta_{0k}$, $\beta_{1k} = b_1$. Substituting level 2 into
#   level 1 gives the single equation above (the form lme4 and jaxmlm take). Dropping $\zeta_{0k}$
#   from level 2 gives back plain regression. The level notation (HLM, MLwiN) keeps track of which
#   predictors and errors belong where.
#
# ## 2. Building the school effects by hand
#
# If the composite errors of some schools are mostly above the regression line and those of others
# mostly below, the schools differ in level: that is $\zeta_k$. So first fit the regression that
# ignores schools (ordinary least squares of `mathkind` on `ses`, here with numpy) and look at its
# residuals school by school.

# %%
y = dat["mathkind"].to_numpy(float)
X = np.column_stack([np.ones(len(dat)), dat["ses"].to_numpy(float)])
b, *_ = np.linalg.lstsq(X, y, rcond=None)
res1 = y - X @ b
n, p = X.shape
s2 = res1 @ res1 / (n - p)
se = np.sqrt(s2 * np.diag(np.linalg.inv(X.T @ X)))
r2 = 1 - res1 @ res1 / np.sum((y - y.mean()) ** 2)
adj_r2 = 1 - (1 - r2) * (n - 1) / (n - p)
F = r2 / (p - 1) / ((1 - r2) / (n - p))
print(pd.DataFrame({"Estimate": b, "Std. Error": se, "t value": b / se}, index=["(Intercept)", "ses"]).round(3))
print(f"residual SE {np.sqrt(s2):.2f} on {n - p} df; R² {r2:.5f}, adjusted {adj_r2:.5f}; F {F:.1f} on 1 and {n - p} df")
print("residual quantiles:", np.quantile(res1, [0, 0.25, 0.5, 0.75, 1]).round(3))

for got, shown in zip(b, ("466.845", "14.359")):
    printed(got, shown)
for got, shown in zip(se, ("1.162", "1.568")):
    printed(got, shown)
printed(b[0] / se[0], "401.70")
printed(b[1] / se[1], "9.16")
printed(np.sqrt(s2), "40.08")
assert n - p == 1188
printed(r2, "0.06596")
printed(adj_r2, "0.06518")
printed(F, "83.9")
for got, shown in zip(np.quantile(res1, [0, 0.25, 0.5, 0.75, 1]), ("-174.835", "-26.399", "1.065", "26.529", "161.150")):
    printed(got, shown)

# %% [markdown]
# The pooled line against the pupils of the first 24 schools: in some schools most points sit above
# the line, in others below.

# %%
dat["pred1"], dat["res1"] = X @ b, res1
first = dat[dat["schoolid"] < 25]
fig, axes = plt.subplots(4, 6, sharex=True, sharey=True, figsize=(11, 7))
for ax, (sid, g) in zip(axes.ravel(), first.groupby("schoolid")):
    ax.plot(g["ses"], g["mathkind"], "o", ms=3, color="C0")
    order = np.argsort(g["ses"].to_numpy())
    ax.plot(g["ses"].to_numpy()[order], g["pred1"].to_numpy()[order], color="C3")
    ax.set_title(f"school {sid}", fontsize="small")
fig.supxlabel("ses")
fig.supylabel("mathkind")
fig.tight_layout()

# %% [markdown]
# It is easier to see in the residuals themselves: one box per school, ordered by the school's
# median residual. If the errors were independent, every school's median would sit near zero
# (with a scatter set by the residual SD and the school's size); instead they climb steadily from
# well below to well above zero — structure that a school effect should absorb.

# %%
order = dat.groupby("schoolid")["res1"].median().sort_values().index
fig, ax = plt.subplots(figsize=(11, 3.5))
ax.boxplot([dat.loc[dat["schoolid"] == s, "res1"] for s in order], showfliers=True, widths=0.6,
           flierprops=dict(ms=2))
ax.axhline(0, color="0.5", lw=0.8)
ax.set_xticks([])
ax.set_xlabel("schools, ordered by median residual")
ax.set_ylabel("OLS residual");

# %% [markdown]
# Averaging each school's residuals gives one crude estimate of $\zeta_k$ per school. Plotted
# against the school's position in the file (a meaningless axis, only to spread the points), they
# clearly differ; their spread, a standard deviation over the 107 schools, is a first (crude)
# estimate of $\sigma_\zeta$.

# %%
res1mean = dat.groupby("schoolid")["res1"].mean()
sd_school_means = res1mean.std()
print(f"SD of the school-mean residuals: {sd_school_means:.2f}")
printed(sd_school_means, "22.43")


def r_density(x, weights=None, n=512):
    """R's density(): Gaussian kernel, bandwidth bw.nrd0 = 0.9 min(SD, IQR/1.34) n^(-1/5) of the
    values (unweighted, as R), grid from min − 3 bw to max + 3 bw; weights sum to 1."""
    x = np.asarray(x, float)
    w = np.full(len(x), 1 / len(x)) if weights is None else np.asarray(weights, float)
    q1, q3 = np.quantile(x, [0.25, 0.75])
    bw = 0.9 * min(x.std(ddof=1), (q3 - q1) / 1.34) * len(x) ** -0.2
    grid = np.linspace(x.min() - 3 * bw, x.max() + 3 * bw, n)
    dens = (w[None, :] * np.exp(-0.5 * ((grid[:, None] - x[None, :]) / bw) ** 2)).sum(1) / (bw * np.sqrt(2 * np.pi))
    return grid, dens


fig, axes = plt.subplots(1, 3, figsize=(12, 3.3))
axes[0].plot(res1mean.to_numpy(), "o", ms=3)
axes[0].axhline(0, color="0.6")
axes[0].set(xlabel="school (position in the file)", ylabel="mean OLS residual")
axes[1].plot(*r_density(res1mean))
axes[1].set(title="one value per school", xlabel="mean OLS residual", ylabel="density")
wts = dat.groupby("schoolid").size() / len(dat)  # the share of pupils in each school
axes[2].plot(*r_density(res1mean, weights=wts.loc[res1mean.index]))
axes[2].set(title="weighted by school size", xlabel="mean OLS residual")
fig.tight_layout()

# %% [markdown]
# With one value per school the distribution is fairly symmetric. Weighting each school by its share
# of pupils (what you get in Stata when the mean is copied to every pupil before plotting) changes
# the shape: large schools dominate and a second bump appears. Either way, the school effects are far
# from zero: the crude SD, about 22, is the first estimate of $\sigma_\zeta$.
#
# ### The mixed model's estimate
#
# The random-intercept model estimates $\sigma_\zeta$ directly.

# %%
fit1 = jaxmlm.lmer("mathkind ~ ses + (1 | schoolid)", dat)
print(fit1.summary())

# lme4 stops its optimizer when the REML criterion stops changing (~1e-7 here); at the optimum
# of these three-level models the criterion is so flat that the variance parameters, and what
# depends on them in the 5th-6th significant digit (Satterthwaite df, t values, the extreme scaled
# residuals), move by a few parts in 1e5 without changing the criterion in its 10th digit. jaxmlm
# reaches the same criterion; those printed values are checked to 3 parts in 1e5.
FLAT = 3e-5


def check_summary(m, reml, scaled, var, fixed, corr=None):
    """The note's printed summary(): REML criterion, scaled-residual quantiles, variances and SDs,
    fixed effects (estimate, SE, Satterthwaite df, t, p) and the correlation of the estimates."""
    printed(m.objective, reml)
    q = np.quantile(m.pearson_resid, [0, 0.25, 0.5, 0.75, 1])
    for got, shown in zip(q, scaled):
        printed(got, shown, rel=FLAT)
    vc = m.varcorr.set_index("grp")
    for grp, (v, sd) in var.items():
        # lme4 prints variances to 4 significant digits ("309" is 309.0 to 4 digits)
        digits = max(len(v.replace(".", "").replace("-", "").lstrip("0")), 4)
        assert abs(vc.loc[grp, "vcov"] - float(v)) <= 0.5 * 10 ** (np.floor(np.log10(float(v))) + 1 - digits) * 1.000001, grp
        printed(vc.loc[grp, "sdcor"], sd)
    t = m.coef_table()
    for name, row in fixed.items():
        for col, shown in zip(["Estimate", "Std. Error", "df", "t value", "Pr(>|t|)"], row):
            if shown == "< 2e-16":
                assert t.loc[name, col] < 2e-16, name
            else:
                printed(t.loc[name, col], shown, rel=FLAT if col in ("df", "t value") else 0.0)
    if corr:
        V = m.vcov.to_numpy()
        R = V / np.sqrt(np.outer(np.diag(V), np.diag(V)))
        names = list(m.vcov.index)
        for (a, c), shown in corr.items():
            printed(R[names.index(a), names.index(c)], shown)


check_summary(fit1, "12038.7", ("-4.7423", "-0.5716", "0.0188", "0.6343", "3.7763"),
              {"schoolid": ("309", "17.58"), "Residual": ("1308", "36.16")},
              {"(Intercept)": ("465.746", "2.058", "98.752", "226.337", "< 2e-16"),
               "ses": ("10.722", "1.589", "1187.995", "6.747", "2.35e-11")},
              {("ses", "(Intercept)"): "0.034"})
assert fit1.nobs == 1190 and fit1.ngroups == {"schoolid": 107}
print(f"school SD: mixed model {fit1.varcorr.set_index('grp').loc['schoolid', 'sdcor']:.2f}, "
      f"crude (SD of mean residuals) {sd_school_means:.2f}")

# %% [markdown]
# The model puts the school SD at 17.58, smaller than the crude 22.43. The crude estimate treats
# each school mean as if it were the school's true effect, but a mean of a few noisy residuals also
# carries pupil-level noise ($\sigma_\varepsilon^2 / n_k$ of variance for a school of $n_k$ pupils),
# which inflates its spread; the model separates the two sources. The ICC implied by the model:

# %%
print(fit1.icc())

# %% [markdown]
# ### Adding the classroom level
#
# With classrooms, the composite error has three parts, $\varepsilon'_{ijk} = \eta_{jk} + \zeta_k +
# \varepsilon_{ijk}$. School means of $\varepsilon'$ still estimate $\zeta_k$ roughly. Subtracting
# them leaves $\eta_{jk} + \varepsilon_{ijk}$, and averaging *that* by classroom gives crude
# classroom effects, net of the school effects.

# %%
sch_res1 = dat["res1"] - dat["schoolid"].map(res1mean)
cls_res2 = sch_res1.groupby(dat["classid"]).mean()
sd_class_means = cls_res2.std()
print(f"SD of the classroom means of school-centred residuals: {sd_class_means:.2f}")
printed(sd_class_means, "22.12")
fig, ax = plt.subplots(figsize=(5, 3.3))
ax.plot(*r_density(cls_res2))
ax.set(title="constructed classroom mean residuals", xlabel="mean residual, net of the school mean", ylabel="density");

# %% [markdown]
# An SD of 22 between classrooms looks very large, and it is mostly noise: 42 classrooms have a
# single pupil, whose whole residual becomes the "classroom effect". Group means follow the noise
# (roughly what an econometric fixed-effects analysis does); the mixed model shrinks them. The
# three-level model:

# %%
fit3 = jaxmlm.lmer("mathkind ~ ses + (1 | schoolid/classid)", dat)
print(fit3.summary())
check_summary(fit3, "12038.4", ("-4.7444", "-0.5722", "0.0112", "0.6320", "3.7507"),
              {"classid:schoolid": ("20.44", "4.521"), "schoolid": ("301.52", "17.364"),
               "Residual": ("1294.08", "35.973")},
              {"(Intercept)": ("465.749", "2.058", "99.030", "226.344", "< 2e-16"),
               "ses": ("10.684", "1.589", "1187.053", "6.725", "2.72e-11")},
              {("ses", "(Intercept)"): "0.035"})
assert fit3.nobs == 1190 and fit3.ngroups == {"classid:schoolid": 312, "schoolid": 107}

# %% [markdown]
# The classroom SD is estimated at 4.5, not 22: the residual-based construction badly overstates
# both variance components. The model's own estimates of the effects, the conditional modes
# (`ranef`), are shrunk towards zero — the more so, the fewer pupils a group has. Below, the
# densities of the crude group means against those of the conditional modes, with the normal
# distribution the model assumes ($N(0, \hat\sigma^2)$ for each level; `jaxmlm.plot.ranef_density`),
# and a normal QQ plot of the school modes (`jaxmlm.plot.qq`).

# %%
fig, axes = plt.subplots(2, 2, figsize=(11, 7))
jaxmlm.plot.ranef_density(fit3, group="schoolid", ax=axes[0, 0])
axes[0, 0].plot(*r_density(res1mean), color="C2", label="school-mean OLS residuals")
axes[0, 0].legend(fontsize="small")
jaxmlm.plot.ranef_density(fit3, group="classid:schoolid", ax=axes[0, 1])
axes[0, 1].plot(*r_density(cls_res2), color="C2", label="classroom means (school-centred)")
axes[0, 1].set(xlim=(-80, 80), ylim=(0, 0.1))  # the modes' density peaks far above, at about 0.45
axes[0, 1].legend(fontsize="small")
jaxmlm.plot.qq(fit3, which="schoolid", ax=axes[1, 0])
jaxmlm.plot.qq(fit3, which="resid", ax=axes[1, 1])
fig.tight_layout()
modes = fit3.ranef
print(f"SD of the conditional modes: schools {modes['schoolid'].iloc[:, 0].std():.2f}, "
      f"classrooms {modes['classid:schoolid'].iloc[:, 0].std():.2f}")

# %% [markdown]
# The crude means spread far wider than the model's normal curve; the conditional modes are
# narrower than it (shrinkage: the modes are predictions, with less spread than the effects
# themselves). The classroom modes pile up near zero: with $\hat\sigma_\eta = 4.5$ against
# $\hat\sigma_\varepsilon = 36$, a classroom of a few pupils says little about its own effect.
# The school modes follow the normal line fairly well; the pupil-level residuals have a long
# lower tail (a few kindergartners score far below what their school and `ses` predict), a
# reminder that the normal model is an approximation at every level.
#
# ## 3. Which random effects does the model need?
#
# Parameters added to a model make the smaller model a special case of the larger; a
# likelihood-ratio test (LRT) compares the two. For single fixed effects a t test does the job, for
# blocks of them a Wald or LR test; for variance components we use LRTs.
#
# First question: are school effects needed at all for the maths *gain*? The unconditional means
# model, `mathgain ~ (1 | schoolid)`, against the same model without the random intercept (ordinary
# regression). `ranova` (lmerTest's) fits the reduced model and reports the test.

# %%
lmer_fit2 = jaxmlm.lmer("mathgain ~ (1 | schoolid)", dat)
r2_tab = lmer_fit2.ranova()
print(r2_tab)
printed(r2_tab.loc["<none>", "logLik"], "-5888.3")
printed(r2_tab.loc["<none>", "AIC"], "11783")
printed(r2_tab.loc["(1 | schoolid)", "logLik"], "-5904.8")
printed(r2_tab.loc["(1 | schoolid)", "AIC"], "11814")
printed(r2_tab.loc["(1 | schoolid)", "LRT"], "32.881")
printed(r2_tab.loc["(1 | schoolid)", "Pr(>Chisq)"], "9.796e-09")
assert list(r2_tab["npar"]) == [3, 2] and r2_tab.loc["(1 | schoolid)", "Df"] == 1

# %% [markdown]
# Strongly significant. (The null value $\sigma^2_\zeta = 0$ is on the boundary of the parameter
# space, so this $\chi^2_1$ p-value is conservative; it would be halved under the $\bar\chi^2$
# mixture — `m.lrt_vs_ols()` gives that version.)
#
# Next: do classrooms add anything once schools are in? Fit the three-level model and compare the two
# fits with `anova(..., refit=False)`: both have the same fixed part, so their REML criteria can be
# compared directly.

# %%
lmer_fit3 = jaxmlm.lmer("mathgain ~ (1 | schoolid/classid)", dat)
a23 = jaxmlm.anova(lmer_fit2, lmer_fit3, refit=False, names=["lmer.fit2", "lmer.fit3"])
print(a23)
for name, row in zip(["lmer.fit2", "lmer.fit3"], [("11783", "11798", "-5888.3", "11777"),
                                                 ("11777", "11797", "-5884.4", "11769")]):
    for col, shown in zip(["AIC", "BIC", "logLik", "deviance"], row):
        printed(a23.loc[name, col], shown)
assert list(a23["npar"]) == [3, 4]
printed(a23.loc["lmer.fit3", "Chisq"], "7.9048")
printed(a23.loc["lmer.fit3", "Pr(>Chisq)"], "0.00493")

# %% [markdown]
# Classroom effects are warranted ($\chi^2_1 = 7.9$, p < 0.01). `ranova` on the larger model deletes
# each random term in turn; its first row is the same test:

# %%
r3_tab = lmer_fit3.ranova()
print(r3_tab)
printed(r3_tab.loc["<none>", "logLik"], "-5884.4")
printed(r3_tab.loc["<none>", "AIC"], "11777")
for term, (ll, aic, lrt, pval) in {"(1 | classid:schoolid)": ("-5888.3", "11783", "7.9048", "0.004930"),
                                   "(1 | schoolid)": ("-5888.3", "11783", "7.8875", "0.004978")}.items():
    printed(r3_tab.loc[term, "logLik"], ll)
    printed(r3_tab.loc[term, "AIC"], aic)
    printed(r3_tab.loc[term, "LRT"], lrt)
    printed(r3_tab.loc[term, "Pr(>Chisq)"], pval)
    assert r3_tab.loc[term, "npar"] == 3 and r3_tab.loc[term, "Df"] == 1

# %% [markdown]
# Why are classrooms needed here when, for `mathkind`, their variance was tiny (4.5² against 36²)?
# Because this is a different outcome: the *gain* during first grade is what a first-grade teacher
# can influence, while the kindergarten score was fixed before the pupils met the teacher.
#
# ## 4. Which fixed effects? ML fits and the same rows
#
# REML (the default in R and in jaxmlm) estimates the variance components without the downward bias
# of ML, but its criterion depends on the fixed-effects design: REML criteria of models with
# different fixed effects are not comparable. A test of fixed effects needs the ML likelihood;
# `anova` refits by ML unless told not to (`refit=False`). For a single continuous predictor its
# t test suffices; here we test a *block*: pupil `ses` and teacher `mathknow` together,
# $H_0: b_1 = b_2 = 0$ in
# $MATHGAIN_{ijk} = b_0 + b_1 SES_{ijk} + b_2 MATHKNOW_{jk} + \eta_{jk} + \zeta_k + \varepsilon_{ijk}$.

# %%
lmer_fit4 = jaxmlm.lmer("mathgain ~ ses + mathknow + (1 | schoolid/classid)", dat)
print(lmer_fit4.summary())
check_summary(lmer_fit4, "10684.6", ("-4.3702", "-0.6106", "-0.0342", "0.5357", "5.5805"),
              {"classid:schoolid": ("104.64", "10.229"), "schoolid": ("92.11", "9.598"),
               "Residual": ("1018.67", "31.917")},
              {"(Intercept)": ("57.8169", "1.5468", "91.6576", "37.379", "< 2e-16"),
               "ses": ("0.8847", "1.4602", "1039.2449", "0.606", "0.5447"),
               "mathknow": ("2.4341", "1.3093", "211.2083", "1.859", "0.0644")},
              {("ses", "(Intercept)"): "0.039", ("mathknow", "(Intercept)"): "0.009", ("mathknow", "ses"): "-0.042"})
assert lmer_fit4.nobs == 1081 and lmer_fit4.ngroups == {"classid:schoolid": 285, "schoolid": 105}
print("rows dropped for missing values:", lmer_fit4.n_dropped)

# %% [markdown]
# Neither predictor looks significant on its own, but the joint test is what we want. Comparing this
# fit with `lmer.fit3` fails — and should: 109 pupils have no `mathknow` (their teachers' data are
# missing), so the larger model was fitted to 1081 pupils and the smaller to 1190. Likelihoods of
# different data say nothing about each other. jaxmlm refuses, as lme4 does, and says which rows
# differ.

# %%
try:
    jaxmlm.anova(lmer_fit3, lmer_fit4, refit=False)
    raise AssertionError("anova compared fits of different rows")
except jaxmlm.DataError as err:
    print(err)
    assert "1190" in str(err) and "1081" in str(err)

# %% [markdown]
# The remedy: fit every model of the sequence on the rows the *largest* model can use — the complete
# cases of all its variables — and only then compare. `subset=` takes a boolean mask, as lme4's
# `subset` argument.

# %%
in_sample = dat[["mathgain", "ses", "mathknow"]].notna().all(axis=1).to_numpy()
print(f"{in_sample.sum()} complete cases of {len(dat)}")
fit7 = jaxmlm.lmer("mathgain ~ 1 + (1 | schoolid/classid)", dat, subset=in_sample)
print(fit7.summary())
check_summary(fit7, "10693.2", ("-4.3056", "-0.6115", "-0.0396", "0.5509", "5.6208"),
              {"classid:schoolid": ("116.9", "10.813"), "schoolid": ("73.4", "8.567"), "Residual": ("1021.0", "31.953")},
              {"(Intercept)": ("57.761", "1.499", "95.000", "38.54", "< 2e-16")})
assert fit7.nobs == 1081 and fit7.ngroups == {"classid:schoolid": 285, "schoolid": 105}

fit8 = jaxmlm.lmer("mathgain ~ ses + mathknow + (1 | schoolid/classid)", dat, subset=in_sample)
assert fit8.nobs == 1081
assert abs(fit8.objective - lmer_fit4.objective) < 1e-8  # the same rows as lmer.fit4: the same fit
printed(fit8.objective, "10684.6")

# %% [markdown]
# Now the block test, with the ML refit (`refit=True`, the default; the REML fits are refitted by ML
# before their likelihoods are compared):

# %%
a78 = jaxmlm.anova(fit7, fit8, names=["fit7", "fit8"])
print(a78)
for name, row in zip(["fit7", "fit8"], [("10704", "10724", "-5347.9", "10696"),
                                       ("10704", "10734", "-5346.1", "10692")]):
    for col, shown in zip(["AIC", "BIC", "logLik", "deviance"], row):
        printed(a78.loc[name, col], shown)
assert list(a78["npar"]) == [4, 6] and a78.loc["fit8", "Df"] == 2
printed(a78.loc["fit8", "Chisq"], "3.5921")
printed(a78.loc["fit8", "Pr(>Chisq)"], "0.166")

# %% [markdown]
# $\chi^2_2 = 3.59$, p = 0.17: `ses` and `mathknow` are jointly not significant for the gain. The
# general rule: when fitting a sequence of models, restrict the data to the rows without missing
# values in the predictors of the *last* (largest) model before fitting any of them.
#
# ## 5. How precisely are the variance components estimated?
#
# The LRT said the classroom SD is not zero. A profile-likelihood interval says more: how large it
# plausibly is. For each parameter ψ, fix it at a value v, maximize the likelihood over everything
# else, and take the signed root of the deviance increase,
# $\zeta(v) = \mathrm{sign}(v - \hat\psi)\sqrt{D^*(v) - D(\hat\psi)}$ (on the ML deviance, as lme4,
# also for a REML fit). The 95% interval is where $|\zeta| \le 1.96$.

# %%
ci = lmer_fit3.confint()  # method="profile" is the default
print(ci.round(3))
# For comparison, Wald intervals of the SDs (symmetric on the log-SD scale, as Stata's mixed)
wald = lmer_fit3.variance_components()
print(wald.loc[wald["kind"] == "sd", ["Estimate", "Std. Error", "lower", "upper"]].round(3))

# %% [markdown]
# `m.profile()` evaluates ζ on a grid of each parameter's values (lme4's `profile()`), and
# `jaxmlm.plot.profile_zeta` draws it, one panel per parameter, with the ±z lines of the 95% and 99%
# levels (lme4's `xyplot(profile(m))`). A straight line would mean the likelihood is quadratic in
# that parameter and a symmetric Wald interval would do. σ's and the intercept's lines are nearly
# straight; the two SDs' curves flatten towards zero (the likelihood changes less and less as an SD
# shrinks: at SD = 0, ζ is only about −2.8), so their intervals reach further below the estimate
# than above it. (lme4's grid goes out to a wider cutoff than these
# levels: √χ² on as many degrees of freedom as the model has parameters, at 99%.)

# %%
prof = lmer_fit3.profile()
fig = jaxmlm.plot.profile_zeta(prof, ncols=4)
# The curve crosses ±1.96 at the profile limits (linear interpolation between grid points here).
for name, (lo, hi) in ci.iterrows():
    rows = prof[prof["parameter"] == name]
    if name.startswith("sd_"):
        assert -3.0 < rows["zeta"].iloc[0] < -2.6 and rows["value"].iloc[0] == 0.0  # ζ at SD = 0
    for limit, z in ((lo, -1.959964), (hi, 1.959964)):
        at = np.interp(z, rows["zeta"], rows["value"])
        assert abs(at - limit) < 0.02 * (hi - lo), (name, at, limit)

# %% [markdown]
# The classroom SD's 95% interval runs from about 5.2 to 13.9 and the school SD's from 4.4 to 12.2:
# both clearly away from zero, in line with the two LRTs of `ranova`, but wide — a hundred schools
# and three hundred classrooms pin down a variance component only roughly. The Wald intervals
# (6.6 to 15.1 and 5.8 to 13.3) sit higher: symmetric on the log scale, they miss how flat the
# likelihood is towards small SDs.
#
# ## Summary
#
# * A random intercept is a shared piece of the error; it makes pupils of one school correlated,
#   with correlation equal to the ICC.
# * Group means of regression residuals are crude estimates of the group effects; they mix the
#   group effect with pupil noise, so their spread overstates the variance component (22 against
#   the model's 17.6 for schools, 22 against 4.5 for classrooms).
# * Random effects are tested by LRTs of nested fits (`ranova`, `anova(refit=False)` for fits with
#   the same fixed part).
# * Blocks of fixed effects are tested by LRTs of ML fits on the same rows: subset to the complete
#   cases of the largest model first.
#
# The note closes with a reminder of lme4's formula syntax, which jaxmlm shares: `(1 | school)` a
# random intercept, `(x | school)` correlated random intercept and slope, `(1 | school) + (0 + x |
# school)` or `(x || school)` uncorrelated ones, `(1 | school/class)` nested effects
# (`(1 | school) + (1 | school:class)`), `(1 | a) + (1 | b)` crossed ones.

# %%
print(f"notebook ran in {time.time() - T0:.0f} s")
