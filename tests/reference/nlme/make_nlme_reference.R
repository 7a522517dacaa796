# Reference fits from nlme (lme / gls with correlation and variance structures).
#
# Run from this directory:   Rscript make_nlme_reference.R
#
# Writes the data CSVs used by the fits and one <case>.json per fitted case.
# A case that fails in nlme is reported on stderr and skipped; the rest go on.

suppressPackageStartupMessages({
  library(nlme)
  library(jsonlite)
})

nlme_version <- as.character(packageVersion("nlme"))
r_version <- R.version.string

# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------

sleepstudy <- lme4::sleepstudy
write.csv(data.frame(Reaction = sleepstudy$Reaction, Days = sleepstudy$Days,
                     Subject = as.character(sleepstudy$Subject)),
          "sleepstudy.csv", row.names = FALSE)

data(Orthodont, package = "nlme")
# occ = 0,1,2,3: unit-step occasion index for corAR1 (nlme's corAR1 with
# form = ~ age | Subject, age = 8,10,12,14, silently becomes a degenerate corARMA).
Orthodont$occ <- (Orthodont$age - 8) / 2
write.csv(data.frame(distance = Orthodont$distance, age = Orthodont$age,
                     Subject = as.character(Orthodont$Subject),
                     Sex = as.character(Orthodont$Sex), occ = Orthodont$occ),
          "Orthodont.csv", row.names = FALSE)

data(BodyWeight, package = "nlme")
write.csv(data.frame(weight = BodyWeight$weight, Time = BodyWeight$Time,
                     Rat = as.character(BodyWeight$Rat),
                     Diet = as.character(BodyWeight$Diet)),
          "BodyWeight.csv", row.names = FALSE)

data(Ovary, package = "nlme")
Ovary$s1 <- sin(2 * pi * Ovary$Time)
Ovary$c1 <- cos(2 * pi * Ovary$Time)
write.csv(data.frame(follicles = Ovary$follicles, Time = Ovary$Time,
                     Mare = as.character(Ovary$Mare),
                     s1 = Ovary$s1, c1 = Ovary$c1),
          "Ovary.csv", row.names = FALSE)

data(Pixel, package = "nlme")
Pixel$day2 <- Pixel$day^2
write.csv(data.frame(pixel = Pixel$pixel, day = Pixel$day, day2 = Pixel$day2,
                     Dog = as.character(Pixel$Dog), Side = as.character(Pixel$Side)),
          "Pixel.csv", row.names = FALSE)

# Synthetic spatial data: 40 plots x 8 points, exponential correlation
# exp(-d / 2) with sd 1 within each plot, plot effect N(0, 0.8^2).
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
write.csv(data.frame(y = spatial$y, x1 = spatial$x1, cx = spatial$cx,
                     cy = spatial$cy, plot = as.character(spatial$plot)),
          "spatial.csv", row.names = FALSE)

# ---------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------

optim_ctrl <- quote(lmeControl(opt = "optim"))

