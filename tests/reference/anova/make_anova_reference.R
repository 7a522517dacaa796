# R reference for jaxmlm's single-model anova (lmerTest types 1/2/3, Satterthwaite and
# Kenward-Roger), emmeans()/pairs()/contrast(), and lme4's allFit.
#
# Produces (paths relative to the repo root):
#   tests/reference/anova/anova_reference.json        all reference numbers (see README.md here)
#   tests/reference/data/exam.csv                     mlmRev's Exam data, all columns
#   tests/reference/data/synthetic/nested_factors.csv synthetic, set.seed(4101)
#   tests/reference/data/synthetic/crossed_factors.csv synthetic, set.seed(4202)
#
# Run from the repo root (about a minute):
#   Rscript tests/reference/anova/make_anova_reference.R
# An optional first argument gives the repo root instead of ".".
#
# Every model is fitted with lmerTest::lmer and a custom optimizer: a tight nloptwrap (BOBYQA) run
# followed by Newton steps with numDeriv's gradient/Hessian, so the optimum is accurate to ~1e-9;
# each fit is cross-checked against a second fit started with minqa's bobyqa (rhoend = 1e-12)
# plus the same polish ("optimum_check" in the JSON). The allFit part uses lme4's DEFAULT control on purpose.
# Data sets are read back from the CSVs written here (for Exam: with mlmRev's factor levels
# re-applied; Hsb82 comes from mlmRev directly and is checked against jaxmlm/data/Hsb82.csv).
suppressPackageStartupMessages({
  library(lme4); library(lmerTest); library(pbkrtest); library(emmeans)
  library(jsonlite); library(mlmRev); library(MASS)
})

args <- commandArgs(TRUE)
root <- if (length(args) >= 1) args[1] else "."
refdir <- file.path(root, "tests", "reference")
datadir <- file.path(refdir, "data")
outjson <- file.path(refdir, "anova", "anova_reference.json")
dir.create(file.path(datadir, "synthetic"), recursive = TRUE, showWarnings = FALSE)

emm_options(lmerTest.limit = 1e6, pbkrtest.limit = 1e6)

ctrl_optCtrl <- list(xtol_abs = 1e-12, ftol_abs = 1e-14, xtol_rel = 1e-12, ftol_rel = 1e-15,
                     maxeval = 1e5)
# Stage 1: a tight first optimizer; stage 2: up to 4 Newton steps on the profiled deviance with
# numDeriv's Richardson gradient and Hessian, which takes theta from ~1e-7 to ~1e-10 of the exact
# optimum. (Stage 1 alone stops on last-bit noise of the deviance, so its path can differ between
# runs/sessions; the polished theta agrees to ~1e-10 whatever the start.) The optimizer returns
# with the deviance function evaluated at the final theta, so the model is built there.
# Richardson steps start at 1% of |theta| (halved 4 times): with the default 1e-4 the deviance's
# rounding noise dominates the gradient (two starts then agree only to ~1e-8 in theta).
nd_args <- list(d = 1e-2)
polish_log <- new.env()
make_polish <- function(stage1 = c("nloptwrap", "bobyqa")) {
  stage1 <- match.arg(stage1)
  function(par, fn, lower, upper, control = list(), ...) {
    r <- if (stage1 == "nloptwrap") {
      lme4::nloptwrap(par, fn, lower, upper, control = ctrl_optCtrl)
    } else {
      o <- minqa::bobyqa(par, fn, lower, upper, control = list(rhobeg = 0.2, rhoend = 1e-12, maxfun = 1e5))
      list(par = o$par, fval = o$fval, feval = o$feval, message = o$msg)
    }
    p <- r$par; f <- fn(p); steps <- 0L
    for (k in 1:4) {
      g <- numDeriv::grad(fn, p, method.args = nd_args); H <- numDeriv::hessian(fn, p, method.args = nd_args)
      st <- tryCatch(solve(H, g), error = function(e) NULL)
      if (is.null(st) || any(!is.finite(st)) || max(abs(st)) > 1e-2) break
      pn <- p - st
      if (any(pn < lower)) break
      fnew <- fn(pn)
      # the deviance is only known to ~1e-12, so a step at the noise floor may not lower it;
      # refuse only steps that clearly raise it
      if (!is.finite(fnew) || fnew > f + 1e-9) break
      p <- pn; f <- fnew; steps <- k
      if (max(abs(st)) < 1e-12) break
    }
    f <- fn(p)
    polish_log$last <- list(stage1 = stage1, stage1_message = r$message, stage1_feval = r$feval,
                            stage1_theta = r$par, stage1_fval = r$fval, newton_steps = steps,
                            gradient = numDeriv::grad(fn, p, method.args = nd_args), fval = f)
    fn(p)
    list(par = p, fval = f, feval = r$feval, conv = 0,
         message = paste0(r$message, " + ", steps, " Newton step(s)"))
  }
}
ctrl <- lmerControl(optimizer = make_polish("nloptwrap"))
ctrl_check <- lmerControl(optimizer = make_polish("bobyqa"))

# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
# evaluate expr, collecting (and muffling) messages and warnings, catching errors
catch_all <- function(expr) {
  msgs <- character(0); warns <- character(0); err <- NULL
  val <- withCallingHandlers(
    tryCatch(expr, error = function(e) { err <<- conditionMessage(e); NULL }),
    warning = function(w) { warns <<- c(warns, conditionMessage(w)); invokeRestart("muffleWarning") },
    message = function(m) { msgs <<- c(msgs, sub("\n$", "", conditionMessage(m)))
                            invokeRestart("muffleMessage") })
  list(value = val, messages = msgs, warnings = warns, error = err)
}
# a JSON array even when of length 0 or 1 (NULL -> [])
arr <- function(x) I(if (is.null(x)) character(0) else x)
printed <- function(x) arr(capture.output(print(x)))
# data frame -> list of row objects (factors as strings, NA as null)
df_rows <- function(df, rowname_col = NULL) {
  df <- as.data.frame(df, stringsAsFactors = FALSE)
  rn <- rownames(df)
  lapply(seq_len(nrow(df)), function(i) {
    r <- lapply(df[i, , drop = FALSE], function(v) {
      if (is.factor(v)) as.character(v) else if (is.numeric(v)) as.numeric(v) else v
    })
    if (!is.null(rowname_col)) r <- c(setNames(list(rn[i]), rowname_col), r)
    r
  })
}
mat_rows <- function(M) unname(lapply(seq_len(nrow(M)), function(i) arr(unname(as.numeric(M[i, ])))))
factor_levels <- function(m) {
  mf <- model.frame(m)
  fl <- list()
  for (v in names(mf)) if (is.factor(mf[[v]])) fl[[v]] <- arr(levels(mf[[v]]))
  fl
}
fstr <- function(f) paste(deparse(f, width.cutoff = 500L), collapse = "")

# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
# Exam (mlmRev; Goldstein et al. 1993, Inner London exam scores)
write.csv(Exam, file.path(datadir, "exam.csv"), row.names = FALSE)
exam <- read.csv(file.path(datadir, "exam.csv"), stringsAsFactors = TRUE)
for (v in names(Exam)) if (is.factor(Exam[[v]]))
  exam[[v]] <- factor(as.character(exam[[v]]), levels = levels(Exam[[v]]))
exam_roundtrip <- isTRUE(all.equal(exam, Exam, tolerance = 0, check.attributes = FALSE)) &&
  identical(sapply(exam, function(v) if (is.factor(v)) levels(v) else NULL),
            sapply(Exam, function(v) if (is.factor(v)) levels(v) else NULL))
exam_maxdiff <- max(sapply(names(Exam), function(v)
  if (is.numeric(Exam[[v]])) max(abs(exam[[v]] - Exam[[v]])) else 0))

# Hsb82 from mlmRev; check the package CSV has the same rows
hsb <- Hsb82
hsb_csv_path <- file.path(root, "jaxmlm", "data", "Hsb82.csv")
hsb_check <- if (file.exists(hsb_csv_path)) {
  h <- read.csv(hsb_csv_path, stringsAsFactors = TRUE)
  same <- nrow(h) == nrow(hsb) && all(sapply(names(hsb), function(v) {
    a <- hsb[[v]]; b <- h[[v]]
    if (is.factor(a)) identical(as.character(a), as.character(b)) else isTRUE(all.equal(a, b, tolerance = 1e-14))
  }))
  list(csv = "jaxmlm/data/Hsb82.csv", same_rows = same,
       max_abs_numeric_diff = max(sapply(names(hsb), function(v)
         if (is.numeric(hsb[[v]])) max(abs(hsb[[v]] - h[[v]])) else 0)))
} else list(csv = "jaxmlm/data/Hsb82.csv", same_rows = NULL, note = "file not found")

