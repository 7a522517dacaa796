# lme4's profile() of two fits, for tests/test_profile.py (jaxmlm's m.profile()).
# Run from the repository root:  Rscript tests/reference/profile/make_profile_reference.R
# Writes tests/reference/profile/profile_reference.json: per case, lme4's grid as
# as.data.frame(profile(m, signames = FALSE)) -- .zeta, .focal (the parameter's value), .par
# (names as confint(oldNames = FALSE)) -- with lme4's defaults (alphamax = 0.01, maxpts = 100,
# delta = cutoff / 8, cutoff = sqrt(qchisq(1 - alphamax, number of parameters))), and
# confint() of the profile (lme4 interpolates it with a spline through this grid).
suppressPackageStartupMessages({library(lme4); library(jsonlite)})
cases <- list(
  list(id = "sleepstudy_rs", data = "sleepstudy", formula = "Reaction ~ Days + (Days | Subject)", REML = TRUE),
  list(id = "dyestuff", data = "Dyestuff", formula = "Yield ~ 1 + (1 | Batch)", REML = TRUE)
)
out <- list(
  generated_by = "tests/reference/profile/make_profile_reference.R",
  R = R.version.string, lme4 = as.character(packageVersion("lme4")),
  cases = lapply(cases, function(cs) {
    d <- get(cs$data, envir = asNamespace("lme4"))
    m <- lmer(as.formula(cs$formula), data = d, REML = cs$REML)
    pr <- profile(m, signames = FALSE)
    df <- as.data.frame(pr)
    npar <- length(getME(m, "theta")) + 1 + length(fixef(m))
    ci <- confint(pr)
    list(id = cs$id, dataset = cs$data, formula = cs$formula, REML = cs$REML,
         npar = npar, cutoff = sqrt(qchisq(1 - 0.01, npar)),
         profile = data.frame(parameter = as.character(df$.par), value = df$.focal, zeta = df$.zeta),
         confint = data.frame(parameter = rownames(ci), lower = ci[, 1], upper = ci[, 2]))
  })
)
writeLines(toJSON(out, digits = NA, auto_unbox = TRUE, pretty = TRUE),
           "tests/reference/profile/profile_reference.json")
