"""The two packages: ``utils`` (the learner's library) never imports ``tools`` (the course's machinery).

The stage cache of ``make course`` leaves ``tools/`` out of its fingerprint because of this:
a notebook that reached ``tools`` would not rerun when the code it used changed.
"""

import ast
import json
import re

import pytest

from utils.config import REPO_ROOT

MACHINERY = {"course": "tools.course", "chat": "tools.chat", "readme-times": "tools.readme_times",
             "gpu-smoke": "tools.gpu_smoke", "colab-links": "tools.colab_links"}


def imported_modules(path):
    """Every module ``path`` imports, at any depth (inside functions too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "utils").rglob("*.py")), ids=lambda p: p.name)
def test_utils_never_imports_tools(path):
    reached = [name for name in imported_modules(path) if name == "tools" or name.startswith("tools.")]
    assert reached == [], f"{path.relative_to(REPO_ROOT)} imports {reached}: move what it needs into utils/"


def test_notebooks_and_solutions_never_import_tools():
    pattern = re.compile(r"^\s*(from\s+tools(\.|\s)|import\s+tools\b)", re.MULTILINE)
    found = []
    for path in sorted([*(REPO_ROOT / "notebooks").glob("*.ipynb"), *(REPO_ROOT / "solutions").glob("*.ipynb")]):
        for index, cell in enumerate(json.loads(path.read_text(encoding="utf-8"))["cells"]):
            if cell["cell_type"] == "code" and pattern.search("".join(cell["source"])):
                found.append(f"{path.name}: cell {index + 1}")
    assert found == [], f"notebooks import tools: {found}"


def test_the_machinery_s_make_targets_run_tools_modules_that_exist():
    makefile = (REPO_ROOT / "Makefile").read_text(encoding="utf-8")
    for target, module in MACHINERY.items():
        recipe = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
        assert recipe and f"-m {module}" in recipe.group(1), f"make {target} should run python -m {module}"
    for module in re.findall(r"-m ((?:utils|tools)\.\w+)", makefile):
        assert (REPO_ROOT / (module.replace(".", "/") + ".py")).exists(), f"the Makefile runs {module}: no such file"
