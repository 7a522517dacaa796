# lme4 reference fits with prior weights and offsets, for jaxmlm's weights/offset support.
#
# Builds the data sets below with fixed seeds, writes each as CSV into this directory
# (write.csv, row.names = FALSE), reads each CSV back and fits on the read-back data (so the
# consumer sees exactly the numbers the fit saw), then writes weights_reference.json.
#
# Usage (from tests/reference/weights):  Rscript make_weights_reference.R
suppressPackageStartupMessages({library(lme4); library(lmerTest); library(jsonlite)})

ctrl <- lmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-10, maxfun = 1e5))

wcsv <- function(d, file) {
  write.csv(d, file, row.names = FALSE)
  read.csv(file, stringsAsFactors = TRUE)
}

## ---------------------------------------------------------------- data
# 1/2/8: sleepstudy with precision weights (w) and a copy with 5 zero weights (w0)
set.seed(20240101)
sl <- data.frame(Reaction = sleepstudy$Reaction, Days = sleepstudy$Days,
                 Subject = as.character(sleepstudy$Subject))
sl$w <- runif(180, 0.5, 2)
sl$w0 <- sl$w
zero_rows <- c(3L, 47L, 95L, 133L, 180L)
sl$w0[zero_rows] <- 0
sl <- wcsv(sl, "sleepstudy_w.csv")
# Subject ids are the numeric-looking strings "308".."372"; read.csv makes them integers, so
# turn them back into a factor (levels sort the same way as lme4's sleepstudy$Subject).
sl$Subject <- factor(sl$Subject)

# 3: aggregated data with count weights
set.seed(20240102)
G <- 30; xl <- c("a", "b", "c")
raw <- do.call(rbind, lapply(seq_len(G), function(i) {
  b <- rnorm(1, 0, 1.5)
  do.call(rbind, lapply(seq_along(xl), function(j) {
    n <- 1 + rpois(1, 7)
    data.frame(g = sprintf("g%02d", i), x = xl[j],
               y = 10 + c(0, 1.2, -0.8)[j] + b + rnorm(n, 0, 2))
  }))
}))
agg <- aggregate(y ~ g + x, data = raw, FUN = function(v) c(ybar = mean(v), n = length(v)))
agg <- data.frame(g = agg$g, x = agg$x, n = as.integer(agg$y[, "n"]), ybar = agg$y[, "ybar"])
agg <- agg[order(agg$g, agg$x), ]
agg <- wcsv(agg, "agg_counts.csv")

# 4: crossed subj x item, every pair once, precision weights
set.seed(20240103)
cr <- expand.grid(item = sprintf("i%02d", 1:12), subj = sprintf("s%02d", 1:20),
                  stringsAsFactors = FALSE)[, c("subj", "item")]
bs <- rnorm(20, 0, 1.0); bi <- rnorm(12, 0, 0.7)
cr$x <- round(rnorm(nrow(cr)), 4)
cr$w <- runif(nrow(cr), 0.3, 3)
cr$y <- 2 + 0.5 * cr$x + bs[match(cr$subj, sprintf("s%02d", 1:20))] +
  bi[match(cr$item, sprintf("i%02d", 1:12))] + rnorm(nrow(cr), 0, 1.2) / sqrt(cr$w)
cr <- wcsv(cr, "crossed_w.csv")

# 5/6/10: offsets, 25 groups with 6..10 rows each
set.seed(20240104)
ng <- sample(6:10, 25, replace = TRUE)
of <- data.frame(g = rep(sprintf("g%02d", 1:25), ng))
bg <- rnorm(25, 0, 0.8)
of$x <- round(rnorm(nrow(of)), 4)
of$z <- round(runif(nrow(of), -1, 3), 4)
of$expo <- round(runif(nrow(of), 0.5, 5), 4)
of$y <- 1 + 0.7 * of$x + 0.5 * of$z + log(of$expo) + bg[match(of$g, sprintf("g%02d", 1:25))] +
  rnorm(nrow(of), 0, 0.6)
