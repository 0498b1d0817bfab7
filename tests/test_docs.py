"""The docs cannot drift: fields, paths, links and the config tables they name exist (no jax compile)."""

import glob
import os
import re
import subprocess

import config_fields
import pytest

from alexnet_jax.runs.defaults import get_config

REPO = config_fields.REPO
DOCS = sorted(
    os.path.relpath(p, REPO)
    for p in [os.path.join(REPO, "README.md"), os.path.join(REPO, "BENCHMARKS.md"), *glob.glob(f"{REPO}/docs/*.md")]
)
# Paths the docs name on purpose although they do not exist (an error's example).
NOT_PATHS = {"configs/digit.py"}
# A repository path: one of these folders at the start of a word (not inside ~/.cache/alexnet_jax/...).
PATH = re.compile(r"(?<![\w./~-])((?:alexnet_jax|configs|launch|bench|tests|docs|results)/[\w./-]*\w)")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _flat(config, prefix: str = "") -> set[str]:
    names = set()
    for key, value in config.items():
        names |= _flat(value, f"{prefix}{key}.") if hasattr(value, "items") else {prefix + key}
    return names


def _text(doc: str) -> str:
    with open(os.path.join(REPO, doc)) as f:
        return f.read()


@pytest.mark.parametrize("doc", DOCS)
def test_every_config_override_is_a_field(doc):
    fields = _flat(get_config())
    named = set(re.findall(r"--config\.([A-Za-z0-9_.]*[A-Za-z0-9_])", _text(doc)))
    assert named - fields - {"FIELD", "field"} == set()


@pytest.mark.parametrize("doc", DOCS)
def test_every_repository_path_exists(doc):
    missing = {p for p in PATH.findall(_text(doc)) if not os.path.exists(os.path.join(REPO, p))}
    assert missing - NOT_PATHS == set()


@pytest.mark.parametrize("doc", DOCS)
def test_every_relative_link_exists(doc):
    missing = []
    for target in LINK.findall(_text(doc)):
        path = target.split("#", 1)[0]
        if path and "://" not in path and not os.path.exists(os.path.join(REPO, os.path.dirname(doc), path)):
            missing.append(target)
    assert missing == []


def test_configs_md_lists_every_field_with_its_comment():
    made = config_fields.tables()
    assert config_fields.current(_text("docs/configs.md")) == made, "run: .venv/bin/python tests/config_fields.py"
    listed = set(re.findall(r"^\| `([\w.]+)` \|", made, re.M))
    assert listed == _flat(get_config())


def test_paper_notes_are_cited_inside_the_repository():
    """docs/paper.md, not a PAPER.md or ../shared outside the repository."""
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    offenders = []
    for name in files:
        path = os.path.join(REPO, name)
        if not os.path.isfile(path) or name.endswith(("test_docs.py", ".png", ".npz")):
            continue
        with open(path, errors="ignore") as f:
            text = f.read()
        if "../shared" in text or re.search(r"(?<![\w/])PAPER\.md", text):
            offenders.append(name)
    assert offenders == []
