"""The page at ``/`` in a real browser (headless Chromium from the system packages, driven by Selenium):
reach the file chooser from the keyboard, upload an image, read the top-k bars and the Grad-CAM overlay
from the page, and check them against ``predict``. A screenshot is kept as an artefact."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from test_serve_fixtures import make_images, make_weights, running_server

from inceptionv3.serve.config import ServeConfig
from inceptionv3.tasks.predict import predict

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                                reason="the browser test needs the system's chromium and chromedriver "
                                       "(apt-get install chromium chromium-driver)")


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1100,1400", "--no-first-run", "--disable-extensions"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def test_the_page_classifies_an_uploaded_image(tmp_path, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    weights = make_weights(tmp_path / "tiny.safetensors")
    image = make_images(tmp_path / "images", n=1)[0]
    [expected] = predict([image], weights=weights, top_k=3, workers=0)
    with running_server(ServeConfig(weights=str(weights), port=0, top_k=3, backend="torch")) as server:
        browser.get(server.url + "/")
        wait = WebDriverWait(browser, 60)
        wait.until(ec.text_to_be_present_in_element((By.ID, "model-line"), "Model tiny"))
        facts = browser.find_element(By.ID, "model-facts").text
        assert "center crop 75" in facts and "inception_v3" in facts
        assert browser.find_element(By.ID, "class-count").text == "3"

        # Keyboard: Tab reaches the drop zone first, and it says how to use it.
        browser.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
        assert browser.switch_to.active_element.get_attribute("id") == "drop"

        browser.find_element(By.ID, "files").send_keys(str(image))
        wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "Done: 1 of 1"))
        bars = browser.find_elements(By.CSS_SELECTOR, ".result .bar")
        got = [(int(b.get_attribute("data-index")), b.get_attribute("data-label"),
                float(b.get_attribute("data-probability"))) for b in bars]
        want = [(p["index"], p["label"], p["probability"]) for p in expected["predictions"]]
        assert [g[:2] for g in got] == [w[:2] for w in want]
        assert all(abs(g[2] - w[2]) < 1e-5 for g, w in zip(got, want))
        overlay = browser.find_element(By.CSS_SELECTOR, "img[alt^='Grad-CAM']")
        assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", overlay) == 75

        shot = tmp_path / "serve_page.png"
        assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 0
        artefacts = os.environ.get("INCEPTIONV3_ARTEFACTS")
        if artefacts:
            Path(artefacts).mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, Path(artefacts) / shot.name)
        # Nothing the page loaded came from outside this server.
        urls = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert urls and all(u.startswith((server.url, "blob:")) for u in urls), urls
