"""Shared fixtures: the DeepResearch Bench data shipped in data/, and a local index over its reports."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# Triton kernels run under Triton's interpreter on machines without a GPU. It is chosen when the kernels
# are compiled (at import), so it is set before any test imports them; ops use it only when a test asks
# for backend="triton" on CPU tensors.
if shutil.which("nvidia-smi") is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Under pytest-xdist the workers share the cores: each worker, and every process it starts (dr serve's
# engine, dr train), gets its share of threads. torch's OpenMP threads spin while they wait for each
# other, so two workers each using every core slow one another down several times over: a tiny model
# served beside one busy process took 65 s for a bench with 2 threads on 2 cores, 28 s with 1.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1:
    _threads = str(max(1, (os.cpu_count() or 1) // _workers))
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_name, _threads)

ROOT = Path(__file__).resolve().parent.parent
DRB = ROOT / "data" / "deepresearch_bench"


@pytest.fixture(scope="session")
def drb_reports() -> Path:
    return DRB / "reports_claude-3-7-sonnet.jsonl"


@pytest.fixture(scope="session")
def drb_index(tmp_path_factory, drb_reports) -> Path:
    """A BM25 index over the 80 real reports (about a second to build)."""
    from dr_agent.documents import load_documents
    from dr_agent.index import build_index

    directory = tmp_path_factory.mktemp("drb") / "index"
    build_index(load_documents([str(drb_reports)]), directory)
    return directory
