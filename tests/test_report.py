"""The report card: stages record figures, render gathers them into markdown."""

import json

from utils import environment, report


def test_record_and_render(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "ci")
    report.record("01_data_collection", {"conversations": 7168, "words per turn": 11.25, "ready": True}, tmp_path)
    report.record("00_setup", {"device": "cpu"}, tmp_path)
    report.record_timing("00_setup", 3.21, tmp_path)
    report.record_timing("01_data_collection", 10.0, tmp_path)
    card = report.render(tmp_path, tmp_path / "report.md").read_text()
    assert card.startswith("# Report card (profile `ci`)")
    assert card.index("## 00_setup") < card.index("## 01_data_collection")
    assert "| conversations | 7,168 |" in card and "| words per turn | 11.25 |" in card
    assert "| **total** | **13 s** | **13.2** |" in card and "| ready | yes |" in card
    assert not list(tmp_path.glob("*.tmp")), "atomic writes leave no temp files"


def test_each_profile_keeps_its_own_results(monkeypatch):
    monkeypatch.delenv(report.BUILD_DIR_ENV, raising=False)
    monkeypatch.setenv("COURSE_PROFILE", "ci")
    assert report.default_report_dir() == report.BUILD / "ci" / "report"
    assert report.default_report_dir("cpu") == report.BUILD / "cpu" / "report"
    monkeypatch.setenv(report.BUILD_DIR_ENV, "/tmp/staging")  # what make course sets for its kernels
    assert str(report.default_report_dir()) == "/tmp/staging/report"
    assert report.default_report_dir("cpu") == report.BUILD / "cpu" / "report"


def test_format_seconds():
    assert report.format_seconds(48.4) == "48 s"
    assert report.format_seconds(151) == "2 min 31 s"
    assert report.format_seconds(3900) == "1 h 05 min"


def test_record_replaces_a_stage(tmp_path):
    report.record("02_preprocessing", {"a": 1}, tmp_path)
    report.record("02_preprocessing", {"a": 2}, tmp_path)
    saved = json.loads((tmp_path / "02_preprocessing.json").read_text())
    assert saved["figures"] == {"a": 2}


def test_environment_check_reports_missing_package_with_fix():
    check = environment.check_package("no_such_module_xyz", "no-such-dist", "1.0", "testing")
    assert not check.ok and "make install" in check.fix
    old = environment.check_package("numpy", "numpy", "999.0", "testing")
    assert not old.ok and "needs >= 999.0" in old.fix
    assert environment.summarize([check]).startswith("NOT READY")


def test_environment_is_ready_here():
    checks = environment.check_environment()
    assert environment.summarize(checks).startswith("READY"), [c for c in checks if not c.ok]
