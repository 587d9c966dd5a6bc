"""tools.readme_times, what `make readme-times` runs: README.md's time table from the measured `make course` runs."""

import json

import pytest

from tools import readme_times


def measured_run(root, profile, seconds):
    report = root / "build" / profile / "report"
    report.mkdir(parents=True)
    (report / "timings.json").write_text(json.dumps(seconds))
    (root / "build" / profile / "run.json").write_text(json.dumps(
        {"finished": "2026-12-02T08:00:00+00:00", "machine": "Linux x86_64, 2 CPU cores"}))


def test_readme_time_table_comes_from_the_measured_runs(tmp_path):
    for name in ("00_setup", "01_data_collection"):
        (tmp_path / "notebooks").mkdir(exist_ok=True)
        (tmp_path / "notebooks" / f"{name}.ipynb").write_text("{}")
    readme = tmp_path / "README.md"
    readme.write_text(f"# Course\n\n{readme_times.BEGIN}\nhand-typed: 10 s\n{readme_times.END}\n\n## Next\n")
    measured_run(tmp_path, "ci", {"00_setup": 6.2, "01_data_collection": 9.9, "99_gone": 5.0})
    readme_times.update_readme(readme, root=tmp_path)
    text = readme.read_text()
    assert "hand-typed" not in text and text.endswith("\n\n## Next\n")
    assert "| 00_setup | 6 s |" in text and "| **all** | **16 s** |" in text and "99_gone" not in text
    assert "`ci`: measured by `make course` on Linux x86_64, 2 CPU cores, run finished 2026-12-02." in text

    # Later, on another machine, only the cpu profile was measured: the ci column stays.
    other = tmp_path / "other"
    (other / "notebooks").mkdir(parents=True)
    for name in ("00_setup", "01_data_collection"):
        (other / "notebooks" / f"{name}.ipynb").write_text("{}")
    measured_run(other, "cpu", {"00_setup": 6.0, "01_data_collection": 151.0})
    readme_times.update_readme(readme, root=other)
    text = readme.read_text()
    assert "| notebook | `ci` | `cpu` |" in text and "| 01_data_collection | 10 s | 2 min 31 s |" in text

    # A profile measured on some notebooks only has no total: it would read as the whole course's time.
    (other / "notebooks" / "02_preprocessing.ipynb").write_text("{}")
    readme_times.update_readme(readme, root=other)
    assert "| **all** | not all measured | not all measured |" in readme.read_text()


def test_readme_without_the_block_says_where_to_put_it(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# no block\n")
    with pytest.raises(ValueError, match="course-times:begin"):
        readme_times.update_readme(readme, root=tmp_path)


def test_readme_says_when_other_work_shared_the_cores(tmp_path):
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "00_setup.ipynb").write_text("{}")
    readme = tmp_path / "README.md"
    readme.write_text(f"{readme_times.BEGIN}\n{readme_times.END}\n")
    measured_run(tmp_path, "ci", {"00_setup": 36.9})
    run = tmp_path / "build" / "ci" / "run.json"
    run.write_text(json.dumps({**json.loads(run.read_text()), "load_average": [6.5, 13.3]}))
    readme_times.update_readme(readme, root=tmp_path)
    assert "while other work shared the cores (load average up to 13.3): expect less on an idle machine" in readme.read_text()
