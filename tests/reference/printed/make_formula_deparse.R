# How R's deparse() prints formulas (lme4's summary "Formula:" line and anova's "Models:" lines),
# for tests/test_present.py. Run from the repository root:
#   Rscript tests/reference/printed/make_formula_deparse.R
# R 4.2.2. Inputs written as users type them (no spaces, Python's **), outputs as R prints them.
suppressMessages(library(jsonlite))
fs <- c("Reaction~Days+(Days|Subject)", "y ~ x*z + (1|g/h)", "y~0+x+(x||g)", "log(y)~I(x^2)+poly(x,2)+(1|g)",
        "y ~ -1 + x + (-1+x|g)", "y ~ x:z + x %in% g + (1 | g:h)", "y~offset(log(n))+x+(1|g)", "y ~ x - 1 + (1|g)",
        "y ~ I(x - 1e-3) + (1|g)", "cbind(a, b) ~ x + (1 | g)", "y ~ x + I(x > 2) + (1 | g)", "y~x+(1+x|g)+(1|h)",
        "mathgain ~ mathkind + sex + minority + ses + (1 | schoolid/classid)", "y ~ x^2 + (1|g)",
        "y ~ `my var` + (1|g)", "y ~ cs(0 + f | g, hom = TRUE)", "y ~ I(2.50*x) + (1|g)", "y ~ x + (1|g) + (0+x|g)")
out <- lapply(fs, function(f) list(input = f, deparsed = paste(deparse(as.formula(f), width.cutoff = 500L), collapse = " ")))
writeLines(toJSON(out, auto_unbox = TRUE, pretty = TRUE), "tests/reference/printed/formula_deparse.json")
