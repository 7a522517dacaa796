# Extra reference fits from lme4 / lmerTest for jaxmlm parity checks.
# Based on lme4/make_reference.R (same JSON schema and field names), plus:
#   data_csv         "sleepstudy" (built-in data set, shipped as CSV by the package) or
#                    "synthetic/NAME.csv" (relative to DATADIR, written by this script)
#   dropped_columns  fixed-effect columns lme4 dropped for rank deficiency ([] if none)
#   nrow_data        rows of the data set before lme4's NA handling
#   rows_omitted     1-based data rows dropped by na.omit ([] if none)
#   lme4_messages    messages / warnings emitted while fitting ([] if none)
#   optimizer        the optimizer lme4 used (m@optinfo$optimizer)
#   notes            failures of optional parts (profile, KR, ranova) ([] if none)
# These five are always JSON arrays; shared fields keep make_reference.R's auto_unbox behaviour
# (e.g. a one-parameter theta is a scalar, as in lme4/dyestuff.json).
#
# Usage (from tests/reference):  Rscript make_extra_reference.R extra_cases.tsv extra data
# CASES.tsv columns: id  package  dataset  formula  REML(TRUE/FALSE)  family(gaussian)  optimizer
#   optimizer: empty = lme4's default (nloptwrap); otherwise passed as lmerControl(optimizer = .)
#   package "synthetic": data from DATADIR/synthetic/<dataset>.csv, generated below with fixed
#   seeds, written by write.csv(row.names = FALSE) and read back with
#   read.csv(stringsAsFactors = TRUE) so factor levels are the sorted strings.
# REF_FAST=1: one timing instead of five; profile confint and Kenward-Roger df only for
#   nobs <= 1000 (they are slow on Hsb82 / nlschools); ranova always.
suppressPackageStartupMessages({library(lme4); library(lmerTest); library(jsonlite); library(MASS); library(mlmRev); library(nlme)})
args <- commandArgs(TRUE)
cases <- read.delim(args[1], header = TRUE, stringsAsFactors = FALSE, quote = "")
out <- args[2]
datadir <- if (length(args) >= 3) args[3] else "data"
fast <- Sys.getenv("REF_FAST") != ""
dir.create(out, showWarnings = FALSE, recursive = TRUE)
synth_dir <- file.path(datadir, "synthetic")
dir.create(synth_dir, showWarnings = FALSE, recursive = TRUE)

## ---------------------------------------------------------------- synthetic data
write_synth <- function(d, name) write.csv(d, file.path(synth_dir, paste0(name, ".csv")), row.names = FALSE)

# i, j: 40 subjects x 15 items fully crossed, ~15% of cells dropped, rows shuffled;
# correlated random intercept + slope for both subjects and items.
local({
  set.seed(101)
  subj <- sprintf("s%02d", 1:40); item <- sprintf("i%02d", 1:15)
  d <- expand.grid(subj = subj, item = item, stringsAsFactors = FALSE)
  d <- d[runif(nrow(d)) > 0.15, ]
  d$x <- round(rnorm(nrow(d)), 3)
  bs <- mvrnorm(40, c(0, 0), matrix(c(1, 0.3 * 1 * 0.5, 0.3 * 1 * 0.5, 0.5^2), 2))
  bi <- mvrnorm(15, c(0, 0), matrix(c(0.7^2, -0.4 * 0.7 * 0.4, -0.4 * 0.7 * 0.4, 0.4^2), 2))
  si <- match(d$subj, subj); ii <- match(d$item, item)
  d$y <- round(2 + 0.5 * d$x + bs[si, 1] + bs[si, 2] * d$x + bi[ii, 1] + bi[ii, 2] * d$x +
               rnorm(nrow(d), sd = 1), 4)
  d <- d[sample(nrow(d)), c("y", "x", "subj", "item")]
  write_synth(d, "crossed_slopes")
})

