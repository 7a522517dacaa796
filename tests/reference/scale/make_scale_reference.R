# lme4 reference for predictor-scale invariance (jaxmlm issue 11), for tests/test_invariance.py.
#
# Simulates 30 groups x 20 rows with a correlated random intercept and two random slopes
# (x1, x2 standard normal within groups), writes the data as slopes.csv (write.csv,
# row.names = FALSE), reads it back and fits y ~ x1 + x2 + (1 + x1 + x2 | g) by REML and ML
# on the read-back data, in the data's natural (well-scaled) units. The test fits the same
# data with x1 * 1e-4 and x2 * 1e4 and maps the estimates back; these are the numbers both
# must agree with. lme4's own fits of the badly scaled data are recorded too (as
# "lme4_badly_scaled", for information only: lme4 warns there and is not a reference).
#
# Usage (from tests/reference/scale):  Rscript make_scale_reference.R
suppressPackageStartupMessages({library(lme4); library(jsonlite)})

ctrl <- lmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-10, maxfun = 1e5))

set.seed(20261111)
G <- 30; n <- 20
g <- rep(sprintf("g%02d", 1:G), each = n)
x1 <- round(rnorm(G * n), 6)
x2 <- round(rnorm(G * n), 6)
# random effects (intercept, x1 slope, x2 slope): sds 1, 0.5, 0.4; correlations 0.3, -0.2, 0.1
sd <- c(1, 0.5, 0.4)
R <- matrix(c(1, 0.3, -0.2, 0.3, 1, 0.1, -0.2, 0.1, 1), 3)
b <- matrix(rnorm(G * 3), G) %*% chol(diag(sd) %*% R %*% diag(sd))
gi <- rep(1:G, each = n)
y <- 2 + 0.5 * x1 - 0.7 * x2 + b[gi, 1] + b[gi, 2] * x1 + b[gi, 3] * x2 + rnorm(G * n)
write.csv(data.frame(g = g, x1 = x1, x2 = x2, y = round(y, 8)), "slopes.csv", row.names = FALSE)
d <- read.csv("slopes.csv", stringsAsFactors = TRUE)

fit_json <- function(m) {
  vc <- as.data.frame(VarCorr(m), order = "lower.tri")
  list(REML = isREML(m), fixef = unname(fixef(m)), fixef_names = names(fixef(m)),
       theta = unname(getME(m, "theta")), sigma = sigma(m),
       criterion = unname(if (isREML(m)) REMLcrit(m) else deviance(m)),
       loglik = as.numeric(logLik(m)), sdcor = vc$sdcor,
       sdcor_names = paste(vc$grp, ifelse(is.na(vc$var1), "", vc$var1), ifelse(is.na(vc$var2), "", vc$var2),
                           sep = ":"),
       messages = unlist(m@optinfo$conv$lme4$messages))
}
f <- y ~ x1 + x2 + (1 + x1 + x2 | g)
out <- list(formula = "y ~ x1 + x2 + (1 + x1 + x2 | g)", data_csv = "slopes.csv",
            reml = fit_json(lmer(f, d, REML = TRUE, control = ctrl)),
            ml = fit_json(lmer(f, d, REML = FALSE, control = ctrl)))
bad <- transform(d, x1 = x1 * 1e-4, x2 = x2 * 1e4)
out$lme4_badly_scaled <- list(
  reml = suppressWarnings(fit_json(lmer(f, bad, REML = TRUE))),
  ml = suppressWarnings(fit_json(lmer(f, bad, REML = FALSE))))
out$versions <- list(R = R.version.string, lme4 = as.character(packageVersion("lme4")))
writeLines(toJSON(out, digits = NA, auto_unbox = TRUE, pretty = TRUE), "scale_reference.json")
