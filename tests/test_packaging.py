"""What `pip install .` installs, read from pyproject.toml and the sources
(nothing is built or imported): only the alexnet_jax package with every
sub-package, at the version in alexnet_jax.__version__."""

import ast
import pathlib
import tomllib

import setuptools

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_only_the_package_and_all_its_sub_packages_are_installed():
    find = _pyproject()["tool"]["setuptools"]["packages"]["find"]
    found = set(setuptools.find_packages(where=str(ROOT), **find))
    folders = {
        ".".join(folder.relative_to(ROOT).parts)
        for folder in [ROOT / "alexnet_jax", *(ROOT / "alexnet_jax").rglob("*")]
        if folder.is_dir() and any(folder.glob("*.py"))
    }
    missing_init = sorted(f for f in folders if not (ROOT / f.replace(".", "/") / "__init__.py").exists())
    assert not missing_init, f"folders with modules but no __init__.py (not installed): {', '.join(missing_init)}"
    assert found == folders, f"installed packages {sorted(found)}, expected alexnet_jax and its sub-packages"


def test_the_version_is_the_package_s():
    project = _pyproject()
    assert "version" not in project["project"] and project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "alexnet_jax.__version__"}
    tree = ast.parse((ROOT / "alexnet_jax" / "__init__.py").read_text())
    versions = [
        node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and [t.id for t in node.targets if isinstance(t, ast.Name)] == ["__version__"]
    ]
    assert len(versions) == 1 and isinstance(versions[0], str), 'alexnet_jax/__init__.py: one __version__ = "X.Y.Z"'
