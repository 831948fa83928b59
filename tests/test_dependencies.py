"""mnemo.dependencies.library_files on a tiny fake `mnemo` package: which files a script runs."""

from __future__ import annotations

from pathlib import Path

from mnemo.dependencies import library_files
from tests.workflow import imported_files

PACKAGE = {
    "__init__.py": "",
    "top.py": "import numpy\nfrom mnemo.helper import VALUE\n",
    "helper.py": "VALUE = 1\n\ndef later():\n    from mnemo.pkg import sub  # function level, a submodule by name\n",
    "pkg/__init__.py": "",
    "pkg/sub.py": "import mnemo.top  # a cycle back to top\nfrom mnemo.pkg.deep.leaf import thing\n",
    "pkg/deep/__init__.py": "",
    "pkg/deep/leaf.py": "thing = 1\n",
    "pkg/unused.py": "",
    "rel/__init__.py": "from . import near\n",
    "rel/near.py": "from ..pkg.deep import leaf\nfrom .far import *\n",
    "rel/far.py": "",
    "other.py": "",
}


def _package(root: Path) -> Path:
    src = root / "src"
    for name, text in PACKAGE.items():
        path = src / "mnemo" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return src


def _script(root: Path, text: str) -> Path:
    path = root / "scripts" / "job.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _names(files, src: Path) -> set[str]:
    return {str(Path(f).relative_to(src / "mnemo")) for f in files}


def test_module_and_function_level_imports_with_their_packages_and_a_cycle(tmp_path):
    src = _package(tmp_path)
    script = _script(tmp_path, "import sys\nfrom mnemo.top import helper_value\n")
    files = library_files(script, src / "mnemo")
    assert _names(files, src) == {"__init__.py", "top.py", "helper.py", "pkg/__init__.py", "pkg/sub.py",
                                  "pkg/deep/__init__.py", "pkg/deep/leaf.py"}
    assert list(files) == sorted(files)
    assert set(files) == imported_files(script, src)


def test_from_package_import_submodule_and_plain_import(tmp_path):
    src = _package(tmp_path)
    script = _script(tmp_path, "def main():\n    from mnemo.pkg import deep\n    import mnemo.other\n")
    assert _names(library_files(script, src / "mnemo"), src) == {
        "__init__.py", "pkg/__init__.py", "pkg/deep/__init__.py", "other.py"}


def test_relative_imports_inside_the_package(tmp_path):
    src = _package(tmp_path)
    script = _script(tmp_path, "import mnemo.rel\n")
    files = library_files(script, src / "mnemo")
    assert _names(files, src) == {"__init__.py", "rel/__init__.py", "rel/near.py", "rel/far.py", "pkg/__init__.py",
                                  "pkg/deep/__init__.py", "pkg/deep/leaf.py"}
    assert set(files) == imported_files(script, src)


def test_a_script_without_mnemo_imports_runs_no_library_file(tmp_path):
    src = _package(tmp_path)
    script = _script(tmp_path, "import numpy\nfrom pathlib import Path\nfrom mnemo_other import x\n")
    assert library_files(script, src / "mnemo") == ()


def test_a_name_that_is_no_module_or_a_missing_module_adds_nothing(tmp_path):
    src = _package(tmp_path)
    script = _script(tmp_path, "from mnemo.other import name\nfrom mnemo.missing import y\n")
    assert _names(library_files(script, src / "mnemo"), src) == {"__init__.py", "other.py"}
