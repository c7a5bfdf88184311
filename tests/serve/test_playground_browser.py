"""The playground in a real headless browser (Debian's chromium driven by Selenium): load the page, send a prompt
with two settings side by side, see the streamed tokens, open a token's alternatives. Skipped, with the reason,
where no browser is installed (`apt-get install chromium chromium-driver`)."""

import os
import shutil
import tempfile

import pytest
from live import LiveServer
from serve_models import CHATML, save_serving_model

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
SCREENSHOT = os.environ.get("LMFORGE_PLAYGROUND_SCREENSHOT")  # a path: save the page there (docs/playground.png)

pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER),
                                reason="no headless browser: install Debian's chromium and chromium-driver")


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="lmforge-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={profile}", "--window-size=1400,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    folder = save_serving_model(tmp_path_factory.mktemp("playground-model"), family="llama", chat_template=CHATML)
    server = LiveServer(folder, name="tiny-llama")
    yield server
    server.close()


def test_send_a_prompt_and_open_a_tokens_alternatives(browser, live):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60)
    browser.get(live.url + "/")
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")
    assert "tiny-llama" in browser.find_element(By.ID, "model-info").text
    prompt = browser.find_element(By.ID, "prompt")
    prompt.clear()
    prompt.send_keys("The quick brown fox")
    columns = browser.find_elements(By.CSS_SELECTOR, "#columns .column")
    assert len(columns) == 2  # two settings side by side: greedy and sampling
    browser.find_element(By.ID, "generate").click()
    wait.until(lambda d: all("finish:" in c.find_element(By.CLASS_NAME, "stats").text for c in columns))
    tokens = columns[0].find_elements(By.CSS_SELECTOR, ".output .tok")
    assert len(tokens) >= 10 and columns[1].find_elements(By.CSS_SELECTOR, ".output .tok")
    assert columns[0].find_element(By.CLASS_NAME, "output").text.startswith("The quick brown fox")
    tokens[3].click()
    details = browser.find_element(By.ID, "details")
    assert details.is_displayed() and "probability" in details.text
    rows = details.find_elements(By.CSS_SELECTOR, "tbody tr")
    # up to ten: the completion API keys alternatives by their text, so tokens that decode alike count once
    assert 1 < len(rows) <= 10 and details.find_elements(By.CSS_SELECTOR, "tr.chosen")  # greedy: the top one
    if SCREENSHOT:
        browser.save_screenshot(SCREENSHOT)

    browser.find_element(By.ID, "mode-chat").click()
    user = browser.find_element(By.ID, "user")
    user.clear()
    user.send_keys("Café?")
    browser.find_element(By.ID, "generate").click()
    wait.until(lambda d: all("finish:" in c.find_element(By.CLASS_NAME, "stats").text for c in columns))
    assert "Café?" in columns[0].find_element(By.CLASS_NAME, "transcript").text
    assert columns[0].find_elements(By.CSS_SELECTOR, ".output .tok")

