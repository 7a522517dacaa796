# How R prints coefficient tables whose entries round to zero from below, for tests/test_present.py
# (R's encodeReal prints a negative zero as 0: "0.000", never "-0.000"). Run from the repository root:
#   Rscript tests/reference/printed/make_coefmat_printed.R
# The tables are lmerTest's columns (Estimate, Std. Error, df, t value, Pr(>|t|)); printCoefmat as
# lme4's summary calls it (digits = 4), and format() of a vector with a negative zero. R 4.2.2.
suppressMessages(library(jsonlite))
tables <- list(
  list(Estimate = c(-2386.11, -105738.62, 88.92, -54.05), SE = c(9258.01, 8862.85, 24611.57, 146455.37),
       df = c(540.39, 8969.59, 610.06, 1286.78)),
  list(Estimate = c(-0.04286), SE = c(165.13692), df = c(212.90637)),
  list(Estimate = c(251.405, -0.00031), SE = c(6.825, 1.546), df = c(17, 17)))
out <- list(coefmat = lapply(tables, function(tb) {
  t <- tb$Estimate / tb$SE
  m <- cbind(Estimate = tb$Estimate, "Std. Error" = tb$SE, df = tb$df, "t value" = t,
             "Pr(>|t|)" = 2 * pt(abs(t), tb$df, lower.tail = FALSE))
  rownames(m) <- paste0("x", seq_along(t))
  list(Estimate = tb$Estimate, SE = tb$SE, df = tb$df,
       printed = sub(" +$", "", capture.output(printCoefmat(m, digits = 4))))
}), format = list(x = c(-0.0, -0.4, 0.0, -0.1), digits = 4, printed = format(c(-0.0, -0.4, 0.0, -0.1), digits = 4)))
writeLines(toJSON(out, digits = NA, auto_unbox = FALSE, pretty = TRUE), "tests/reference/printed/coefmat_printed.json")
