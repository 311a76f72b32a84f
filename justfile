# What a developer can do here; each recipe is one line over a script. `just --list` shows them.
# (`just` comes with the dev tools: .venv/bin/just after `bash scripts/setup.sh`.)

# make .venv with torch, the packages (editable) and the dev tools
setup:
    bash scripts/setup.sh

# lint, then every test in parallel; extra arguments go to pytest
test *ARGS:
    bash scripts/test.sh {{ARGS}}

# lint only
lint:
    .venv/bin/ruff check . && .venv/bin/ruff format --check .

# format the code
fmt:
    .venv/bin/ruff format . && .venv/bin/ruff check --fix .
