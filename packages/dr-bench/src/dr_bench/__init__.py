"""dr-bench: run agents on research and deep-search suites, score them with dr-judge, report."""
