# Reference fits for tests/test_blmer.py: blme 1.0-5 (Dorie's blmer) on lme4 1.1-x.
# Run from this folder:  Rscript make_blme_reference.R
# Writes blme_reference.json, and Dyestuff2.csv / Orthodont.csv (data that jaxmlm does not ship).
suppressMessages({library(blme); library(jsonlite); library(nlme)})
stopifnot(as.character(packageVersion("blme")) == "1.0.5")

Dyestuff2 <- lme4::Dyestuff2
write.csv(Dyestuff2, "Dyestuff2.csv", row.names = FALSE)
Orthodont <- as.data.frame(nlme::Orthodont)
Orthodont$Subject <- factor(as.character(Orthodont$Subject))
write.csv(Orthodont[, c("distance", "age", "Subject", "Sex")], "Orthodont.csv", row.names = FALSE)

summ <- function(fit) {
  # blme reports the likelihood part ("REML criterion at convergence") and the prior's part
  # ("Prior dev", cmp["penalty"]) apart; their sum is what its optimizer minimizes (the deviance
  # function's value at the estimate).
  crit <- unname(fit@devcomp$cmp[if (isREML(fit)) "REML" else "dev"] + fit@devcomp$cmp["penalty"])
  list(fixef = as.list(fixef(fit)),
       se = as.list(sqrt(diag(as.matrix(vcov(fit))))),
       theta = unname(getME(fit, "theta")),
       sigma = sigma(fit),
       criterion = crit,
       likelihood_part = unname(fit@devcomp$cmp[if (isREML(fit)) "REML" else "dev"]),
       prior_penalty = unname(fit@devcomp$cmp["penalty"]),
       REML = isREML(fit),
       lme4_theta = NULL)
}

out <- list()
# Each model is fitted with blme's three optimizers (nloptwrap, its default; bobyqa; Nelder_Mead):
# blme's default often stops early ("failed to converge" warnings), so the reference is the fit with
# the lowest penalized criterion, and every optimizer's criterion is kept. blme's deviance function
# (devFunOnly = TRUE) is also evaluated at fixed theta values: a check of the criterion itself.
OPTS <- c("nloptwrap", "bobyqa", "Nelder_Mead")
add <- function(name, data_name, formula, REML, cov_prior, fixef_prior, call, lmer_fit = NULL) {
  fits <- lapply(OPTS, function(o) suppressWarnings(call(lmerControl(optimizer = o))))
  crits <- sapply(fits, function(ft) unname(ft@devcomp$cmp[if (isREML(ft)) "REML" else "dev"] + ft@devcomp$cmp["penalty"]))
  s <- summ(fits[[which.min(crits)]])
  s$optimizer <- OPTS[which.min(crits)]
  s$criteria_by_optimizer <- as.list(setNames(crits, OPTS))
  s$theta_by_optimizer <- setNames(lapply(fits, function(ft) unname(getME(ft, "theta"))), OPTS)
  devfun <- call(lmerControl(), devFunOnly = TRUE)
  m <- length(s$theta)
  pts <- list(rep(1, m), s$theta * 1.1 + 0.05)
  s$devfun_points <- lapply(pts, function(th) list(theta = th, criterion = devfun(th)))
  s$data <- data_name; s$formula <- formula; s$cov_prior <- cov_prior; s$fixef_prior <- fixef_prior
  if (!is.null(lmer_fit)) s$lme4_theta <- unname(getME(lmer_fit, "theta"))
  out[[name]] <<- s
}

sleep <- lme4::sleepstudy; dye <- lme4::Dyestuff; pen <- lme4::Penicillin

# 1-2. the default Wishart prior with slopes, REML and ML
f <- "Reaction ~ Days + (Days | Subject)"
add("sleep_wishart_reml", "sleepstudy", f, TRUE, "wishart", NULL, function(ctl, ...) blmer(as.formula(f), sleep, control = ctl, ...))
add("sleep_wishart_ml", "sleepstudy", f, FALSE, "wishart", NULL, function(ctl, ...) blmer(as.formula(f), sleep, REML = FALSE, control = ctl, ...))
# 3. inverse Wishart (default hyperparameters) with slopes
add("sleep_invwishart_reml", "sleepstudy", f, TRUE, "invwishart", NULL,
    function(ctl, ...) blmer(as.formula(f), sleep, cov.prior = invwishart, control = ctl, ...))
