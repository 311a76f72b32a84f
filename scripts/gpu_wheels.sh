#!/usr/bin/env bash
# The wheels scripts/gpu_check.sh needs on a bare GPU machine that has Python 3.12, torch, triton,
# transformers, tokenizers, accelerate, typer, rich, httpx, numpy and pytest, and nothing can be
# downloaded: downloaded here (any machine with pip and the package index) into .whl/ (git-ignored), to
# travel with the working tree. Fails loudly when a wheel is missing or the set is over 64 MiB.
#   bash scripts/gpu_wheels.sh                     # for CPython 3.12, manylinux x86_64
#   GPU_PYTHON=3.11 bash scripts/gpu_wheels.sh     # another interpreter version there
#   bash scripts/gpu_wheels.sh --dry-run           # resolve and size the set, keep nothing
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
dest=.whl
dry=0
[ "${1:-}" = "--dry-run" ] && { dry=1; dest=$(mktemp -d); }
limit_mib=64

# What the check imports that that machine lacks, at the versions this project is tested with. Each
# line: a requirement. Their own requirements are either in this list or already on that machine.
wheels=(
    "pydantic==2.14.4" "pydantic-core==2.50.5" "annotated-types==0.8.0" "typing-inspection==0.4.5"
    "orjson==3.13.0" "zstandard==0.25.0" "tantivy==0.27.0" "liger-kernel==0.8.5"
)
platforms=()
for p in manylinux_2_39 manylinux_2_35 manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 \
    manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
    platforms+=(--platform "${p}_x86_64")
done

mkdir -p "$dest"
rm -f "$dest"/*.whl
for wheel in "${wheels[@]}"; do
    if ! "$python" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        --python-version "${GPU_PYTHON:-3.12}" --implementation cp "${platforms[@]}" -d "$dest" "$wheel" \
        2> >(grep -v "is ignored: it is neither" >&2); then
        echo "gpu_wheels: no wheel of $wheel for CPython ${GPU_PYTHON:-3.12} on manylinux x86_64" >&2
        exit 1
    fi
done
count=$(find "$dest" -maxdepth 1 -type f -name '*.whl' | wc -l)
if [ "$count" -ne "${#wheels[@]}" ]; then
    echo "gpu_wheels: expected ${#wheels[@]} wheels, found $count in $dest" >&2
    exit 1
fi
bytes=$(du -cb "$dest"/*.whl | tail -1 | cut -f1)
mib=$(( (bytes + 1048575) / 1048576 ))
ls -1 "$dest" >&2
echo "gpu_wheels: $count wheels, $mib MiB (limit $limit_mib MiB)" >&2
[ "$dry" = 1 ] && rm -rf "$dest"
if [ "$mib" -gt "$limit_mib" ]; then
    echo "gpu_wheels: over the $limit_mib MiB that travel with the working tree" >&2
    exit 1
fi
