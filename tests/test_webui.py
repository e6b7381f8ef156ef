"""The chat page at `/`, driven in a real headless browser: Debian's Chromium and ChromeDriver through Selenium.

Every wait is bounded; the server listens on 127.0.0.1 only (tests/serving.py)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from checkpoints import Spec
from serving import live, request, wait_idle

from marco_gguf.llama.engine import Engine, Sampling
from marco_gguf.llama.session import ChatSession

CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
pytestmark = pytest.mark.skipif(
    not Path(CHROMEDRIVER).exists() or not shutil.which("chromium"),
    reason="needs Debian's chromium and chromium-driver (.ci/run installs them)",
)
WAIT_S = 60
MARKUP = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2"><b>bold?</b>'
SPEC = Spec(dtype="f32")


@pytest.fixture(scope="module")
def engine(converted):
    with Engine(converted(SPEC, "f32").path, ctx=4096, parallel=2, threads=2) as e:
        yield e


@pytest.fixture(scope="module")
def server(engine):
    with live(engine) as s:
        yield s


def _browser(width: int = 1100, height: int = 800):
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
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_script_timeout(WAIT_S)
    return driver


@pytest.fixture
def browser():
    driver = _browser()
    yield driver
    driver.quit()


def until(driver, condition, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S, poll_frequency=0.05).until(lambda d: condition(d), message=what)


def open_page(driver, url: str) -> None:
    driver.get(url + "/")
    until(driver, lambda d: d.find_element("id", "model").text.endswith(".gguf"), "the page shows the model")


def set_field(driver, field: str, value) -> None:
    el = driver.find_element("id", field)
    el.clear()
    el.send_keys(str(value))


def say(driver, text: str) -> None:
    box = driver.find_element("id", "input")
    box.send_keys(text)
    driver.find_element("id", "send").click()


def last_reply(driver):
    return driver.find_elements("css selector", ".msg.assistant")[-1]


def test_a_reply_streams_in_with_its_speed_underneath(browser, server, engine, tmp_path):
    open_page(browser, server.url)
    set_field(browser, "temperature", 0)
    set_field(browser, "max_tokens", 24)
    # count the updates of the reply's text: more than one means it arrived piece by piece
    browser.execute_script("""
        window.updates = 0;
        new MutationObserver(() => window.updates++).observe(document.getElementById('log'),
                                                            {subtree: true, childList: true, characterData: true});""")
    say(browser, "Hello there, how are you?")
    until(
        browser,
        lambda d: (
            "tokens/s" in last_reply(d).find_element("css selector", ".speed").text
            if d.find_elements("css selector", ".msg.assistant .speed")
            else False
        ),
        "the speed line under the reply",
    )
    reply = last_reply(browser)
    text = reply.find_element("css selector", ".text").get_attribute("textContent")  # .text would strip it
    prompt = engine.tokenize(engine.template.render([{"role": "user", "content": "Hello there, how are you?"}]))
    alone = engine.submit(prompt, max_tokens=24, sampling=Sampling(temperature=0.0)).wait().text
    assert text == alone, "the page shows exactly what the engine generates for the same prompt, greedily"
    speed = reply.find_element("css selector", ".speed").text
    assert "generated at" in speed and "first token after" in speed, speed
    assert browser.execute_script("return window.updates") > 3
    shot = Path(os.environ.get("MARCO_GGUF_SCREENSHOT", tmp_path / "chat.png"))
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000


def test_stop_ends_a_long_reply_and_frees_the_slot(browser, server, engine):
    open_page(browser, server.url)
    set_field(browser, "temperature", 0)
    set_field(browser, "max_tokens", 3000)
    say(browser, "Write a very long story.")
    until(browser, lambda d: len(last_reply(d).find_element("css selector", ".text").text) > 0, "the first words")
    browser.find_element("id", "stop").click()
    until(
        browser,
        lambda d: (
            d.find_elements("css selector", ".msg.assistant .speed")
            and last_reply(d).find_element("css selector", ".speed").text == "stopped"
        ),
        "the reply marked stopped",
    )
    assert browser.find_element("id", "send").is_enabled() and not browser.find_element("id", "stop").is_enabled()
    wait_idle(engine)
    assert engine.metrics().requests_cancelled_total >= 1
    n = len(last_reply(browser).find_element("css selector", ".text").text)
    assert n < 3000, "stopped long before the 3000 tokens it was allowed"


def test_new_chat_starts_over(browser, server):
    open_page(browser, server.url)
    set_field(browser, "max_tokens", 4)
    say(browser, "One")
    until(browser, lambda d: d.find_elements("css selector", ".msg.assistant .speed"), "a reply")
    browser.find_element("id", "new").click()
    assert browser.find_elements("css selector", ".msg") == []
    assert browser.execute_script("return state.messages.length") == 0


def test_markup_from_the_model_or_the_user_is_shown_as_text(browser, server, tmp_path):
    """Reason: a reply containing <script> or <img onerror> must never run; it reaches the page as a loaded
    conversation here (a random model will not write it), through the same rendering as a streamed reply."""
    open_page(browser, server.url)
    saved = tmp_path / "conversation.json"
    saved.write_text(
        json.dumps(
            {
                "model": "x",
                "messages": [{"role": "user", "content": "show me"}, {"role": "assistant", "content": MARKUP}],
            }
        )
    )
    browser.execute_script("document.getElementById('loadfile').hidden = false")
    browser.find_element("id", "loadfile").send_keys(str(saved))
    until(browser, lambda d: len(d.find_elements("css selector", ".msg")) == 2, "the loaded conversation")
    set_field(browser, "max_tokens", 2)
    say(browser, MARKUP)
    until(browser, lambda d: len(d.find_elements("css selector", ".msg.assistant .speed")) == 1, "a reply")
    texts = [e.get_attribute("textContent") for e in browser.find_elements("css selector", ".msg .text")]
    assert texts[1] == MARKUP and texts[2] == MARKUP
    assert browser.find_elements("css selector", ".msg img, .msg b, .msg script") == []
    assert browser.execute_script("return window.pwned === undefined")


def test_save_writes_what_chat_loads(browser, server, converted, tmp_path):
    open_page(browser, server.url)
    set_field(browser, "system", "Be brief.")
    set_field(browser, "max_tokens", 3)
    say(browser, "Hi")
    until(browser, lambda d: d.find_elements("css selector", ".msg.assistant .speed"), "a reply")
    # keep the download in the page: the blob it would save, and no navigation
    browser.execute_script(
        "URL.createObjectURL = (blob) => { window.saved = blob; return 'about:blank'; };"
        "HTMLAnchorElement.prototype.click = function () {};"
    )
    browser.find_element("id", "save").click()
    text = browser.execute_async_script("window.saved.text().then(arguments[0])")
    path = tmp_path / "saved.json"
    path.write_text(text)
    with ChatSession(converted(SPEC, "f32").path, ctx=256) as chat:
        assert chat.load(path) == 3
        assert [m["role"] for m in chat.conversation()] == ["system", "user", "assistant"]


def test_with_an_api_key_the_page_asks_for_it(engine):
    with live(engine, api_key="s3cret") as s:
        assert request(s.url, "GET", "/")[0] == 200
        driver = _browser()
        try:
            driver.get(s.url + "/")
            until(driver, lambda d: d.find_element("id", "keybox").is_displayed(), "the key prompt")
            set_field(driver, "key", "s3cret")
            driver.find_element("id", "keyok").click()
            until(driver, lambda d: d.find_element("id", "model").text.endswith(".gguf"), "the model, with the key")
            set_field(driver, "max_tokens", 2)
            say(driver, "Hi")
            until(
                driver,
                lambda d: (
                    "tokens/s"
                    in (d.find_elements("css selector", ".msg.assistant .speed") or [d.find_element("id", "model")])[
                        0
                    ].text
                ),
                "a reply with the key",
            )
            assert driver.execute_script("return sessionStorage.getItem('marco-gguf-key')") == "s3cret"
        finally:
            driver.quit()


def test_usable_at_a_phone_width(server):
    driver = _browser(390, 844)
    try:
        open_page(driver, server.url)
        assert driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
        for field in ("input", "send", "new"):
            assert driver.find_element("id", field).is_displayed()
        assert not driver.find_element("id", "settings").is_displayed()  # folded behind its button
        driver.find_element("id", "settings-toggle").click()
        assert driver.find_element("id", "temperature").is_displayed()
    finally:
        driver.quit()


def test_the_page_is_small_and_fetches_nothing_else(server):
    status, headers, body = request(server.url, "GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert len(body) < 16_000
    assert b"http://" not in body and b"https://" not in body, "no CDN, nothing from elsewhere"
    assert "connect-src 'self'" in headers["content-security-policy"]