cases <- list(
  list(case = "sleep_ar1_reml", data = "sleepstudy.csv", kind = "lme",
       expr = quote(lme(Reaction ~ Days, random = ~ Days | Subject,
                        correlation = corAR1(form = ~ Days | Subject),
                        data = sleepstudy, control = lmeControl(opt = "optim")))),
  list(case = "sleep_ar1_ml", data = "sleepstudy.csv", kind = "lme",
       expr = quote(lme(Reaction ~ Days, random = ~ Days | Subject,
                        correlation = corAR1(form = ~ Days | Subject),
                        data = sleepstudy, method = "ML",
                        control = lmeControl(opt = "optim")))),
  list(case = "orth_ident_reml", data = "Orthodont.csv", kind = "lme",
       expr = quote(lme(distance ~ age * Sex, random = ~ 1 | Subject,
                        weights = varIdent(form = ~ 1 | Sex), data = Orthodont))),
  list(case = "orth_ident_ml", data = "Orthodont.csv", kind = "lme",
       expr = quote(lme(distance ~ age * Sex, random = ~ 1 | Subject,
                        weights = varIdent(form = ~ 1 | Sex), data = Orthodont,
                        method = "ML"))),
  list(case = "bw_car1_power_reml", data = "BodyWeight.csv", kind = "lme",
       expr = quote(lme(weight ~ Time * Diet, random = ~ Time | Rat,
                        correlation = corCAR1(form = ~ Time | Rat),
                        weights = varPower(form = ~ Time), data = BodyWeight)),
       fallback = TRUE),
  list(case = "orth_cs_gls_reml", data = "Orthodont.csv", kind = "gls",
       expr = quote(gls(distance ~ age * Sex,
                        correlation = corCompSymm(form = ~ 1 | Subject),
                        data = Orthodont))),
  list(case = "ovary_ar1_gls_ml", data = "Ovary.csv", kind = "gls",
       note = "s1 = sin(2*pi*Time), c1 = cos(2*pi*Time)",
       expr = quote(gls(follicles ~ s1 + c1,
                        correlation = corAR1(form = ~ 1 | Mare),
                        data = Ovary, method = "ML"))),
  list(case = "pixel_nested_car1_reml", data = "Pixel.csv", kind = "lme",
       note = "day2 = day^2",
       expr = quote(lme(pixel ~ day + day2, random = list(Dog = ~ day, Side = ~ 1),
                        correlation = corCAR1(form = ~ day | Dog/Side),
                        data = Pixel)),
       fallback = TRUE),
  list(case = "orth_exp_ml", data = "Orthodont.csv", kind = "lme",
       expr = quote(lme(distance ~ age, random = ~ 1 | Subject,
                        weights = varExp(form = ~ age), data = Orthodont,
                        method = "ML")),
       fallback = TRUE),
  list(case = "orth_ar1_ident_gls_ml", data = "Orthodont.csv", kind = "gls",
       expr = quote(gls(distance ~ age * Sex,
                        correlation = corAR1(form = ~ 1 | Subject),
                        weights = varIdent(form = ~ 1 | Sex),
                        data = Orthodont, method = "ML"))),
  list(case = "spatial_exp_reml", data = "spatial.csv", kind = "lme",
       expr = quote(lme(y ~ x1, random = ~ 1 | plot,
                        correlation = corExp(form = ~ cx + cy | plot),
                        data = spatial)),
       fallback = TRUE),
  list(case = "spatial_exp_nugget_ml", data = "spatial.csv", kind = "lme",
       expr = quote(lme(y ~ x1, random = ~ 1 | plot,
                        correlation = corExp(form = ~ cx + cy | plot, nugget = TRUE),
                        data = spatial, method = "ML")),
       fallback = TRUE),
  list(case = "orth_fixed_gls_reml", data = "Orthodont.csv", kind = "gls",
       expr = quote(gls(distance ~ age, weights = varFixed(~ age), data = Orthodont))),
  list(case = "bw_ident_diet_ml", data = "BodyWeight.csv", kind = "lme",
       expr = quote(lme(weight ~ Time * Diet, random = ~ Time | Rat,
                        weights = varIdent(form = ~ 1 | Diet), data = BodyWeight,
                        method = "ML")),
       fallback = TRUE),
  list(case = "orth_ar1_time_reml", data = "Orthodont.csv", kind = "lme",
       note = paste("occ = (age - 8)/2. corAR1(form = ~ age | Subject) is not usable:",
                    "with age = 8,10,12,14 nlme silently converts it to a corARMA",
                    "(Phi1 = 0, identity correlation), so occ is used instead."),
       expr = quote(lme(distance ~ age, random = ~ 1 | Subject,
                        correlation = corAR1(form = ~ occ | Subject),
                        data = Orthodont)),
       fallback = TRUE),
  list(case = "sleep_plain_reml", data = "sleepstudy.csv", kind = "lme",
       expr = quote(lme(Reaction ~ Days, random = ~ Days | Subject, data = sleepstudy)),
       lmer = quote(lme4::lmer(Reaction ~ Days + (Days | Subject), data = sleepstudy,
                               REML = TRUE))),
  list(case = "orth_plain_gls_reml", data = "Orthodont.csv", kind = "gls",
       expr = quote(gls(distance ~ age * Sex, data = Orthodont)))
)

# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

deparse1l <- function(e) paste(trimws(deparse(e, width.cutoff = 500L)), collapse = " ")

named_list <- function(x) {
  if (is.null(x) || length(x) == 0) return(NULL)
  as.list(x)
}

