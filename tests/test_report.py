"""The Snakemake report of the demo run opens in a real headless Chromium and shows its plots."""

import io
import shutil
import time
import zipfile

import numpy as np
import pytest
from PIL import Image

from conftest import FAST_DEMO_ARGS
from snakemake_fixtures import run_snakemake

pytestmark = pytest.mark.slow

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def report_html(demo_run, tmp_path_factory):
    run = run_snakemake(["--report", "results/report.zip", *FAST_DEMO_ARGS], demo_run, timeout_s=300)
    if run.returncode != 0:
        pytest.fail(f"snakemake --report failed:\n{run.tail()}")
    folder = tmp_path_factory.mktemp("report")
    with zipfile.ZipFile(demo_run / "results" / "report.zip") as archive:
        archive.extractall(folder)
    return folder / "report" / "report.html"


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.fail("Chromium and chromedriver are needed: `make system-deps` installs them")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # No network here: without these flags Chromium keeps trying to reach Google's services.
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def click(driver, xpath):
    from selenium.webdriver.common.by import By

    deadline = time.time() + 20
    while True:
        elements = driver.find_elements(By.XPATH, xpath)
        if elements:
            elements[0].click()
            time.sleep(0.5)
            return
        if time.time() > deadline:
            raise AssertionError(f"not in the report page: {xpath}\n{driver.find_element(By.TAG_NAME, 'body').text[:2000]}")
        time.sleep(0.2)


def test_report_holds_every_plot_of_the_run(demo_run, report_html):
    names = zipfile.ZipFile(demo_run / "results" / "report.zip").namelist()
    for plot in ("confusion_matrix.png", "roc.png", "training_curves.png", "calibration.png", "report.png", "runs_auc.png",
                 "metrics.json", "run_card.json", "fingerprint.json"):
        assert any(name.endswith("/" + plot) for name in names), plot
    # Made to be shared: no file whose rows name the images (paths may carry patients' names).
    for private in ("predictions.csv", "report.md", "manifest.validated.csv"):
        assert not any(name.endswith("/" + private) for name in names), private


def test_the_report_says_which_epoch_each_run_keeps(report_html):
    # It said "the checkpoint with the best validation AUC is kept" while the default keeps the last.
    text = report_html.read_text(encoding="utf-8")
    assert "fine-tuning keeps the weights of its last epoch" in text
    assert "best validation AUC is kept" not in text


def test_confusion_matrix_renders_in_chromium(report_html, browser, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(report_html.as_uri())
    click(browser, "//a[normalize-space()='Results']")
    click(browser, "//a[normalize-space()='demo']")
    click(browser, "//a[normalize-space()='baseline']")
    click(browser, "//tr[td[normalize-space()='confusion_matrix'] and td[normalize-space()='png']]//a[@iconname='eye']")
    deadline = time.time() + 20
    while True:
        images = [img for img in browser.find_elements(By.TAG_NAME, "img")
                  if browser.execute_script("return arguments[0].naturalWidth", img) > 200]
        if images or time.time() > deadline:
            break
        time.sleep(0.2)
    assert images, "no rendered plot image in the page"
    browser.save_screenshot(str(tmp_path / "page.png"))
    shot = np.asarray(Image.open(io.BytesIO(images[0].screenshot_as_png)).convert("RGB"), dtype=float)
    assert shot.shape[0] > 100 and shot.shape[1] > 100
    assert shot.std() > 10, "the confusion matrix area is blank"
    assert len(np.unique(shot.reshape(-1, 3), axis=0)) > 50, "the confusion matrix area has almost no colours"