# 4. a normal prior on the fixed effects (default sd = c(10, 2.5)) with the default Wishart
add("sleep_normal_reml", "sleepstudy", f, TRUE, "wishart", "normal",
    function(ctl, ...) blmer(as.formula(f), sleep, fixef.prior = normal, control = ctl, ...))
# 5. normal prior, explicit sds, no covariance prior, ML
add("sleep_normal_sd_ml", "sleepstudy", f, FALSE, "none", "normal(sd = c(20, 1))",
    function(ctl, ...) blmer(as.formula(f), sleep, REML = FALSE, cov.prior = NULL, fixef.prior = normal(sd = c(20, 1)), control = ctl, ...))
# 6-7. gamma on a scalar term: Dyestuff (REML), Dyestuff2 (singular under lmer), ML and REML
f1 <- "Yield ~ 1 + (1 | Batch)"
add("dyestuff_gamma_reml", "Dyestuff", f1, TRUE, "gamma", NULL, function(ctl, ...) blmer(as.formula(f1), dye, cov.prior = gamma, control = ctl, ...))
add("dyestuff2_gamma_reml", "Dyestuff2", f1, TRUE, "gamma", NULL, function(ctl, ...) blmer(as.formula(f1), Dyestuff2, cov.prior = gamma, control = ctl, ...),
    lmer(as.formula(f1), Dyestuff2))
add("dyestuff2_wishart_ml", "Dyestuff2", f1, FALSE, "wishart", NULL, function(ctl, ...) blmer(as.formula(f1), Dyestuff2, REML = FALSE, control = ctl, ...),
    lmer(as.formula(f1), Dyestuff2, REML = FALSE))
# 8. gamma with a rate, and inverse gamma (default hyperparameters): crossed scalar terms
f2 <- "diameter ~ 1 + (1 | plate) + (1 | sample)"
add("penicillin_gamma_rate_reml", "Penicillin", f2, TRUE, "gamma(shape = 3, rate = 0.5)", NULL,
    function(ctl, ...) blmer(as.formula(f2), pen, cov.prior = gamma(shape = 3, rate = 0.5), control = ctl, ...))
add("penicillin_invgamma_ml", "Penicillin", f2, FALSE, "invgamma", NULL,
    function(ctl, ...) blmer(as.formula(f2), pen, REML = FALSE, cov.prior = invgamma, control = ctl, ...))

# 10. per-term priors (a list of formulas, as blme's; jaxmlm's dict) and residual-variance priors
add("penicillin_per_term_reml", "Penicillin", f2, TRUE, "list(plate ~ gamma, sample ~ invgamma(shape = 1, scale = 2))",
    NULL, function(ctl, ...) blmer(as.formula(f2), pen, cov.prior = list(plate ~ gamma, sample ~ invgamma(shape = 1, scale = 2)),
                                   control = ctl, ...))
add("dyestuff_resid_invgamma_reml", "Dyestuff", f1, TRUE, "gamma", NULL,
    function(ctl, ...) blmer(as.formula(f1), dye, cov.prior = gamma, resid.prior = invgamma(shape = 2, scale = 1000),
                             control = ctl, ...))
add("sleep_resid_gamma_ml", "sleepstudy", f, FALSE, "wishart", "normal",
    function(ctl, ...) blmer(as.formula(f), sleep, REML = FALSE, fixef.prior = normal, resid.prior = gamma(shape = 2),
                             control = ctl, ...))

# 9. Orthodont (age | Subject), default Wishart: blme's optimizers stop far apart, with a
# "degenerate Hessian" warning
f3 <- "distance ~ age + (age | Subject)"
add("orthodont_wishart_reml", "Orthodont", f3, TRUE, "wishart", NULL,
    function(ctl, ...) blmer(as.formula(f3), Orthodont, control = ctl, ...))

out$versions <- list(blme = as.character(packageVersion("blme")), lme4 = as.character(packageVersion("lme4")),
                     R = R.version.string)
writeLines(toJSON(out, auto_unbox = TRUE, digits = NA, pretty = TRUE, null = "null"), "blme_reference.json")
