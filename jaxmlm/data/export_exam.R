# Writes jaxmlm/data/Exam.csv and prints Exam's factor levels (for levels.json), from mlmRev's Exam.
# Run from the repository root: Rscript jaxmlm/data/export_exam.R
# R 4.2.2, Debian package r-cran-mlmrev (mlmRev 1.0-8). Same rules as the other example CSVs:
# write.csv(d, file, row.names = FALSE) -- factors as quoted labels, numbers with at most
# 15 significant digits.
data(Exam, package = "mlmRev")
stopifnot(nrow(Exam) == 4059, ncol(Exam) == 10, !anyNA(Exam))
write.csv(Exam, "jaxmlm/data/Exam.csv", row.names = FALSE)
lev <- lapply(Filter(is.factor, Exam), levels)
cat(jsonlite::toJSON(lev), "\n")
cat("mlmRev", as.character(packageVersion("mlmRev")), "\n")