of <- wcsv(of, "offset.csv")
# newdata for case 10: seen groups g01, g07, g25 and unseen groups g26, g99, h01
nd <- data.frame(g = c("g01", "g07", "g25", "g26", "g99", "h01"),
                 x = c(-1, 0, 1.5, 0.3, -0.4, 2),
                 z = c(0, 2, -1, 1, 0.5, 3),
                 expo = c(1, 2.5, 0.7, 4, 1.5, 3))
nd <- read.csv({write.csv(nd, "predict_newdata.csv", row.names = FALSE); "predict_newdata.csv"},
               stringsAsFactors = FALSE)

# 7: offset + weights + random slope
set.seed(20240105)
ng7 <- sample(5:12, 30, replace = TRUE)
os <- data.frame(g = rep(sprintf("g%02d", 1:30), ng7))
gi <- match(os$g, sprintf("g%02d", 1:30))
b0 <- rnorm(30, 0, 1); b1 <- 0.5 * b0 * 0.4 + rnorm(30, 0, 0.5)
os$x <- round(rnorm(nrow(os)), 4)
os$z <- round(rnorm(nrow(os), 0, 2), 4)
os$w <- round(runif(nrow(os), 0.25, 4), 4)
os$y <- 3 - 0.4 * os$x + os$z + b0[gi] + b1[gi] * os$x + rnorm(nrow(os), 0, 1) / sqrt(os$w)
os <- wcsv(os, "offset_slope.csv")

# 9: nested a/b with weights; b labels b1..b4 repeat across a (nesting only through a/b)
set.seed(20240106)
ne <- do.call(rbind, lapply(1:10, function(i) do.call(rbind, lapply(1:4, function(j)
  data.frame(a = sprintf("a%02d", i), b = paste0("b", j), k = seq_len(sample(3:5, 1)))))))
ne$k <- NULL
ba <- rnorm(10, 0, 1.2); bab <- rnorm(40, 0, 0.6)
ai <- match(ne$a, sprintf("a%02d", 1:10)); abi <- (ai - 1) * 4 + as.integer(sub("b", "", ne$b))
ne$x <- round(rnorm(nrow(ne)), 4)
ne$w <- round(runif(nrow(ne), 0.5, 2.5), 4)
ne$y <- 5 + 1.1 * ne$x + ba[ai] + bab[abi] + rnorm(nrow(ne), 0, 0.9) / sqrt(ne$w)
ne <- wcsv(ne, "nested_w.csv")

## ---------------------------------------------------------------- cases
cases <- list(
  sleep_prec_reml = list(data = "sl", csv = "sleepstudy_w.csv", formula = Reaction ~ Days + (Days | Subject),
                         REML = TRUE, weights = "w", offset = NULL),
  sleep_prec_ml = list(data = "sl", csv = "sleepstudy_w.csv", formula = Reaction ~ Days + (Days | Subject),
                       REML = FALSE, weights = "w", offset = NULL),
  agg_counts = list(data = "agg", csv = "agg_counts.csv", formula = ybar ~ x + (1 | g),
                    REML = TRUE, weights = "n", offset = NULL),
  crossed_w = list(data = "cr", csv = "crossed_w.csv", formula = y ~ x + (1 | subj) + (1 | item),
                   REML = FALSE, weights = "w", offset = NULL),
  offset_formula = list(data = "of", csv = "offset.csv", formula = y ~ x + offset(0.5 * z) + (1 | g),
                        REML = TRUE, weights = NULL, offset = NULL),
  offset_arg = list(data = "of", csv = "offset.csv", formula = y ~ x + (1 | g),
                    REML = TRUE, weights = NULL, offset = quote(log(expo))),
  offset_and_weights_slope = list(data = "os", csv = "offset_slope.csv", formula = y ~ x + offset(z) + (1 + x | g),
                                  REML = FALSE, weights = "w", offset = NULL),
  zero_weights = list(data = "sl", csv = "sleepstudy_w.csv", formula = Reaction ~ Days + (Days | Subject),
                      REML = TRUE, weights = "w0", offset = NULL),
  zero_weights_rows_dropped = list(data = "sl", csv = "sleepstudy_w.csv", subset = "w0 > 0",
                                   formula = Reaction ~ Days + (Days | Subject),
                                   REML = TRUE, weights = "w0", offset = NULL),
  nested_w = list(data = "ne", csv = "nested_w.csv", formula = y ~ x + (1 | a/b),
                  REML = TRUE, weights = "w", offset = NULL)
)

