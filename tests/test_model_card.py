"""utils.model_card: one section per model with its own figures; every recorded figure shown; "not run" for a
missing stage."""

from utils import report
from utils.model_card import NOT_RUN, render_model_card, write_model_card
from utils.report import format_value, label


def fake_report(report_dir):
    report.record("03_architecture", {"model": "2 layers, 2 heads, width 64, context 32, vocab 1024",
                                      "model_parameters": 167680}, report_dir=report_dir)
    report.record("04_training", {"parameters": 1334016, "train loss": 4.839, "validation loss": 4.874},
                  report_dir=report_dir)
    report.record("06_finetuning", {"assistant_perplexity_before": 360.53, "assistant_perplexity_after": 114.5,
                                    "lora_assistant_perplexity": 156.66}, report_dir=report_dir)
    report.record("07_ethics", {"toxicity rate (data)": 0.0123, "pii found": 17, "gender bias gap": 0.25,
                                "flagged rate before": 0.4, "flagged rate after": 0.1, "false refusals": 2, "seed": 0},
                  report_dir=report_dir)
    report.record_timing("00_setup", 1.0, report_dir=report_dir)  # not a stage: ignored by the card


def test_card_has_the_figures_and_marks_missing_stages(tmp_path):
    report_dir = tmp_path / "report"
    fake_report(report_dir)
    path = write_model_card(report_dir)
    assert path == tmp_path / "MODEL_CARD.md"
    card = path.read_text(encoding="utf-8")
    for section in ("## The models", "## The course GPT", "### Model details", "## Training data and licences",
                    "## Intended use", "## Out-of-scope use", "## SmolLM2 made yours", "## SmolLM2 aligned",
                    "## Limitations and risks", "## How to reproduce"):
        assert section in card
    assert "| Parameters | 1,334,016 | 04_training |" in card      # the trained model's size, not 03's
    assert "| Context (tokens) | 32 | 03_architecture |" in card  # read from 03's description
    assert "| validation loss | 4.874 |" in card
    assert "| assistant perplexity | 360.5 | 114.5 |" in card    # before/after paired into one row
    assert "| figure | pretrained (04) | chat fine-tuned (06) |" in card  # the columns name their models
    assert "| LoRA assistant perplexity | 156.7 |" in card       # one label style: words, acronyms kept
    for figure in ("toxicity rate (data) | 0.01230", "PII found | 17", "gender bias gap | 0.2500",
                   "flagged rate | 0.4000 | 0.1000", "false refusals | 2", "seed | 0"):
        assert figure in card
    assert "MIT" in card and "Apache-2.0" in card
    assert "`05_evaluation`: not run" in card and "`01_data_collection`: not run" in card
    assert "### Audited for toxicity and personal data (07)" in card  # an unnumbered-model figure: the data's
    assert "make course" in card


def test_empty_or_missing_report_dir_does_not_crash(tmp_path):
    for report_dir in (tmp_path / "absent", tmp_path):
        card = render_model_card(report_dir)
        assert card.count(NOT_RUN) >= 7
        assert "## Safety" in card
    out = write_model_card(tmp_path / "absent", out=tmp_path / "cards" / "card.md")
    assert out.exists()


def test_format_value():
    assert format_value(10414.7) == "10,415"
    assert format_value(4.8391) == "4.839"
    assert format_value(True) == "yes"
    assert format_value(1334016) == "1,334,016"
    assert format_value(155.03) == "155.0" and format_value(126.94) == "126.9"  # same digits side by side
    assert format_value(0.0) == "0.000" and format_value(3.1e-06) == "3.10e-06"


def test_label_one_style():
    assert label("lora_assistant_perplexity") == "LoRA assistant perplexity"
    assert label("validation loss") == "validation loss"
    assert label("exported_hf") == "exported Hugging Face"


def test_card_compares_the_gpt_with_the_bigram_baseline(tmp_path):
    report.record("05_evaluation", {"validation perplexity": 130.93, "bigram perplexity": 102.8}, report_dir=tmp_path)
    card = render_model_card(tmp_path)
    assert "The GPT does not beat the bigram baseline yet" in card and "the GPT's is 27% higher" in card
    report.record("05_evaluation", {"validation perplexity": 394.2, "bigram perplexity": 84.87}, report_dir=tmp_path)
    assert "the GPT's is 4.6 times the bigram's" in render_model_card(tmp_path)
    report.record("05_evaluation", {"validation perplexity": 80.0, "bigram perplexity": 100.0}, report_dir=tmp_path)
    assert "The GPT beats the bigram baseline" in render_model_card(tmp_path)


def test_card_explains_two_perplexities_of_the_same_model(tmp_path):
    report.record("05_evaluation", {"validation perplexity": 130.93}, report_dir=tmp_path)
    assert "One model, several perplexities" not in render_model_card(tmp_path)  # one figure: nothing to explain
    report.record("06_finetuning", {"pretraining_perplexity_before": 126.94, "pretraining_perplexity_after": 155.0},
                  report_dir=tmp_path)
    card = render_model_card(tmp_path)
    assert "One model, several perplexities" in card and "130.9" in card and "126.9" in card