# k: 8 schools, 3-4 classes each (labels c1..c4 reused across schools), 5-12 students per class.
local({
  set.seed(202)
  rows <- list()
  for (s in 1:8) {
    ncl <- sample(3:4, 1)
    u <- rnorm(1, sd = 1.2)
    for (cl in seq_len(ncl)) {
      n <- sample(5:12, 1); v <- rnorm(1, sd = 0.7)
      x <- round(rnorm(n, mean = 0.5), 3)
      rows[[length(rows) + 1]] <- data.frame(
        y = round(1 + 0.8 * x + u + v + rnorm(n), 4), x = x,
        school = sprintf("S%d", s), class = sprintf("c%d", cl))
    }
  }
  write_synth(do.call(rbind, rows), "nested_schools")
})

# l: 3-level and 2-level factors with interaction, integer group ids 101..130, NAs in x and y.
local({
  set.seed(303)
  g <- rep(101:130, each = 8); n <- length(g)
  f3 <- sample(c("low", "mid", "high"), n, replace = TRUE)
  f2 <- sample(c("no", "yes"), n, replace = TRUE)
  x <- round(rnorm(n), 3)
  eff3 <- c(low = 0, mid = 0.8, high = 1.5)[f3]; eff2 <- ifelse(f2 == "yes", -0.6, 0)
  int <- ifelse(f2 == "yes" & f3 == "high", 0.9, 0)
  u <- rnorm(30, sd = 0.9)[g - 100]
  y <- round(10 + eff3 + eff2 + int + 0.4 * x + u + rnorm(n, sd = 0.8), 4)
  x[sample(n, 9)] <- NA; y[sample(n, 9)] <- NA
  write_synth(data.frame(y = y, f3 = f3, f2 = f2, x = x, g = g), "factors_na")
})

# m: x3 = x1 + x2 exactly (2-decimal values so the CSV text is exact too).
local({
  set.seed(404)
  g <- sprintf("g%02d", rep(1:30, each = 6)); n <- length(g)
  x1 <- round(rnorm(n), 2); x2 <- round(rnorm(n), 2); x3 <- round(x1 + x2, 2)
  u <- rnorm(30, sd = 1)[match(g, sprintf("g%02d", 1:30))]
  y <- round(5 + 1.2 * x1 - 0.7 * x2 + u + rnorm(n), 4)
  write_synth(data.frame(y = y, x1 = x1, x2 = x2, x3 = x3, g = g), "rank_deficient")
})

# p: 60 groups x 10 rows, correlated random intercept and two slopes.
local({
  set.seed(505)
  G <- 60; g <- sprintf("g%02d", rep(1:G, each = 10)); n <- length(g)
  sds <- c(1, 0.5, 0.4)
  R <- matrix(c(1, 0.3, -0.2, 0.3, 1, 0.25, -0.2, 0.25, 1), 3)
  b <- mvrnorm(G, rep(0, 3), diag(sds) %*% R %*% diag(sds))
  gi <- rep(1:G, each = 10)
  x <- round(rnorm(n), 3); z <- round(runif(n, -1, 1), 3)
  y <- round(3 + 1 * x - 0.5 * z + b[gi, 1] + b[gi, 2] * x + b[gi, 3] * z + rnorm(n, sd = 0.8), 4)
  write_synth(data.frame(y = y, x = x, z = z, g = g), "slopes3")
})

## ---------------------------------------------------------------- fits
try_or_note <- function(expr, what) tryCatch(expr, error = function(e) {
  notes <<- c(notes, paste0(what, " failed: ", conditionMessage(e))); NULL })

