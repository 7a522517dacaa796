# The "Model:" line of lmerTest's ranova() for formulas whose fixed part R rewrites (expanded
# interactions, removed terms, offsets, terms without intercept), for tests/test_compare.py.
# Run from the repository root:  Rscript tests/reference/printed/make_ranova_heading.R
# Data: sleepstudy (jaxmlm/data) with z = cos(Days) and off = Days / 10. R 4.2.2, lmerTest 3.1-3.
suppressMessages({library(lmerTest); library(jsonlite)})
d <- read.csv("jaxmlm/data/sleepstudy.csv")
d$Subject <- factor(d$Subject)
d$z <- cos(d$Days)
d$off <- d$Days / 10
formulas <- c("Reaction ~ Days*z + (1|Subject)", "Reaction ~ (1|Subject) + Days*z",
              "Reaction ~ Days + z - z + (1|Subject)", "Reaction ~ Days + offset(off) + (1|Subject)",
              "Reaction ~ 0 + Days + (Days|Subject)", "Reaction ~ -1 + Days + (1|Subject)",
              "Reaction ~ 1 + (1|Subject)", "Reaction ~ log(Days+1) + (1|Subject)",
              "Reaction ~ Days + I(Days^2) + (1 | Subject)", "Reaction~Days+(Days||Subject)")
out <- lapply(formulas, function(f) {
  m <- suppressMessages(suppressWarnings(lmer(as.formula(f), d)))
  list(formula = f, model = attr(ranova(m), "heading")[3])
})
writeLines(toJSON(out, auto_unbox = TRUE, pretty = TRUE), "tests/reference/printed/ranova_heading.json")