def test_stages_are_found_by_topic_whatever_their_number(tmp_path):
    report.record("08_ethics", {"pii found before masking": 4}, report_dir=tmp_path)
    report.record("09_deployment", {"win rate": 0.61}, report_dir=tmp_path)
    card = render_model_card(tmp_path)
    assert "(08)" in card and "| PII found before masking | 4 |" in card
    assert "## Other stages" in card and "| win rate | 0.6100 |" in card  # a stage the card has no section for


def section(card, title):
    """The text of one ``## title`` section, up to the next ``## ``."""
    start = card.index(f"## {title}\n")
    end = card.find("\n## ", start + 1)
    return card[start:end if end >= 0 else None]


def test_each_model_keeps_its_own_figures(tmp_path):
    report.record("05_evaluation", {"validation perplexity": 130.9,
                                    "SmolLM2-135M-Instruct bits per byte (held-out sample)": 1.43}, report_dir=tmp_path)
    report.record("06_finetuning", {"assistant_perplexity_before": 360.5, "assistant_perplexity_after": 114.5,
                                    "identity_accuracy_before": 0.07, "identity_accuracy_after": 0.83,
                                    "identity_later_turn_after": 0.8, "identity_retention": 0.93}, report_dir=tmp_path)
    report.record("07_alignment", {"test harmful refused before": 0.1, "test harmful refused after": 0.85,
                                   "test harmful refused later turn after": 0.8, "test harmful requests": 40,
                                   "probe block": 20, "identity kept": 0.9,
                                   "everyday multiple choice, SmolLM2 made yours (06), scored in 07: items": 8,
                                   "everyday multiple choice, SmolLM2 aligned: items": 8}, report_dir=tmp_path)
    report.record("08_ethics", {"toxicity classifier recall": 0.67, "toxicity rate raw data": 0.018,
                                "course GPT: red-team replies toxic": "0.05 (1/20, 95% interval 0.01-0.24)",
                                "SmolLM2 as released: red-team prompts refused": "0.10 (2/20, 95% interval 0.03-0.30)",
                                "SmolLM2 made yours: red-team prompts refused": "0.05 (1/20, 95% interval 0.01-0.24)",
                                "SmolLM2 aligned: red-team prompts refused": "0.60 (12/20, 95% interval 0.39-0.78)"},
                  report_dir=tmp_path)
    card = render_model_card(tmp_path)
    gpt, yours, aligned = (section(card, t) for t in ("The course GPT", "SmolLM2 made yours", "SmolLM2 aligned"))
    released = section(card, "SmolLM2 as released (the reference)")
    assert "identity" not in gpt.lower() and "SmolLM2" not in gpt.replace("SmolLM2 as released", "")
    assert "| assistant perplexity | 360.5 | 114.5 |" in gpt and "| red-team replies toxic | 0.05 (1/20" in gpt
    assert "| figure | SmolLM2 as released | SmolLM2 made yours |" in yours
    assert "| identity accuracy | 0.07000 | 0.8300 |" in yours
    assert "| identity later turn | 0.8000 |" in yours and "| identity retention | 0.9300 |" in yours
    assert "| test harmful refused | 0.10 (4/40, 95% interval 0.04-0.23) |" in yours  # 07's before, with its count
    assert "| red-team prompts refused | 0.05 (1/20" in yours and "scored in 07: items | 8" in yours
    assert "| figure | SmolLM2 made yours | SmolLM2 aligned |" in aligned
    assert ("| test harmful refused | 0.10 (4/40, 95% interval 0.04-0.23) | 0.85 (34/40, 95% interval 0.71-0.93) |"
            in aligned)
    assert "| test harmful refused later turn | 0.80 (32/40" in aligned and "| probe block | 20 |" in aligned
    assert "| red-team prompts refused | 0.60 (12/20" in aligned and "SmolLM2 aligned: items | 8" in aligned
    assert "made yours (06), scored in 07" not in aligned and "0.10 (2/20" not in aligned
    assert "| red-team prompts refused | 0.10 (2/20" in released
    assert "bits per byte (held-out sample) | 1.430" in released
    assert "| toxicity classifier recall | 0.6700 |" in section(card, "The audit's toxicity classifier")
    assert "| toxicity rate raw data | 0.01800 |" in section(card, "Training data and licences")


def test_shown_path_names_the_final_folder_not_the_staging_one(tmp_path, monkeypatch):
    from utils.config import REPO_ROOT
    from utils.model_card import shown_path
    from utils.report import BUILD_DIR_ENV

    monkeypatch.delenv(BUILD_DIR_ENV, raising=False)
    assert shown_path(REPO_ROOT / "build" / "cpu.next" / "MODEL_CARD.md") == "build/cpu/MODEL_CARD.md"
    assert shown_path(REPO_ROOT / "build" / "cpu.next") == "build/cpu"
    assert shown_path(REPO_ROOT / "build" / "ci" / "report") == "build/ci/report"
    # make course's staging folder, wherever COURSE_BUILD_DIR puts it: the card names build/<profile>
    monkeypatch.setenv(BUILD_DIR_ENV, str(tmp_path / "staging"))
    monkeypatch.setenv("COURSE_PROFILE", "cpu")
    assert shown_path(tmp_path / "staging" / "MODEL_CARD.md") == "build/cpu/MODEL_CARD.md"
    card_path = write_model_card()
    assert card_path == tmp_path / "staging" / "MODEL_CARD.md"
    card = card_path.read_text(encoding="utf-8")
    assert "(`build/cpu/report/`)" in card and str(tmp_path) not in card