# nested_factors: 30 schools x 8 classes (c1..c8 reused across schools) x 3..9 pupils
set.seed(4101)
local({
  rows <- list()
  trt_eff <- c(A = 0, B = 0.6, C = -0.4)
  for (s in 1:30) {
    u <- rnorm(1, sd = 1)
    trts <- sample(rep(c("A", "B", "C"), length.out = 8))
    for (cl in 1:8) {
      n <- sample(3:9, 1); v <- rnorm(1, sd = 0.7)
      gender <- sample(c("F", "M"), n, replace = TRUE)
      x <- round(rnorm(n, mean = 0.5), 3)
      tr <- trts[cl]
      mu <- 20 + trt_eff[[tr]] + ifelse(gender == "M", 0.5, 0) +
        ifelse(gender == "M" & tr == "B", 0.4, 0) + ifelse(gender == "M" & tr == "C", -0.6, 0) +
        0.9 * x
      rows[[length(rows) + 1]] <- data.frame(
        school = sprintf("s%02d", s), class = sprintf("c%d", cl), trt = tr, gender = gender,
        x = x, y = round(mu + u + v + rnorm(n, sd = 2), 4))
    }
  }
  d <- do.call(rbind, rows)
  d$y[sample(nrow(d), round(0.03 * nrow(d)))] <- NA
  write.csv(d, file.path(datadir, "synthetic", "nested_factors.csv"), row.names = FALSE)
})
nested <- read.csv(file.path(datadir, "synthetic", "nested_factors.csv"), stringsAsFactors = TRUE)

# crossed_factors: 36 subjects x 24 items; cond item-level (6 items each); blk within subject
# and within item: pre/post alternate over items, flipped for every other subject
set.seed(4202)
local({
  subj <- sprintf("S%02d", 1:36); item <- sprintf("I%02d", 1:24)
  d <- expand.grid(item = item, subj = subj, stringsAsFactors = FALSE)[, c("subj", "item")]
  si <- match(d$subj, subj); ii <- match(d$item, item)
  d$cond <- rep(c("a", "b", "c", "d"), each = 6)[ii]
  d$blk <- ifelse((si + ii) %% 2 == 0, "pre", "post")
  d$x <- round(rnorm(nrow(d)), 3)
  us <- rnorm(36, sd = 1); ui <- rnorm(24, sd = 0.8)
  ceff <- c(a = 0, b = 0.5, c = 1.0, d = -0.3)[d$cond]
  beff <- ifelse(d$blk == "post", 0.7, 0)
  cb <- ifelse(d$blk == "post", c(a = 0, b = -0.4, c = 0.6, d = 0.2)[d$cond], 0)
  d$y <- round(5 + ceff + beff + cb + 0.3 * d$x + us[si] + ui[ii] + rnorm(nrow(d), sd = 1.5), 4)
  write.csv(d, file.path(datadir, "synthetic", "crossed_factors.csv"), row.names = FALSE)
})
crossed <- read.csv(file.path(datadir, "synthetic", "crossed_factors.csv"), stringsAsFactors = TRUE)
crossed$blk <- factor(as.character(crossed$blk), levels = c("pre", "post"))

# ---------------------------------------------------------------------------------------------
# cases
# ---------------------------------------------------------------------------------------------
sp <- function(spec, at = NULL) list(spec = spec, at = at)
cases <- list(
  list(id = "exam_main", data = "exam.csv", d = exam,
       formula = normexam ~ standLRT + schgend + sex + (1 | school), REML = TRUE,
       specs = list(sp(~ schgend), sp(~ sex | schgend, list(standLRT = 0)), sp(~ sex))),
  list(id = "exam_slope_int", data = "exam.csv", d = exam,
       formula = normexam ~ standLRT * sex + vr + (standLRT | school), REML = TRUE,
       specs = list(sp(~ vr), sp(~ sex), sp(~ sex, list(standLRT = 1)))),
  list(id = "exam_factors", data = "exam.csv", d = exam,
       formula = normexam ~ intake * sex + schgend + (1 | school), REML = TRUE,
       specs = list(sp(~ intake), sp(~ intake | sex), sp(c("intake", "sex")))),
  list(id = "exam_missing_cells", data = "exam.csv", d = exam,
       formula = normexam ~ schgend * sex + standLRT + (1 | school), REML = TRUE,
       specs = list(sp(~ schgend), sp(~ sex | schgend))),
  list(id = "exam_ml", data = "exam.csv", d = exam,
       formula = normexam ~ standLRT + schgend + sex + (1 | school), REML = FALSE,
       specs = list(sp(~ schgend), sp(~ sex | schgend))),
  list(id = "nested_factors", data = "synthetic/nested_factors.csv", d = nested,
       formula = y ~ trt * gender + x + (1 | school/class), REML = TRUE,
       specs = list(sp(~ trt), sp(~ gender | trt), sp(~ trt, list(x = 0.5)))),
  list(id = "crossed_factors", data = "synthetic/crossed_factors.csv", d = crossed,
       formula = y ~ cond * blk + x + (1 | subj) + (1 | item), REML = TRUE,
       specs = list(sp(~ cond), sp(~ cond | blk), sp(~ blk))),
  list(id = "hsb_factors", data = "Hsb82", d = hsb,
       formula = mAch ~ sx * sector + cses + (1 + cses | school), REML = TRUE,
       specs = list(sp(~ sx), sp(~ sector | sx))),
  list(id = "exam_sum_contrasts", data = "exam.csv", d = exam,
       formula = normexam ~ intake * sex + schgend + (1 | school), REML = TRUE,
       contrasts = list(intake = "contr.sum", sex = "contr.sum", schgend = "contr.sum"),
       specs = list(sp(~ intake), sp(~ intake | sex)))
)