# Build and evaluate the call in the global environment (the data are global there), with the
# weights / offset as expressions evaluated in the data, as a user would write them. This keeps
# update() (used by lmerTest) and predict(newdata) able to re-evaluate the call.
fit_call <- function(fun, cs) {
  args <- list(formula = cs$formula, data = as.name(cs$data), REML = cs$REML, control = quote(ctrl))
  if (!is.null(cs$subset)) args$subset <- str2lang(cs$subset)
  if (!is.null(cs$weights)) args$weights <- as.name(cs$weights)
  if (!is.null(cs$offset)) args$offset <- cs$offset
  as.call(c(list(fun), args))
}

capture <- function(expr) {
  msgs <- character(0)
  val <- withCallingHandlers(
    tryCatch(expr, error = function(e) structure(list(msg = conditionMessage(e)), class = "fit_error")),
    warning = function(w) { msgs <<- c(msgs, paste("warning:", conditionMessage(w))); invokeRestart("muffleWarning") },
    message = function(m) { msgs <<- c(msgs, paste("message:", trimws(conditionMessage(m)))); invokeRestart("muffleMessage") })
  list(value = val, msgs = msgs)
}

# I(): vectors stay JSON arrays even when of length 1 (auto_unbox only unboxes plain scalars)
rows_of <- function(M) lapply(seq_len(nrow(M)), function(i) I(unname(as.numeric(M[i, ]))))
cols_of <- function(df) lapply(as.list(df), function(v) I(if (is.factor(v)) as.character(v) else v))
# jsonlite writes non-finite numbers as null; keep -Inf / Inf / NaN visible as strings.
fin <- function(v) if (is.numeric(v) && length(v) == 1 && !is.finite(v)) as.character(v) else v
safe <- function(expr) tryCatch(expr, error = function(e) paste("error:", conditionMessage(e)),
                                warning = function(w) paste("warning:", conditionMessage(w)))

record <- function(name, cs) {
  cat("==", name, "\n")
  d <- get(cs$data)
  if (!is.null(cs$subset)) d <- d[eval(str2lang(cs$subset), d), ]
  w <- if (is.null(cs$weights)) rep(1, nrow(d)) else d[[cs$weights]]
  out <- list(formula = paste(deparse(cs$formula), collapse = " "), REML = cs$REML,
              data_csv = cs$csv, subset = if (is.null(cs$subset)) NA else cs$subset,
              weights = if (is.null(cs$weights)) NA else cs$weights,
              offset = if (is.null(cs$offset)) NA else deparse(cs$offset),
              n = nrow(d), sum_log_weights = fin(sum(log(w))), sum_log_positive_weights = sum(log(w[w > 0])),
              n_positive_weights = sum(w > 0), call = deparse1(fit_call(quote(lme4::lmer), cs)))
  f <- capture(eval(fit_call(quote(lme4::lmer), cs), globalenv()))
  out$lme4_messages <- I(f$msgs)
  if (inherits(f$value, "fit_error")) { out$error <- f$value$msg; return(list(out = out, m = NULL)) }
  m <- f$value
  out$conv_messages <- I(as.character(unlist(m@optinfo$conv$lme4$messages)))
  out$optimizer_message <- m@optinfo$message
  out$optimizer_conv <- m@optinfo$conv$opt
  out$nobs <- nobs(m)
  out$ngroups <- as.list(ngrps(m))
  out$loglik <- fin(as.numeric(logLik(m)))
  out$loglik_df <- attr(logLik(m), "df")
  out$deviance <- fin(if (cs$REML) safe(deviance(m, REML = FALSE)) else safe(deviance(m)))
  out$deviance_note <- if (cs$REML) "deviance(m, REML = FALSE): ML deviance at the REML estimates" else "deviance(m)"
  out$REMLcrit <- fin(safe(REMLcrit(m)))
  out$theta <- I(unname(getME(m, "theta"))); out$theta_names <- I(names(getME(m, "theta")))
  out$sigma <- sigma(m)
  out$fixef <- as.list(fixef(m))
  out$fixef_names <- I(names(fixef(m)))
  out$vcov <- rows_of(as.matrix(vcov(m)))
  out$varcorr <- cols_of(as.data.frame(VarCorr(m)))
  out$fitted <- unname(fitted(m))
  out$residuals <- unname(residuals(m))
  out$residuals_type <- "response (lme4 default for lmer: y - fitted, offset included in fitted)"
  out$residuals_pearson <- unname(residuals(m, type = "pearson"))
  re <- ranef(m)
  out$ranef <- lapply(re, function(df) c(list(level = I(rownames(df))), cols_of(df)))
  t <- capture(eval(fit_call(quote(lmerTest::lmer), cs), globalenv()))
  if (inherits(t$value, "fit_error")) {
    out$satterthwaite_error <- t$value$msg
  } else {
    ct <- coef(summary(t$value))
    out$satterthwaite <- c(list(term = rownames(ct)), cols_of(as.data.frame(ct)))
    out$satterthwaite_fixef_maxdiff <- max(abs(fixef(t$value) - fixef(m)))
    out$lmerTest_messages <- I(t$msgs)
  }
  list(out = out, m = m)
}

