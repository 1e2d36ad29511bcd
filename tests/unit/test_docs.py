"""The repository's own documentation stays true: every path it names exists, and the README points to
documents that are in the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = ["README.md", "docs/architecture.md", "docs/operations.md", "docs/p2p.md"]
# `agent/daemon.py`, `controller/`, `docs/controller.example.toml`: a repository path in backquotes
PATH = re.compile(r"`((?:[a-z0-9_.-]+/)+(?:[a-z0-9_.-]+\.(?:py|md|toml|sh|service|yaml))?)`")


@pytest.mark.parametrize("doc", DOCS)
def test_every_path_a_document_names_exists(doc: str):
    text = (REPO / doc).read_text()
    named = {m.group(1) for m in PATH.finditer(text)}
    missing = sorted(p for p in named if not p.startswith(("/", ".venv/")) and not (REPO / p).exists())
    assert not missing, f"{doc} names paths that do not exist: {missing}"


def test_the_readme_points_only_to_documents_in_the_repository():
    text = (REPO / "README.md").read_text()
    assert "shared design folder" not in text
    for link in re.findall(r"\]\(([^)#]+)\)", text):
        if not link.startswith(("http://", "https://")):
            assert (REPO / link).exists(), link