fit_case <- function(cs, control) {
  d <- cs$d; f <- cs$formula; REML <- cs$REML; contr <- cs$contrasts; cl <- control
  if (is.null(contr)) lmerTest::lmer(f, data = d, REML = REML, control = cl)
  else lmerTest::lmer(f, data = d, REML = REML, control = cl, contrasts = contr)
}

spec_label <- function(s) {
  lab <- if (inherits(s$spec, "formula")) fstr(s$spec) else paste0("c(", paste0('"', s$spec, '"', collapse = ", "), ")")
  if (!is.null(s$at)) lab <- paste0(lab, " at ", paste(names(s$at), unlist(s$at), sep = "=", collapse = ","))
  lab
}

do_emmeans <- function(m, s, lmer_df) {
  r <- catch_all(emmeans(m, specs = s$spec, at = s$at, lmer.df = lmer_df))
  out <- list(spec = spec_label(s),
              spec_terms = if (inherits(s$spec, "formula")) NULL else arr(s$spec),
              at = s$at, lmer_df = lmer_df, messages = arr(r$messages), warnings = arr(r$warnings),
              error = r$error)
  e <- r$value
  if (is.null(e)) return(out)
  ps <- catch_all(list(df = as.data.frame(summary(e)), pr = capture.output(print(e))))
  out$rows <- df_rows(ps$value$df)
  out$printed <- arr(ps$value$pr)
  out$by <- e@misc$by.vars
  out$grid <- df_rows(e@grid)
  out$linfct <- list(colnames = arr(colnames(e@linfct)), rows = mat_rows(e@linfct))
  out$summary_messages <- arr(c(ps$messages, ps$warnings))
  out$pairs <- lapply(c("tukey", "holm", "bonferroni", "none"), function(A) {
    pr <- catch_all({
      p <- pairs(e, adjust = A)
      list(df = as.data.frame(summary(p)), pr = capture.output(print(p)))
    })
    o <- list(adjust = A, rows = df_rows(pr$value$df),
              messages = arr(c(pr$messages, pr$warnings)), error = pr$error)
    if (A == "tukey") o$printed <- arr(pr$value$pr)
    o
  })
  out
}

