# Independent reference for jaxmlm's variance-component standard errors: glmmTMB (TMB's
# autodiff Laplace approximation, exact for Gaussian models; REML = TRUE integrates beta out).
#
# For each model: every random-effect SD and correlation and the residual SD, with
#   se_log   SE of log(SD) (for SDs) or of atanh(correlation) (for correlations), from
#            glmmTMB's sdreport (summary(m$sdr, "fixed")) by the delta method;
#   se       SE on the natural scale (SD or correlation), delta method;
#   lower, upper  glmmTMB's confint(method = "Wald", full = TRUE) for the SDs and sigma (computed on
#            the log scale and transformed back).
# glmmTMB's parameters (1.1.x): theta = (log SD_1..k, rho-parameters) per term, betad = log(sigma^2).
# For a 2 x 2 unstructured term glmmTMB's correlation parameter t gives r = t / sqrt(1 + t^2),
# so d atanh(r)/dt = 1 / sqrt(1 + t^2) and dr/dt = (1 + t^2)^(-3/2); larger terms are refused.
#
# Usage (from tests/reference/inference):  Rscript make_glmmtmb_reference.R glmmtmb_reference.json
suppressPackageStartupMessages({library(glmmTMB); library(lme4); library(mlmRev); library(jsonlite)})
args <- commandArgs(TRUE)
out <- if (length(args)) args[1] else "glmmtmb_reference.json"

cases <- list(
  list(id = "sleepstudy_rs", data = "sleepstudy", formula = Reaction ~ Days + (Days | Subject), REML = TRUE),
  list(id = "sleepstudy_rs_ml", data = "sleepstudy", formula = Reaction ~ Days + (Days | Subject), REML = FALSE),
  list(id = "penicillin_crossed", data = "Penicillin", formula = diameter ~ 1 + (1 | plate) + (1 | sample), REML = TRUE),
  list(id = "penicillin_crossed_ml", data = "Penicillin", formula = diameter ~ 1 + (1 | plate) + (1 | sample), REML = FALSE),
  list(id = "pastes_nested", data = "Pastes", formula = strength ~ 1 + (1 | batch/cask), REML = TRUE),
  list(id = "dyestuff", data = "Dyestuff", formula = Yield ~ 1 + (1 | Batch), REML = TRUE),
  list(id = "hsb_ses_slope", data = "Hsb82", formula = mAch ~ ses + (ses | school), REML = TRUE)
)

one <- function(cs) {
  d <- get(cs$data)
  m <- glmmTMB(cs$formula, data = d, REML = cs$REML)
  fx <- summary(m$sdr, "fixed")
  th <- fx[rownames(fx) == "theta", , drop = FALSE]
  bd <- fx[rownames(fx) == "betad", , drop = FALSE]
  cnms <- m$modelInfo$reTrms$cond$cnms
  ci <- confint(m, method = "Wald", full = TRUE)
  rows <- list(); pos <- 0
  for (g in seq_along(cnms)) {
    grp <- names(cnms)[g]; nm <- cnms[[g]]; k <- length(nm)
    if (k > 2) stop("terms with more than 2 columns are not handled")
    for (i in seq_len(k)) {
      est <- exp(th[pos + i, 1]); sl <- th[pos + i, 2]
      cin <- ci[rownames(ci) == paste0("cond.Std.Dev.", nm[i], "|", grp), , drop = FALSE]
      if (nrow(cin) != 1) stop("confint row not found for ", nm[i], "|", grp)
      rows[[length(rows) + 1]] <- list(grp = grp, var1 = nm[i], var2 = NA, kind = "sd", estimate = est,
                                       se_log = sl, se = est * sl, lower = cin[1, 1], upper = cin[1, 2])
    }
    if (k == 2) {
      t <- th[pos + 3, 1]; st <- th[pos + 3, 2]; r <- t / sqrt(1 + t^2)
      rows[[length(rows) + 1]] <- list(grp = grp, var1 = nm[1], var2 = nm[2], kind = "cor", estimate = r,
                                       se_log = st / sqrt(1 + t^2), se = st * (1 + t^2)^(-1.5),
                                       lower = NA, upper = NA)
    }
    pos <- pos + k + k * (k - 1) / 2
  }
  stopifnot(pos == nrow(th))
  s <- exp(bd[1, 1] / 2); sl <- bd[1, 2] / 2
  rows[[length(rows) + 1]] <- list(grp = "Residual", var1 = NA, var2 = NA, kind = "sd", estimate = s,
                                   se_log = sl, se = s * sl, lower = ci["sigma", 1], upper = ci["sigma", 2])
  stopifnot(abs(s / sigma(m) - 1) < 1e-8)
  list(id = cs$id, data = cs$data, formula = paste(deparse(cs$formula), collapse = ""), REML = cs$REML,
       objective = -2 * as.numeric(logLik(m)), convergence = m$fit$convergence,
       max_abs_gradient = max(abs(m$sdr$gradient.fixed)), pdHess = m$sdr$pdHess,
       components = rows)
}

res <- lapply(cases, one)
meta <- list(R = R.version.string, glmmTMB = as.character(packageVersion("glmmTMB")),
             TMB = as.character(packageVersion("TMB")), lme4 = as.character(packageVersion("lme4")),
             mlmRev = as.character(packageVersion("mlmRev")))
writeLines(toJSON(list(meta = meta, cases = res), auto_unbox = TRUE, digits = NA, pretty = TRUE, na = "null"), out)
cat("wrote", out, "\n")
