# How lme4's anova(m0, m1) and lmerTest's ranova(m) print, for tests/test_compare.py's layout tests.
# Usage (from the repository root):
#   Rscript tests/reference/compare/make_printed_reference.R
suppressPackageStartupMessages({library(lme4); library(lmerTest); library(jsonlite)})
out <- "tests/reference/compare/printed_reference.json"
fm0 <- lmer(Reaction ~ Days + (1 | Subject), sleepstudy)
fm1 <- lmer(Reaction ~ Days + (Days | Subject), sleepstudy)
fm2 <- lmer(Reaction ~ Days + (Days || Subject), sleepstudy)
cases <- list(
  list(id = "anova_sleepstudy", call = "anova(fm0, fm1)", printed = capture.output(suppressMessages(print(anova(fm0, fm1))))),
  list(id = "anova_sleepstudy_three", call = "anova(fm0, fm2, fm1)",
       printed = capture.output(suppressMessages(print(anova(fm0, fm2, fm1))))),
  list(id = "ranova_sleepstudy", call = "ranova(fm1)", printed = capture.output(print(ranova(fm1)))),
  list(id = "ranova_sleepstudy_uncorr", call = "ranova(fm2)", printed = capture.output(print(ranova(fm2))))
)
meta <- list(R = R.version.string, lme4 = as.character(packageVersion("lme4")),
             lmerTest = as.character(packageVersion("lmerTest")))
writeLines(toJSON(list(meta = meta, cases = cases), auto_unbox = TRUE, pretty = TRUE), out)
cat("wrote", out, "\n")
