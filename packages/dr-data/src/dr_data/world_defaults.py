"""The defaults of `dr data world`, in a module light enough for the CLI to import at start-up;
`dr bench run --suite world:SEED` reproduces the world these give."""

DEFAULT_ENTITIES = 2000
DEFAULT_TASKS = 1000
DEFAULT_TEST_SHARE = 0.2
DEFAULT_MAX_HOPS = 4
DEFAULT_REPORT_TASKS = 500
