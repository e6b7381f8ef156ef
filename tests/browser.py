"""Test helpers for the chat page: Debian's Chromium and ChromeDriver through Selenium (no browser download),
bounded waits, and an ASGI recorder that keeps the chat requests the server received."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
needs_chromium = pytest.mark.skipif(
    not Path(CHROMEDRIVER).exists() or not shutil.which("chromium"),
    reason="needs Debian's chromium and chromium-driver (.ci/run installs them)",
)
WAIT_S = 60


def chromium(width: int = 1100, height: int = 800, dark: bool = False):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--window-size={width},{height}",
        "--no-first-run",
        "--disable-extensions",
        *(["--force-dark-mode", "--blink-settings=preferredColorScheme=0"] if dark else []),
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_script_timeout(WAIT_S)
    return driver


def until(driver, condition, what: str):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # the page redraws a message's views as a reply streams and ends: an element found a moment ago may be gone
    wait = WebDriverWait(driver, WAIT_S, poll_frequency=0.05, ignored_exceptions=[StaleElementReferenceException])
    return wait.until(lambda d: condition(d), message=what)


def copied(driver, text: str) -> bool:
    """Wait until the page's copy reached `text`: copyText sets window.lastCopied after the clipboard's promise."""
    until(driver, lambda d: d.execute_script("return window.lastCopied") == text, f"{text[:40]!r} copied")
    return True


def open_page(driver, url: str) -> None:
    driver.get(url + "/")
    until(driver, lambda d: d.find_element("id", "model").text.endswith(".gguf"), "the page shows the model")


def set_field(driver, field: str, value) -> None:
    el = driver.find_element("id", field)
    el.clear()
    el.send_keys(str(value))


def say(driver, text: str) -> None:
    """Types `text` and clicks Send. A newline typed into the box is Enter, which sends: multi-line text is set
    as the box's value (with the input event the page listens to) instead of typed."""
    box = driver.find_element("id", "input")
    if "\n" in text:
        driver.execute_script(
            "arguments[0].value = arguments[1]; arguments[0].dispatchEvent(new Event('input', {bubbles: true}))",
            box,
            text,
        )
    else:
        box.send_keys(text)
    driver.find_element("id", "send").click()


def replies(driver) -> list:
    return driver.find_elements("css selector", ".msg.assistant")


def last_reply(driver):
    return replies(driver)[-1]


def reply_done(driver, n: int = 1) -> bool:
    """`n` replies on screen, the last one finished (its speed line written); read in one script, as the page
    may replace the views between two WebDriver calls."""
    return driver.execute_script(
        "const v = document.querySelectorAll('.msg.assistant');"
        "return v.length === arguments[0] && !!v[v.length - 1].querySelector('.speed')?.textContent;",
        n,
    )


def import_conversation(driver, path: Path, count: int) -> None:
    """Loads a saved conversation through the page's Import control (the file input, unhidden for Selenium)."""
    driver.execute_script("document.getElementById('loadfile').hidden = false")
    driver.find_element("id", "loadfile").send_keys(str(path))
    until(driver, lambda d: len(d.find_elements("css selector", ".msg")) == count, "the imported conversation")


def foreign_requests(driver, origin: str) -> list[str]:
    """Every resource the page asked for from anywhere but `origin`."""
    names = driver.execute_script("return performance.getEntriesByType('resource').map((e) => e.name)")
    return [n for n in names if not n.startswith(origin + "/")]


class Recorder:
    """ASGI middleware keeping the JSON body of every POST to /v1/chat/completions, in order
    (`LiveServer(state, wrap=recorder.wrap)`)."""

    def __init__(self) -> None:
        self.app, self.bodies = None, []

    def wrap(self, app):
        self.app = app
        return self

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != "/v1/chat/completions":
            return await self.app(scope, receive, send)
        chunks: list[bytes] = []

        async def keep():
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                self.bodies.append(json.loads(b"".join(chunks)))
            return message

        return await self.app(scope, keep, send)
