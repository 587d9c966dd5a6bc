"""utils.model_card: the card shows every recorded figure and says "not run" for a missing stage."""

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
    for section in ("## Model details", "## Training data and licences", "## Intended use", "## Out-of-scope use",
                    "## Metrics", "## Safety", "## Limitations and risks", "## How to reproduce"):
        assert section in card
    assert "| Parameters | 1,334,016 | 04_training |" in card      # the trained model's size, not 03's
    assert "| Context (tokens) | 32 | 03_architecture |" in card  # read from 03's description
    assert "| validation loss | 4.874 |" in card
    assert "| assistant perplexity | 360.5 | 114.5 |" in card    # before/after paired into one row
    assert "| LoRA assistant perplexity | 156.7 |" in card       # one label style: words, acronyms kept
    for figure in ("toxicity rate (data) | 0.01230", "PII found | 17", "gender bias gap | 0.2500",
                   "flagged rate | 0.4000 | 0.1000", "false refusals | 2", "seed | 0"):
        assert figure in card
    assert "MIT" in card and "Apache-2.0" in card
    assert "`05_evaluation`: not run" in card and "`01_data_collection`: not run" in card
    assert "### Audit (07)" in card
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
    report.record("07_alignment", {"win rate": 0.61}, report_dir=tmp_path)
    card = render_model_card(tmp_path)
    assert "### Audit (08)" in card and "| PII found before masking | 4 |" in card
    assert "## Other stages" in card and "| win rate | 0.6100 |" in card  # a stage the card has no section for
