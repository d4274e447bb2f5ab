"""`beyondmle new-objective`: what it writes, and the entry point it declares in this
repository's pyproject.toml so the registry finds the new objective."""

import tomllib
from pathlib import Path

import pytest

from beyondmle.skeleton import _declare_entry_point, _package_of, write_skeleton

PYPROJECT = """[project]
name = "x"

[project.entry-points."beyondmle.objectives"]
mle = "beyondmle.objectives.mle:MLE"
denoising = "beyondmle.objectives.denoising:Denoising"

[project.entry-points."beyondmle.metrics"]
fed = "beyondmle.metrics.builtin:fed_metric"
"""


def test_the_entry_point_lands_in_the_objectives_group(tmp_path: Path) -> None:
    path = tmp_path / "pyproject.toml"
    path.write_text(PYPROJECT)
    assert _declare_entry_point(path, "my_obj", "beyondmle.objectives.my_obj:MyObj")
    groups = tomllib.loads(path.read_text())["project"]["entry-points"]
    assert groups["beyondmle.objectives"]["my_obj"] == "beyondmle.objectives.my_obj:MyObj"
    assert "my_obj" not in groups["beyondmle.metrics"]
    assert list(groups["beyondmle.objectives"]) == ["mle", "denoising", "my_obj"]


def test_no_objectives_group_means_nothing_is_written(tmp_path: Path) -> None:
    path = tmp_path / "pyproject.toml"
    path.write_text('[project]\nname = "x"\n')
    assert not _declare_entry_point(path, "my_obj", "a:B")
    assert path.read_text() == '[project]\nname = "x"\n'


def test_the_repository_objectives_folder_imports_as_beyondmle_objectives() -> None:
    import beyondmle.objectives

    folder = Path(beyondmle.objectives.__path__[0])
    assert _package_of(folder) == "beyondmle.objectives"


def test_skeleton_in_a_package_imports_from_the_api_and_refuses_to_overwrite(
    tmp_path: Path,
) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    module, test = write_skeleton("my_obj", package, tmp_path / "tests")
    assert "from beyondmle.api import" in module.read_text()
    assert "from pkg.my_obj import MyObj" in test.read_text()
    with pytest.raises(FileExistsError):
        write_skeleton("my_obj", package, tmp_path / "tests")
