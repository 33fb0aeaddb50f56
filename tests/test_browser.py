"""The built-in chat page in a real headless browser (Debian's chromium + chromedriver, Selenium):
send a message, watch the streamed reply arrive, take a screenshot."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from fitllm.api import Llama
from fitllm.server import Server
from test_server import start

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
if not (CHROMIUM and DRIVER):
    if os.environ.get("FITLLM_REQUIRE_BROWSER"):  # CI installs them: there a skip would hide a failure
        raise RuntimeError("chromium or chromedriver is missing")
    pytest.skip(
        "needs chromium and chromedriver (apt-get install chromium chromium-driver)", allow_module_level=True
    )

pytestmark = pytest.mark.e2e
SCREENSHOT = Path(tempfile.gettempdir()) / "fitllm-chat-page.png"


def test_chat_page_streams_a_reply(smollm2_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, u = start(Server(Llama(smollm2_path, n_ctx=1024, verbose=False), parallel=1))
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-background-networking",
        "--disable-gpu",
        "--window-size=900,700",
    ):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    try:
        driver.get(url + "/")
        name = Path(smollm2_path).stem  # the model as /v1/models names it: the file, not its path
        WebDriverWait(driver, 20).until(lambda d: d.find_element(By.ID, "model").text == name)
        driver.find_element(By.ID, "input").send_keys("Write one sentence about the sea.")
        driver.find_element(By.ID, "send").click()
        done = WebDriverWait(driver, 120).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, ".assistant[data-done='1']")
        )
        reply = done[0].text
        stats = driver.find_element(By.CLASS_NAME, "stats").text
        driver.save_screenshot(str(SCREENSHOT))
    finally:
        driver.quit()
        u.should_exit = True
    assert reply and not reply.startswith("error:")
    assert "tokens/s" in stats
    assert SCREENSHOT.stat().st_size > 10_000
    print(f"screenshot: {SCREENSHOT}")
