# lmerTest / pbkrtest reference for jaxmlm's Kenward-Roger standard errors and contrast F-tests.
#
# For each model:
#   se_kenward_roger  Std. Error of summary(m, ddf = "Kenward-Roger") (sqrt(diag(pbkrtest::vcovAdj)))
#                     (REML fits only)
#   contests          lmerTest::contest(m, L, ddf = ., joint = TRUE) for a few L matrices:
#                     L (rows, columns named by the fixed effects), rhs, ddf, and the F table
#                     (Sum Sq, Mean Sq, NumDF, DenDF, F value, Pr(>F))
#
# Usage (from tests/reference/inference):
#   Rscript make_lmertest_reference.R ../data lmertest_reference.json
suppressPackageStartupMessages({library(lme4); library(lmerTest); library(jsonlite); library(pbkrtest)})
args <- commandArgs(TRUE)
datadir <- if (length(args) >= 1) args[1] else "../data"
out <- if (length(args) >= 2) args[2] else "lmertest_reference.json"

fna <- read.csv(file.path(datadir, "synthetic", "factors_na.csv"), stringsAsFactors = TRUE)
sl3 <- read.csv(file.path(datadir, "synthetic", "slopes3.csv"), stringsAsFactors = TRUE)

cases <- list(
  list(id = "sleepstudy_rs", data = sleepstudy, formula = Reaction ~ Days + (Days | Subject), REML = TRUE,
       L = list(diag(2), rbind(c(1, 7)), rbind(c(0, 1))), rhs = list(0, 0, 10)),
  list(id = "sleepstudy_rs_ml", data = sleepstudy, formula = Reaction ~ Days + (Days | Subject), REML = FALSE,
       L = list(diag(2), rbind(c(1, 7))), rhs = list(0, 0)),
  list(id = "factors_na", data = fna, formula = y ~ f3 * f2 + x + (1 | g), REML = TRUE,
       L = list(rbind(c(0, 1, 0, 0, 0, 0, 0), c(0, 0, 1, 0, 0, 0, 0)),
                rbind(c(0, 0, 0, 0, 0, 1, 0), c(0, 0, 0, 0, 0, 0, 1)),
                cbind(0, diag(6)),
                rbind(c(0, 1, -1, 0, 0, 0, 0))),
       rhs = list(0, 0, 0, 0)),
  list(id = "slopes3_corr", data = sl3, formula = y ~ x + z + (1 + x + z | g), REML = TRUE,
       L = list(rbind(c(0, 1, 0), c(0, 0, 1)), rbind(c(0, 1, 1))), rhs = list(0, 0)),
  list(id = "penicillin_crossed", data = Penicillin, formula = diameter ~ 1 + (1 | plate) + (1 | sample),
       REML = TRUE, L = list(matrix(1, 1, 1)), rhs = list(25))
)

one <- function(cs) {
  m <- lmer(cs$formula, data = cs$data, REML = cs$REML)
  nm <- names(fixef(m))
  se_kr <- if (cs$REML) as.list(setNames(summary(m, ddf = "Kenward-Roger")$coefficients[, "Std. Error"], nm)) else NULL
  contests <- list()
  for (i in seq_along(cs$L)) {
    L <- cs$L[[i]]; colnames(L) <- nm
    for (ddf in if (cs$REML) c("Satterthwaite", "Kenward-Roger") else "Satterthwaite") {
      ft <- contest(m, L, rhs = cs$rhs[[i]], ddf = ddf, joint = TRUE)
      contests[[length(contests) + 1]] <- list(L = unname(split(L, row(L))), rhs = cs$rhs[[i]], ddf = ddf,
                                               table = as.list(ft[1, ]))
    }
  }
  list(id = cs$id, formula = paste(deparse(cs$formula), collapse = ""), REML = cs$REML,
       fixef_names = nm, se_kenward_roger = se_kr, contests = contests)
}

res <- lapply(cases, one)
meta <- list(R = R.version.string, lme4 = as.character(packageVersion("lme4")),
             lmerTest = as.character(packageVersion("lmerTest")),
             pbkrtest = as.character(packageVersion("pbkrtest")))
writeLines(toJSON(list(meta = meta, cases = res), auto_unbox = TRUE, digits = NA, pretty = TRUE, na = "null"), out)
cat("wrote", out, "\n")
