# Approximate 95% confidence intervals from nlme's intervals(which = "var-cov")
# for the variance-covariance parameters of a subset of the reference fits.
#
# Run from this directory:   Rscript make_nlme_intervals.R
#
# Writes intervals.json only (the CSVs are written by make_nlme_reference.R).
# Data preparation and model calls are copied from make_nlme_reference.R
# (same nlme datasets, same derived columns, same spatial simulation and seed),
# including its fallback to lmeControl(opt = "optim") for lme cases marked
# fallback = TRUE (none of these cases needed it with nlme 3.1.162).
# A case whose fit or intervals() call fails is recorded as {"error": ...}.

suppressPackageStartupMessages({
  library(nlme)
  library(jsonlite)
})

nlme_version <- as.character(packageVersion("nlme"))
r_version <- R.version.string

# ---------------------------------------------------------------------------
# Data (as in make_nlme_reference.R, without writing the CSVs)
# ---------------------------------------------------------------------------

data(Orthodont, package = "nlme")
Orthodont$occ <- (Orthodont$age - 8) / 2

data(BodyWeight, package = "nlme")

data(Ovary, package = "nlme")
Ovary$s1 <- sin(2 * pi * Ovary$Time)
Ovary$c1 <- cos(2 * pi * Ovary$Time)

data(Pixel, package = "nlme")
Pixel$day2 <- Pixel$day^2

set.seed(20261206)
n_plot <- 40
n_per <- 8
spatial <- do.call(rbind, lapply(seq_len(n_plot), function(p) {
  cx <- runif(n_per, 0, 10)
  cy <- runif(n_per, 0, 10)
  x1 <- rnorm(n_per)
  b <- rnorm(1, 0, 0.8)
  D <- as.matrix(dist(cbind(cx, cy)))
  R <- exp(-D / 2)
  e <- as.vector(t(chol(R)) %*% rnorm(n_per))
  data.frame(y = 1 + 0.5 * x1 + b + e, x1 = x1, cx = cx, cy = cy,
             plot = sprintf("p%02d", p), stringsAsFactors = FALSE)
}))
spatial$plot <- factor(spatial$plot)

# ---------------------------------------------------------------------------
# Cases (calls copied from make_nlme_reference.R)
# ---------------------------------------------------------------------------

optim_ctrl <- quote(lmeControl(opt = "optim"))

cases <- list(
  list(case = "orth_ident_reml", kind = "lme",
       expr = quote(lme(distance ~ age * Sex, random = ~ 1 | Subject,
                        weights = varIdent(form = ~ 1 | Sex), data = Orthodont))),
  list(case = "orth_ident_ml", kind = "lme",
       expr = quote(lme(distance ~ age * Sex, random = ~ 1 | Subject,
                        weights = varIdent(form = ~ 1 | Sex), data = Orthodont,
                        method = "ML"))),
  list(case = "bw_car1_power_reml", kind = "lme",
       expr = quote(lme(weight ~ Time * Diet, random = ~ Time | Rat,
                        correlation = corCAR1(form = ~ Time | Rat),
                        weights = varPower(form = ~ Time), data = BodyWeight)),
       fallback = TRUE),
  list(case = "orth_cs_gls_reml", kind = "gls",
       expr = quote(gls(distance ~ age * Sex,
                        correlation = corCompSymm(form = ~ 1 | Subject),
                        data = Orthodont))),
  list(case = "ovary_ar1_gls_ml", kind = "gls",
       expr = quote(gls(follicles ~ s1 + c1,
                        correlation = corAR1(form = ~ 1 | Mare),
                        data = Ovary, method = "ML"))),
  list(case = "orth_exp_ml", kind = "lme",
       expr = quote(lme(distance ~ age, random = ~ 1 | Subject,
                        weights = varExp(form = ~ age), data = Orthodont,
                        method = "ML")),
       fallback = TRUE),
  list(case = "orth_ar1_ident_gls_ml", kind = "gls",
       expr = quote(gls(distance ~ age * Sex,
                        correlation = corAR1(form = ~ 1 | Subject),
                        weights = varIdent(form = ~ 1 | Sex),
                        data = Orthodont, method = "ML"))),
  list(case = "spatial_exp_reml", kind = "lme",
       expr = quote(lme(y ~ x1, random = ~ 1 | plot,
                        correlation = corExp(form = ~ cx + cy | plot),
                        data = spatial)),
       fallback = TRUE),
  list(case = "bw_ident_diet_ml", kind = "lme",
       expr = quote(lme(weight ~ Time * Diet, random = ~ Time | Rat,
                        weights = varIdent(form = ~ 1 | Diet), data = BodyWeight,
                        method = "ML")),
       fallback = TRUE),
  list(case = "orth_ar1_time_reml", kind = "lme",
       expr = quote(lme(distance ~ age, random = ~ 1 | Subject,
                        correlation = corAR1(form = ~ occ | Subject),
                        data = Orthodont)),
       fallback = TRUE),
  list(case = "pixel_nested_car1_reml", kind = "lme",
       expr = quote(lme(pixel ~ day + day2, random = list(Dog = ~ day, Side = ~ 1),
                        correlation = corCAR1(form = ~ day | Dog/Side),
                        data = Pixel)),
       fallback = TRUE)
)

# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

deparse1l <- function(e) paste(trimws(deparse(e, width.cutoff = 500L)), collapse = " ")

fit_with_warnings <- function(e) {
  warns <- character(0)
  m <- withCallingHandlers(
    tryCatch(eval(e, envir = globalenv()), error = function(err) err),
    warning = function(w) {
      warns <<- c(warns, conditionMessage(w))
      invokeRestart("muffleWarning")
    })
  list(m = m, warnings = warns)
}

# One {lower, est, upper} object per row of an intervals() matrix / data frame.
rows_lue <- function(x) {
  if (is.null(x)) return(NULL)
  x <- as.matrix(x)
  out <- lapply(seq_len(nrow(x)), function(i)
    list(lower = unname(x[i, "lower"]), est = unname(x[i, "est."]),
         upper = unname(x[i, "upper"])))
  names(out) <- rownames(x)
  out
}

vec_lue <- function(v) {
  list(lower = unname(v[["lower"]]), est = unname(v[["est."]]),
       upper = unname(v[["upper"]]))
}

# ---------------------------------------------------------------------------
# Fit, intervals, write
# ---------------------------------------------------------------------------

results <- list()
failures <- character(0)

for (cs in cases) {
  expr <- cs$expr
  res <- fit_with_warnings(expr)
  if (inherits(res$m, "error") && isTRUE(cs$fallback) && cs$kind == "lme") {
    message(sprintf("[%s] default fit failed (%s); retrying with lmeControl(opt = \"optim\")",
                    cs$case, conditionMessage(res$m)))
    expr$control <- optim_ctrl
    res <- fit_with_warnings(expr)
  }
  if (inherits(res$m, "error")) {
    msg <- conditionMessage(res$m)
    message(sprintf("[%s] fit FAILED: %s", cs$case, msg))
    failures <- c(failures, sprintf("%s: fit: %s", cs$case, msg))
    results[[cs$case]] <- list(error = paste("fit failed:", msg),
                               call = deparse1l(expr), nlme_version = nlme_version)
    next
  }
  m <- res$m
  out <- list(kind = cs$kind, call = deparse1l(expr), logLik = as.numeric(logLik(m)),
              apVar_ok = is.matrix(m$apVar))
  if (is.character(m$apVar)) out$apVar_message <- m$apVar
  iv <- tryCatch(intervals(m, level = 0.95, which = "var-cov"),
                 error = function(err) err)
  if (inherits(iv, "error")) {
    msg <- conditionMessage(iv)
    message(sprintf("[%s] intervals FAILED: %s", cs$case, msg))
    failures <- c(failures, sprintf("%s: intervals: %s", cs$case, msg))
    out$error <- msg
  } else {
    # out["x"] <- list(NULL) keeps the field (written as JSON null)
    out["corStruct"] <- list(rows_lue(iv$corStruct))
    out["varStruct"] <- list(rows_lue(iv$varStruct))
    out$sigma <- vec_lue(iv$sigma)
    if (cs$kind == "lme") {
      out$reStruct <- lapply(iv$reStruct, rows_lue)
    }
  }
  out$nlme_version <- nlme_version
  out$R_version <- r_version
  results[[cs$case]] <- out
  message(sprintf("[%s] logLik = %.6f, apVar_ok = %s", cs$case, out$logLik, out$apVar_ok))
}

write_json(results, "intervals.json", auto_unbox = TRUE, digits = NA,
           pretty = TRUE, null = "null")

if (length(failures)) {
  message("Failed cases:\n", paste(" ", failures, collapse = "\n"))
} else {
  message("All cases done.")
}
