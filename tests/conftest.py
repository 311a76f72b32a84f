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
