"""Report captions: one per plot, and each renders (Jinja as Snakemake does, then reStructuredText)."""

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from docutils.core import publish_parts
from jinja2 import Environment, StrictUndefined

from medclassify.config import load_config, run_config
from medclassify.evaluation.plots import PLOT_NAMES

REPORT = Path(__file__).resolve().parent.parent / "workflow" / "report"
# Captions of the rules' other report outputs: metrics.json, compare and k-fold aggregation.
OTHER_CAPTIONS = ("metrics", "compare", "aggregate")


def _render(name, snakemake):
    # Snakemake renders captions with Jinja (trim_blocks, lstrip_blocks); StrictUndefined makes a
    # misspelt variable fail here instead of rendering as an empty string in the report.
    env = Environment(trim_blocks=True, lstrip_blocks=True, undefined=StrictUndefined)
    text = env.from_string((REPORT / f"{name}.rst").read_text(encoding="utf-8")).render(snakemake=snakemake)
    # halt_level 2 turns any reStructuredText warning into an exception.
    return publish_parts(text, writer="html", settings_overrides={"halt_level": 2, "report_level": 2})


def _snakemake(**finetune):
    # The params of the evaluate rule, whose outputs carry these captions.
    config = load_config(overrides={"finetune": finetune})
    run_options = run_config(config, "baseline")
    return SimpleNamespace(config=config, wildcards=SimpleNamespace(dataset="demo", run="baseline"),
                           params=SimpleNamespace(options={"evaluate": run_options["evaluate"]}, run_options=run_options))


@pytest.fixture(scope="module")
def snakemake():
    return _snakemake()


@pytest.mark.parametrize("name", [*PLOT_NAMES, *OTHER_CAPTIONS])
def test_caption_renders(name, snakemake):
    body = _render(name, snakemake)["body"]
    assert "demo" in body and len(body) > 200


def test_workflow_description_renders_with_datasets_and_runs(snakemake):
    html = _render("workflow", snakemake)["html_body"]
    assert "demo" in html and "baseline" in html and "patients" in html
    assert "95%" in html



def test_workflow_description_gives_each_run_its_own_evaluate_settings():
    # A run may override evaluate: the main page must not describe it with the top-level values.
    config = load_config(overrides={"runs": {"baseline": {}, "fixed_half": {"evaluate": {"threshold": "fixed", "bootstrap": 0}}}})
    html = _render("workflow", SimpleNamespace(config=config))["html_body"]
    items = {re.sub("<[^>]+>", "", item).split(":")[0]: " ".join(re.sub("<[^>]+>", "", item).split())
             for item in re.findall(r"<li><tt[^>]*>.*?</li>", html, flags=re.S)}
    assert items == {
        "baseline": "baseline: evaluate.threshold: youden; 95% confidence intervals from 1000 bootstrap resamples.",
        "fixed_half": "fixed_half: evaluate.threshold: fixed (at 0.5); no confidence intervals (evaluate.bootstrap: 0).",
    }


@pytest.mark.parametrize("finetune, kept, val_note", [
    ({}, "its last epoch", "threshold was chosen there"),
    ({"select_epoch": "best_auc"}, "the best validation AUC", "threshold and the epoch kept were chosen there"),
    ({"select_epoch": "lowest_val_loss"}, "the lowest validation loss", "the epoch kept were chosen there"),
    ({"early_stopping_patience": 5}, "its last epoch", "threshold and the epoch kept were chosen there"),
])
def test_captions_describe_the_epoch_that_fine_tuning_keeps(finetune, kept, val_note):
    # The default keeps the last epoch: the captions once said the best validation AUC's, always.
    plain = lambda html: " ".join(re.sub("<[^>]+>", "", html).split())  # noqa: E731
    assert kept in plain(_render("training_curves", _snakemake(**finetune))["body"])
    assert val_note in plain(_render("metrics", _snakemake(**finetune))["body"])