for (i in seq_len(nrow(cases))) {
  cs <- cases[i, ]
  if (cs$package == "synthetic") {
    data_csv <- paste0("synthetic/", cs$dataset, ".csv")
    d <- read.csv(file.path(datadir, data_csv), stringsAsFactors = TRUE)
  } else {
    e <- new.env(); data(list = cs$dataset, package = cs$package, envir = e)
    d <- get(cs$dataset, envir = e)
    data_csv <- cs$dataset
  }
  f <- as.formula(cs$formula)
  reml <- as.logical(cs$REML)
  fam <- cs$family
  stopifnot(fam == "gaussian")
  msgs <- character(0); notes <- character(0)
  opt <- if (!is.null(cs$optimizer) && !is.na(cs$optimizer) && nzchar(cs$optimizer)) cs$optimizer else NULL
  ctrl <- if (is.null(opt)) lmerControl() else lmerControl(optimizer = opt)
  m <- withCallingHandlers(lmerTest::lmer(f, data = d, REML = reml, control = ctrl),
    message = function(c) { msgs <<- c(msgs, trimws(conditionMessage(c))); invokeRestart("muffleMessage") },
    warning = function(c) { msgs <<- c(msgs, paste("warning:", conditionMessage(c))); invokeRestart("muffleWarning") })
  fitfast <- function() suppressWarnings(suppressMessages(lme4::lmer(f, data = d, REML = reml, control = ctrl)))
  times <- sapply(seq_len(if (!fast) 5 else 1), function(k) system.time(fitfast())[["elapsed"]])
  vc <- as.data.frame(VarCorr(m))
  cf <- summary(m)$coefficients
  ranefs <- as.data.frame(ranef(m, condVar = TRUE))
  heavy <- nobs(m) < 20000 && (!fast || nobs(m) <= 1000)
  omitted <- attr(model.frame(m), "na.action")
  res <- list(
    id = cs$id, package = cs$package, dataset = cs$dataset, formula = cs$formula,
    REML = reml, family = fam, data_csv = data_csv, optimizer = m@optinfo$optimizer, nobs = nobs(m),
    nrow_data = nrow(d), rows_omitted = I(if (is.null(omitted)) integer(0) else as.integer(unname(omitted))),
    ngroups = as.list(ngrps(m)),
    fixef = as.list(fixef(m)),
    dropped_columns = I({ cd <- attr(getME(m, "X"), "col.dropped"); if (is.null(cd)) character(0) else names(cd) }),
    se = as.list(setNames(cf[, "Std. Error"], rownames(cf))),
    df_satterthwaite = if ("df" %in% colnames(cf)) as.list(setNames(cf[, "df"], rownames(cf))) else NULL,
    theta = unname(getME(m, "theta")), theta_names = names(getME(m, "theta")),
    sigma = sigma(m),
    varcorr = vc,
    loglik = as.numeric(logLik(m)), df_model = attr(logLik(m), "df"),
    deviance_or_reml = if (reml) unname(getME(m, "devcomp")$cmp[["REML"]]) else deviance(m),
    AIC = AIC(m), BIC = BIC(m),
    singular = isSingular(m),
    vcov_beta = unname(as.matrix(vcov(m))),
    factor_levels = lapply(Filter(is.factor, d), levels),
    fitted = unname(fitted(m)),
    confint_profile = if (heavy) try_or_note({ ci <- suppressWarnings(confint(m, method = "profile", oldNames = FALSE, quiet = TRUE)); data.frame(param = rownames(ci), lower = ci[, 1], upper = ci[, 2]) }, "confint_profile") else NULL,
    confint_wald = { ci <- confint(m, method = "Wald", oldNames = FALSE); ci <- ci[!is.na(ci[, 1]), , drop = FALSE]; data.frame(param = rownames(ci), lower = ci[, 1], upper = ci[, 2]) },
    df_kenward_roger = if (reml && heavy) try_or_note(as.list(setNames(summary(m, ddf = "Kenward-Roger")$coefficients[, "df"], rownames(cf))), "df_kenward_roger") else NULL,
    ranova = try_or_note({ r <- as.data.frame(suppressMessages(lmerTest::ranova(m))); data.frame(term = rownames(r), r, check.names = FALSE) }, "ranova"),
    ranef = ranefs,
    lme4_seconds = times,
    lme4_messages = I(unique(msgs)),
    notes = I(notes)
  )
  writeLines(toJSON(res, digits = NA, auto_unbox = TRUE, pretty = TRUE), file.path(out, paste0(cs$id, ".json")))
  cat(cs$id, "done", median(times), "s;", nobs(m), "obs;", if (length(msgs)) paste("msgs:", paste(msgs, collapse = " | ")), if (length(notes)) paste("notes:", paste(notes, collapse = " | ")), "\n")
}
