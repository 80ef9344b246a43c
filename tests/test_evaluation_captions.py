"""Report captions: one per plot, and each renders (Jinja as Snakemake does, then reStructuredText)."""

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from docutils.core import publish_parts
from jinja2 import Environment, StrictUndefined

from medclassify.config import load_config, run_config
from medclassify.workflow_paths import PLOT_NAMES

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
    ({}, "its last epoch", "for two classes the threshold was chosen there; with more, the arg-max decides"),
    ({"select_epoch": "best_auc"}, "the best validation AUC", "the epoch kept, and for two classes the threshold, were"),
    ({"select_epoch": "lowest_val_loss"}, "the lowest validation loss", "the epoch kept, and for two classes"),
    ({"early_stopping_patience": 5}, "its last epoch", "the epoch kept, and for two classes the threshold, were"),
])
def test_captions_describe_the_epoch_that_fine_tuning_keeps(finetune, kept, val_note):
    # The default keeps the last epoch: the captions once said the best validation AUC's, always.
    plain = lambda html: " ".join(re.sub("<[^>]+>", "", html).split())  # noqa: E731
    assert kept in plain(_render("training_curves", _snakemake(**finetune))["body"])
    assert val_note in plain(_render("metrics", _snakemake(**finetune))["body"])


@pytest.mark.parametrize("confidence, bootstrap, says", [(0.975, 1000, "97.5% percentile"), (0.95, 0, "none"),
                                                         (0.9, 200, "90% percentile")])
def test_metrics_and_roc_captions_give_the_level_as_configured_and_no_intervals_without_resamples(
        confidence, bootstrap, says):
    # 0.975 was printed as 98%, and bootstrap 0 as "from 0 bootstrap resamples".
    config = load_config(overrides={"evaluate": {"confidence": confidence, "bootstrap": bootstrap}})
    run_options = run_config(config, "baseline")
    snakemake = SimpleNamespace(config=config, wildcards=SimpleNamespace(dataset="demo", run="baseline"),
                                params=SimpleNamespace(options={"evaluate": run_options["evaluate"]},
                                                       run_options=run_options))
    metrics = " ".join(re.sub("<[^>]+>", "", _render("metrics", snakemake)["body"]).split())
    roc = " ".join(re.sub("<[^>]+>", "", _render("roc", snakemake)["body"]).split())
    assert says in metrics and "from 0 bootstrap" not in metrics + roc
    assert ("no band" in roc) == (bootstrap == 0)
