"""`make chat` and `make readme-times`: what they run, and what they say when there is nothing yet."""

import json

import pytest

from utils import chat_command, readme_times


def test_chat_says_what_to_run_first_without_a_chat_model(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "cpu")
    with pytest.raises(FileNotFoundError, match="make course") as missing:
        chat_command.chat_arguments([], root=tmp_path)
    assert "checkpoints/cpu/chat/config.json does not exist" in str(missing.value)
    assert "COURSE_PROFILE=ci make course" in str(missing.value)


def test_chat_uses_the_profile_checkpoint_and_passes_extra_arguments(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "ci")
    folder = tmp_path / "checkpoints" / "ci" / "chat"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    assert chat_command.chat_arguments(["--temperature", "0.5"], root=tmp_path) == [
        "--checkpoint", "checkpoints/ci/chat", "--temperature", "0.5"]
    # An argument that chooses the model goes through as it is, with no checkpoint of ours.
    assert chat_command.chat_arguments(["--model", "smollm2"], root=tmp_path) == ["--model", "smollm2"]
    assert chat_command.chat_arguments(["--checkpoint=elsewhere"], root=tmp_path) == ["--checkpoint=elsewhere"]


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