one_case <- function(cs) {
  cat("case", cs$id, "\n")
  fit <- catch_all(fit_case(cs, ctrl))
  m <- fit$value
  plog <- polish_log$last
  if (is.null(m)) stop("fit failed for ", cs$id, ": ", fit$error)
  chk <- catch_all(fit_case(cs, ctrl_check))
  m2 <- chk$value
  plog2 <- polish_log$last
  X <- getME(m, "X")
  dropped <- attr(X, "col.dropped")
  ddfs <- c("Satterthwaite", "Kenward-Roger")  # KR also tried on the ML fit, to record what lmerTest does
  anovas <- list()
  for (ty in 1:3) for (ddf in ddfs) {
    a <- catch_all(anova(m, type = ty, ddf = ddf))
    ent <- list(type = ty, ddf = ddf, messages = arr(a$messages), warnings = arr(a$warnings),
                error = a$error)
    if (!is.null(a$value)) {
      tab <- a$value
      p <- catch_all(capture.output(print(tab)))
      ent$heading <- arr(attr(tab, "heading"))
      ent$rows <- df_rows(tab, rowname_col = "term")
      ent$printed <- arr(p$value)
      ent$print_messages <- arr(c(p$messages, p$warnings))
    }
    anovas[[length(anovas) + 1]] <- ent
  }
  # optimum cross-check: theta and type-3 Satterthwaite F against the tight bobyqa fit
  a1 <- suppressMessages(anova(m, type = 3)); a2 <- suppressMessages(anova(m2, type = 3))
  optimum_check <- list(
    optimizer = "bobyqa (minqa, rhoend = 1e-12) + Newton polish",
    stage1_theta = arr(plog2$stage1_theta), newton_steps = plog2$newton_steps,
    theta = arr(unname(getME(m2, "theta"))),
    max_abs_theta_diff = max(abs(getME(m, "theta") - getME(m2, "theta"))),
    objective_diff = m@devcomp$cmp[[if (cs$REML) "REML" else "dev"]] -
      m2@devcomp$cmp[[if (cs$REML) "REML" else "dev"]],
    max_rel_F_diff = max(abs(a1[["F value"]] - a2[["F value"]]) / abs(a2[["F value"]]), na.rm = TRUE),
    messages = arr(c(chk$messages, chk$warnings)))

  rg <- ref_grid(m, lmer.df = "satterthwaite")
  emm <- list()
  emm_ddfs <- if (cs$REML) c("satterthwaite", "kenward-roger") else "satterthwaite"
  for (s in cs$specs) for (dd in emm_ddfs) emm[[length(emm) + 1]] <- do_emmeans(m, s, dd)

  oi <- m@optinfo
  list(
    id = cs$id, data = cs$data, formula = fstr(cs$formula), REML = cs$REML,
    contrasts = cs$contrasts,
    nrow_data = nrow(cs$d), nobs = nobs(m),
    factor_levels = factor_levels(m),
    fixef = as.list(fixef(m)), fixef_names = arr(names(fixef(m))),
    dropped_columns = arr(if (is.null(dropped)) character(0) else names(dropped)),
    X_colnames = arr(colnames(X)),
    vcov_beta = mat_rows(as.matrix(vcov(m))),
    theta = arr(unname(getME(m, "theta"))), theta_names = arr(names(getME(m, "theta"))),
    sigma = sigma(m),
    loglik = as.numeric(logLik(m)),
    REMLcrit = if (cs$REML) REMLcrit(m) else NULL,
    deviance = if (!cs$REML) deviance(m) else NULL,
    minus2loglik = -2 * as.numeric(logLik(m)),
    fit_messages = arr(fit$messages), fit_warnings = arr(fit$warnings),
    optimizer = list(name = "nloptwrap (BOBYQA) + Newton polish", stage1_control = ctrl_optCtrl,
                     stage1_message = plog$stage1_message, stage1_feval = plog$stage1_feval,
                     stage1_theta = arr(plog$stage1_theta), newton_steps = plog$newton_steps,
                     gradient_at_optimum = arr(plog$gradient), message = oi$message,
                     conv_messages = arr(c(oi$conv$lme4$messages, unlist(oi$warnings)))),
    optimum_check = optimum_check,
    anova = anovas,
    ref_grid = list(levels = lapply(rg@levels, function(v) arr(v)), grid = df_rows(rg@grid),
                    printed = printed(rg)),
    emmeans = emm,
    model = m
  )
}

results <- lapply(cases, one_case)
models <- setNames(lapply(results, `[[`, "model"), sapply(results, `[[`, "id"))
results <- lapply(results, function(r) { r$model <- NULL; r })

# general contrast example on case 3
m3 <- models[["exam_factors"]]
contrast_example <- lapply(c("satterthwaite", "kenward-roger"), function(dd) {
  er <- catch_all(emmeans(m3, ~ intake, lmer.df = dd))
  e <- er$value
  list(case = "exam_factors", emmeans_spec = "~ intake", lmer_df = dd,
       emmeans_messages = arr(c(er$messages, er$warnings)),
       coefs = list(c1 = c(1, -1, 0), c2 = c(0.5, 0.5, -1)),
       results = lapply(c("none", "holm"), function(A) {
         r <- catch_all({
           ct <- contrast(e, list(c1 = c(1, -1, 0), c2 = c(0.5, 0.5, -1)), adjust = A)
           list(df = as.data.frame(summary(ct)), pr = capture.output(print(ct)),
                linfct = ct@linfct)
         })
         list(adjust = A, rows = df_rows(r$value$df), printed = arr(r$value$pr),
              linfct = list(colnames = arr(colnames(r$value$linfct)), rows = mat_rows(r$value$linfct)),
              messages = arr(c(r$messages, r$warnings)))
       }))
})

