"""`python -m perf`: run the perf suite and write its report."""

from perf.suite import main

main()