res <- list(); mods <- list()
for (nm in names(cases)) { r <- record(nm, cases[[nm]]); res[[nm]] <- r$out; mods[[nm]] <- r$m }

## ---------------------------------------------------------------- case 10: predict with offsets
pred_case <- function(m, offset_expr) {
  b <- ranef(m)$g
  Xn <- model.matrix(~ x, nd)
  fe <- as.numeric(Xn %*% fixef(m))
  re <- ifelse(nd$g %in% rownames(b), b[match(nd$g, rownames(b)), "(Intercept)"], 0)
  off <- eval(offset_expr, nd)
  p_nd <- capture(predict(m, newdata = nd, allow.new.levels = TRUE))
  p_na <- capture(predict(m, newdata = nd, re.form = NA))
  out <- list(
    fitted = unname(fitted(m)),
    predict = unname(predict(m)),
    predict_newdata = unname(p_nd$value), predict_newdata_messages = p_nd$msgs,
    predict_newdata_re_na = unname(p_na$value), predict_newdata_re_na_messages = p_na$msgs,
    newdata_offset = off,
    manual_newdata_with_offset = fe + re + off, manual_newdata_without_offset = fe + re,
    manual_newdata_re_na_with_offset = fe + off, manual_newdata_re_na_without_offset = fe)
  out$newdata_offset_applied <- isTRUE(all.equal(unname(p_nd$value), fe + re + off, tolerance = 1e-10))
  out$newdata_offset_applied_re_na <- isTRUE(all.equal(unname(p_na$value), fe + off, tolerance = 1e-10))
  out$fitted_includes_offset <- isTRUE(all.equal(unname(fitted(m)),
    as.numeric(getME(m, "X") %*% fixef(m) + getME(m, "Z") %*% getME(m, "b")) + eval(offset_expr, of),
    tolerance = 1e-10))
  out
}
res$predict_offset <- list(
  newdata_csv = "predict_newdata.csv",
  newdata_note = "groups g01, g07, g25 are in the data; g26, g99, h01 are new (allow.new.levels = TRUE, random effect 0)",
  offset_formula = c(list(case = "offset_formula", offset = "0.5 * z (in the formula)"),
                     pred_case(mods$offset_formula, quote(0.5 * z))),
  offset_arg = c(list(case = "offset_arg", offset = "log(expo) (offset = argument)"),
                 pred_case(mods$offset_arg, quote(log(expo)))))

res$meta <- list(R = R.version.string, lme4 = as.character(packageVersion("lme4")),
                 lmerTest = as.character(packageVersion("lmerTest")),
                 Matrix = as.character(packageVersion("Matrix")),
                 jsonlite = as.character(packageVersion("jsonlite")),
                 control = "lmerControl(optimizer = 'bobyqa', optCtrl = list(rhoend = 1e-10, maxfun = 1e5))",
                 zero_weight_rows = zero_rows)
writeLines(toJSON(res, digits = NA, auto_unbox = TRUE, na = "null", pretty = TRUE), "weights_reference.json")
cat("wrote weights_reference.json\n")