# ---------------------------------------------------------------------------------------------
# allFit on nlschools, lang ~ IQ + (1 + IQ | class), ML, lme4's DEFAULT control
# ---------------------------------------------------------------------------------------------
cat("allFit\n")
af_fit <- catch_all(lme4::lmer(lang ~ IQ + (1 + IQ | class), data = nlschools, REML = FALSE))
maf <- af_fit$value
run_allfit <- function() {
  t <- NULL; res <- NULL
  out <- capture.output(r <- catch_all({ t <- system.time(res <- allFit(maf)); res }))
  list(af = res, elapsed = t[["elapsed"]], stdout = out, messages = r$messages, warnings = r$warnings)
}
af_runs <- lapply(1:3, function(i) run_allfit())
af <- af_runs[[1]]$af
saf <- summary(af)
af_entries <- lapply(names(af), function(nm) {
  f <- af[[nm]]
  if (inherits(f, "error") || !inherits(f, "merMod"))
    return(list(optimizer = nm, ok = FALSE, error = conditionMessage(f)))
  oi <- f@optinfo
  list(optimizer = nm, ok = TRUE, fixef = as.list(fixef(f)), theta = arr(unname(getME(f, "theta"))),
       sigma = sigma(f), loglik = as.numeric(logLik(f)), deviance = deviance(f),
       minus2loglik = -2 * as.numeric(logLik(f)),
       feval = oi$feval, optimizer_message = oi$message, optimizer_conv = oi$conv$opt,
       lme4_messages = arr(oi$conv$lme4$messages), warnings = arr(unlist(oi$warnings)),
       summary_msgs = arr(unlist(saf$msgs[[nm]])))
})
allfit <- list(
  data = "nlschools (MASS)", formula = "lang ~ IQ + (1 + IQ | class)", REML = FALSE,
  control = "lme4 default (lmerControl())", nobs = nobs(maf),
  default_fit = list(optimizer = maf@optinfo$optimizer, fixef = as.list(fixef(maf)),
                     theta = arr(unname(getME(maf, "theta"))), sigma = sigma(maf),
                     deviance = deviance(maf), loglik = as.numeric(logLik(maf)),
                     messages = arr(af_fit$messages), warnings = arr(af_fit$warnings),
                     lme4_messages = arr(maf@optinfo$conv$lme4$messages)),
  n_optimizers = length(af), optimizers = arr(names(af)),
  which_OK = as.list(saf$which.OK),
  fits = af_entries,
  elapsed_s = arr(sapply(af_runs, `[[`, "elapsed")),
  elapsed_median_s = median(sapply(af_runs, `[[`, "elapsed")),
  allfit_stdout = arr(af_runs[[1]]$stdout),
  allfit_messages = arr(c(af_runs[[1]]$messages, af_runs[[1]]$warnings)),
  summary_printed = printed(saf),
  summary_times = lapply(seq_len(nrow(saf$times)), function(i)
    c(list(optimizer = rownames(saf$times)[i]), as.list(saf$times[i, ])))
)

# ---------------------------------------------------------------------------------------------
meta <- list(
  R = R.version.string,
  packages = lapply(setNames(nm = c("lme4", "lmerTest", "pbkrtest", "emmeans", "Matrix", "mlmRev",
                                    "MASS", "jsonlite", "nloptr", "minqa", "optimx", "dfoptim")),
                    function(p) if (requireNamespace(p, quietly = TRUE)) as.character(packageVersion(p)) else NULL),
  script = "tests/reference/anova/make_anova_reference.R",
  control = paste("lmerControl(optimizer = <nloptwrap with optCtrl = list(xtol_abs = 1e-12, ftol_abs = 1e-14,",
                  "xtol_rel = 1e-12, ftol_rel = 1e-15, maxeval = 1e5), then Newton polish (numDeriv)>)"),
  emm_options = "emm_options(lmerTest.limit = 1e6, pbkrtest.limit = 1e6)",
  seeds = list(nested_factors = 4101, crossed_factors = 4202),
  data_checks = list(exam_csv_roundtrip_identical = exam_roundtrip,
                     exam_csv_max_abs_numeric_diff = exam_maxdiff, hsb82 = hsb_check)
)
writeLines(toJSON(list(meta = meta, cases = results, contrast_example = contrast_example,
                       allfit = allfit),
                  auto_unbox = TRUE, digits = NA, pretty = TRUE, na = "null", null = "null"), outjson)
cat("wrote", outjson, "\n")