add_optim_control <- function(e) {
  e$control <- optim_ctrl
  e
}

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

struct_coef <- function(s) {
  if (is.null(s)) return(NULL)
  named_list(coef(s, unconstrained = FALSE))
}

re_summary <- function(m) {
  re <- m$modelStruct$reStruct
  out <- list()
  for (nm in names(re)) {
    pd <- as.matrix(re[[nm]]) * m$sigma^2
    sds <- sqrt(diag(pd))
    names(sds) <- colnames(pd)
    cr <- NULL
    if (ncol(pd) > 1) {
      cm <- cov2cor(pd)
      cr <- lapply(seq_len(nrow(cm)), function(i) unname(cm[i, ]))
    }
    out[[nm]] <- list(sd = as.list(sds), cor = cr,
                      cov = lapply(seq_len(nrow(pd)), function(i) unname(pd[i, ])))
  }
  out
}

# ---------------------------------------------------------------------------
# Fit and write
# ---------------------------------------------------------------------------

failures <- character(0)

for (cs in cases) {
  expr <- cs$expr
  res <- fit_with_warnings(expr)
  fallback_used <- FALSE
  default_error <- NULL
  if (inherits(res$m, "error") && isTRUE(cs$fallback) && cs$kind == "lme") {
    default_error <- conditionMessage(res$m)
    message(sprintf("[%s] default fit failed (%s); retrying with lmeControl(opt = \"optim\")",
                    cs$case, default_error))
    expr <- add_optim_control(expr)
    res <- fit_with_warnings(expr)
    fallback_used <- TRUE
  }
  if (inherits(res$m, "error")) {
    msg <- conditionMessage(res$m)
    message(sprintf("[%s] FAILED: %s", cs$case, msg))
    failures <- c(failures, sprintf("%s: %s", cs$case, msg))
    next
  }
  m <- res$m
  ll <- logLik(m)
  fx <- if (cs$kind == "lme") fixef(m) else coef(m)
  out <- list(
    case = cs$case,
    call = deparse1l(expr),
    data = cs$data,
    method = m$method,
    kind = cs$kind,
    logLik = as.numeric(ll),
    AIC = AIC(m),
    BIC = BIC(m),
    df = as.integer(attr(ll, "df")),
    nobs = as.integer(nobs(m)),
    fixef = as.list(fx),
    se = as.list(sqrt(diag(vcov(m)))),
    sigma = m$sigma
  )
  if (cs$kind == "lme") out$random <- re_summary(m)
  cst <- m$modelStruct$corStruct
  vst <- m$modelStruct$varStruct
  # out["x"] <- list(NULL) keeps the field (written as JSON null)
  out["corStruct"] <- list(struct_coef(cst))
  out["corStruct_class"] <- list(if (is.null(cst)) NULL else class(cst)[1])
  out["varStruct"] <- list(struct_coef(vst))
  out["varStruct_class"] <- list(if (is.null(vst)) NULL else class(vst)[1])
  if (!is.null(cs$note)) out$note <- cs$note
  conv <- list(
    control = if (is.null(expr$control)) "default" else deparse1l(expr$control),
    fallback_to_optim = fallback_used,
    apVar_ok = is.matrix(m$apVar),
    warnings = if (length(res$warnings)) res$warnings else NULL
  )
  if (!is.null(default_error)) conv$default_error <- default_error
  if (is.character(m$apVar)) conv$apVar_message <- m$apVar
  if (!is.null(m$numIter)) conv$numIter <- m$numIter
  out$convergence <- conv
  if (!is.null(cs$lmer)) {
    lm4 <- eval(cs$lmer, envir = globalenv())
    out$lmer_call <- deparse1l(cs$lmer)
    out$lmer_logLik <- as.numeric(logLik(lm4))
  }
  out$nlme_version <- nlme_version
  out$R_version <- r_version
  write_json(out, paste0(cs$case, ".json"), auto_unbox = TRUE, digits = NA,
             pretty = TRUE, null = "null")
  message(sprintf("[%s] logLik = %.6f", cs$case, as.numeric(ll)))
}

if (length(failures)) {
  message("Failed cases:\n", paste(" ", failures, collapse = "\n"))
} else {
  message("All cases fitted.")
}
