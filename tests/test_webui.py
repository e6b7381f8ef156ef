"""The chat page at `/`, driven in a real headless browser: streaming, stop, conversations kept in
localStorage (list, reload, search, rename, delete, import/export in chat's /save format), edit and resend,
regenerate, continue, /props in the controls, themes, the API key, a phone's width. Rendering and XSS:
test_webui_render.py. The server listens on 127.0.0.1 only (tests/serving.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from browser import (
    Recorder,
    chromium,
    copied,
    import_conversation,
    last_reply,
    needs_chromium,
    open_page,
    replies,
    reply_done,
    say,
    set_field,
    until,
)
from checkpoints import Spec
from serving import LiveServer, live, request, wait_idle

from marco_gguf.llama.engine import Engine, Sampling
from marco_gguf.llama.session import ChatSession
from marco_gguf.server import ServerState

pytestmark = needs_chromium
SPEC = Spec(dtype="f32")


@pytest.fixture(scope="module")
def engine(converted):
    with Engine(converted(SPEC, "f32").path, ctx=4096, parallel=2, threads=2) as e:
        yield e


@pytest.fixture(scope="module")
def recorder():
    return Recorder()


@pytest.fixture(scope="module")
def server(engine, recorder):
    with LiveServer(ServerState(engine.info.path.name, engine=engine), wrap=recorder.wrap) as s:
        yield s


@pytest.fixture
def browser():
    driver = chromium()
    yield driver
    driver.quit()


def sent_messages(recorder: Recorder) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in recorder.bodies[-1]["messages"]]


def test_a_reply_streams_in_with_its_speed_underneath(browser, server, engine, tmp_path):
    open_page(browser, server.url)
    set_field(browser, "temperature", 0)
    set_field(browser, "max_tokens", 64)
    # every text the reply shows on its way (markdown.js keeps the source in data-source at each render)
    browser.execute_script("""
        window.seen = [];
        new MutationObserver((records) => records.forEach((r) => window.seen.push(r.target.dataset.source)))
            .observe(document.getElementById('log'), {subtree: true, attributeFilter: ['data-source']});""")
    say(browser, "Hello there, how are you?")
    until(browser, reply_done, "the speed line under the reply")
    reply = last_reply(browser)
    text = reply.find_element("css selector", ".text").get_attribute("data-source")  # the text before markdown
    prompt = engine.tokenize(engine.template.render([{"role": "user", "content": "Hello there, how are you?"}]))
    alone = engine.submit(prompt, max_tokens=64, sampling=Sampling(temperature=0.0)).wait().text
    assert text == alone, "the page shows exactly what the engine generates for the same prompt, greedily"
    speed = reply.find_element("css selector", ".speed").text
    assert "generated at" in speed and "first token after" in speed and "tokens/s" in speed, speed
    partial = {t for t in browser.execute_script("return window.seen") if t and t != text}
    assert len(partial) >= 2 and all(text.startswith(t) for t in partial), "the reply grew piece by piece"
    shot = Path(os.environ.get("MARCO_GGUF_SCREENSHOT", tmp_path / "chat.png"))
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000


def test_stop_ends_a_long_reply_and_frees_the_slot(browser, server, engine):
    open_page(browser, server.url)
    set_field(browser, "temperature", 0)
    set_field(browser, "max_tokens", 3000)
    say(browser, "Write a very long story.")
    until(browser, lambda d: last_reply(d).find_element("css selector", ".text").text, "the first words")
    browser.find_element("id", "stop").click()
    until(browser, lambda d: last_reply(d).find_element("css selector", ".speed").text == "stopped", "stopped")
    assert browser.find_element("id", "send").is_enabled() and not browser.find_element("id", "stop").is_enabled()
    wait_idle(engine)
    assert engine.metrics().requests_cancelled_total >= 1
    assert len(last_reply(browser).find_element("css selector", ".text").text) < 3000


def test_a_conversation_survives_a_reload_and_is_listed_searched_renamed_deleted(browser, server):
    from selenium.webdriver.common.keys import Keys

    open_page(browser, server.url)
    set_field(browser, "max_tokens", 4)
    say(browser, "Tell me about zebra stripes")
    until(browser, reply_done, "a reply")
    browser.find_element("id", "new").click()
    assert browser.find_elements("css selector", ".msg") == []
    say(browser, "Another topic entirely")
    until(browser, reply_done, "a reply")
    browser.refresh()
    open_page(browser, server.url)
    titles = [e.text for e in browser.find_elements("css selector", "#convlist .open")]
    assert titles[:2] == ["Another topic entirely", "Tell me about zebra stripes"], "newest first, after a reload"
    assert browser.find_element("css selector", ".msg.user .text").text == "Another topic entirely"
    set_field(browser, "search", "zebra")
    until(browser, lambda d: len(d.find_elements("css selector", "#convlist .open")) == 1, "one match")
    browser.find_element("css selector", "#convlist .open").click()
    assert browser.find_element("css selector", ".msg.user .text").text == "Tell me about zebra stripes"
    browser.find_element("css selector", "#convlist .rename").click()
    box = browser.find_element("css selector", "#convlist input")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys("Stripes", Keys.ENTER)
    until(browser, lambda d: d.find_element("css selector", "#convlist .open").text == "Stripes", "renamed")
    delete = browser.find_element("css selector", "#convlist .delete")
    delete.click()
    assert delete.text == "Delete?", "the first click only arms the button"
    delete.click()
    set_field(browser, "search", "zebra")
    until(browser, lambda d: d.find_elements("css selector", "#convlist .open") == [], "deleted")
    assert browser.find_elements("css selector", ".msg") == [], "the open conversation was the deleted one"


def test_edit_and_resend_then_regenerate_send_the_expected_messages(browser, server, recorder):
    open_page(browser, server.url)
    set_field(browser, "max_tokens", 3)
    say(browser, "first question")
    until(browser, reply_done, "a reply")
    browser.find_element("css selector", ".msg.user .edit").click()
    box = browser.find_element("css selector", ".msg.user .edit-box")
    box.clear()
    box.send_keys("edited question")
    browser.find_element("css selector", ".msg.user .resend").click()
    until(browser, reply_done, "the reply to the edit")
    assert sent_messages(recorder) == [("user", "edited question")], "the edit replaced the message and its reply"
    first = last_reply(browser).find_element("css selector", ".text").get_attribute("data-source")
    last_reply(browser).find_element("css selector", ".regenerate").click()
    until(browser, lambda d: d.find_elements("css selector", ".alt-count") and reply_done(d), "a second reply")
    assert sent_messages(recorder) == [("user", "edited question")], "regenerate resends the history before it"
    assert browser.find_element("css selector", ".alt-count").text == "2/2"
    browser.find_element("css selector", ".alt-prev").click()
    assert browser.find_element("css selector", ".alt-count").text == "1/2"
    assert last_reply(browser).find_element("css selector", ".text").get_attribute("data-source") == first
    last_reply(browser).find_element("css selector", ".copy").click()
    assert copied(browser, first)


def test_a_reply_cut_at_max_tokens_is_continued_from_its_text(browser, server, recorder):
    open_page(browser, server.url)
    set_field(browser, "temperature", 0)
    set_field(browser, "max_tokens", 3)
    say(browser, "Count to twenty")
    until(browser, reply_done, "a reply cut at 3 tokens")
    cut = last_reply(browser).find_element("css selector", ".text").get_attribute("data-source")
    last_reply(browser).find_element("css selector", ".continue").click()
    until(browser, lambda d: not d.find_element("id", "stop").is_enabled() and reply_done(d), "continued")
    assert sent_messages(recorder) == [("user", "Count to twenty"), ("assistant", cut)], "the prefill is sent"
    longer = last_reply(browser).find_element("css selector", ".text").get_attribute("data-source")
    assert longer.startswith(cut) and len(longer) > len(cut)
    assert len(replies(browser)) == 1, "continued in place"


def test_props_fill_the_controls_and_the_model_panel(browser, server):
    _, _, body = request(server.url, "GET", "/props")
    props = json.loads(body)
    open_page(browser, server.url)
    params = props["default_generation_settings"]["params"]
    for field in ("temperature", "top_p", "top_k", "min_p", "repeat_penalty"):
        assert float(browser.find_element("id", field).get_attribute("value")) == pytest.approx(params[field]), field
    facts = browser.find_element("id", "facts").get_attribute("textContent")
    model = props["model"]
    assert model["file"] in facts and f"{model['experts']['used']} of {model['experts']['count']}" in facts
    assert str(props["default_generation_settings"]["n_ctx"]) in facts
    set_field(browser, "temperature", 1.7)
    browser.find_element("id", "reset").click()
    assert float(browser.find_element("id", "temperature").get_attribute("value")) == pytest.approx(
        params["temperature"]
    )


def test_the_theme_follows_the_system_and_switches(server):
    colours = {}
    for dark in (False, True):
        driver = chromium(dark=dark)
        try:
            open_page(driver, server.url)
            bg = "return getComputedStyle(document.body).backgroundColor"
            colours[dark] = driver.execute_script(bg)
            driver.find_element("id", "theme").click()  # system -> light
            assert driver.execute_script("return document.documentElement.dataset.theme") == "light"
            light = driver.execute_script(bg)
            driver.find_element("id", "theme").click()  # light -> dark
            dark_bg = driver.execute_script(bg)
            assert light != dark_bg
            assert driver.find_element("id", "theme").get_attribute("aria-label") == "Theme: dark"
            driver.refresh()
            open_page(driver, server.url)
            assert driver.execute_script(bg) == dark_bg, "the choice survives a reload"
        finally:
            driver.quit()
    assert colours[False] != colours[True], "with no choice made, the page follows the system's scheme"


def test_export_writes_what_chat_loads_and_import_reads_it_back(browser, server, converted, tmp_path):
    open_page(browser, server.url)
    set_field(browser, "system", "Be brief.")
    set_field(browser, "max_tokens", 3)
    say(browser, "Hi")
    until(browser, reply_done, "a reply")
    # keep the download in the page: the blob it would save, and no navigation
    browser.execute_script(
        "URL.createObjectURL = (blob) => { window.saved = blob; return 'about:blank'; };"
        "HTMLAnchorElement.prototype.click = function () {};"
    )
    browser.find_element("id", "save").click()
    path = tmp_path / "saved.json"
    path.write_text(browser.execute_async_script("window.saved.text().then(arguments[0])"))
    with ChatSession(converted(SPEC, "f32").path, ctx=256) as chat:
        assert chat.load(path) == 3
        assert [m["role"] for m in chat.conversation()] == ["system", "user", "assistant"]
    browser.find_element("id", "new").click()
    import_conversation(browser, path, 2)
    assert browser.find_element("id", "system").get_attribute("value") == "Be brief."
    browser.find_element("id", "export-all").click()
    every = json.loads(browser.execute_async_script("window.saved.text().then(arguments[0])"))
    assert isinstance(every, list) and all("messages" in c for c in every) and len(every) >= 2


def test_a_file_that_is_not_a_conversation_is_named_in_one_line(browser, server, tmp_path):
    open_page(browser, server.url)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"messages": [{"role": "wizard", "content": "x"}]}))
    browser.execute_script("document.getElementById('loadfile').hidden = false")
    browser.find_element("id", "loadfile").send_keys(str(bad))
    until(browser, lambda d: d.find_element("id", "notice").text, "the notice")
    assert browser.find_element("id", "notice").text.startswith("bad.json: message 1 is not")


def test_keyboard_shortcuts_send_stop_and_start_over(browser, server):
    from selenium.webdriver.common.keys import Keys

    open_page(browser, server.url)
    set_field(browser, "max_tokens", 3000)
    browser.find_element("id", "input").send_keys("A long story please", Keys.ENTER)
    until(browser, lambda d: last_reply(d).find_element("css selector", ".text").text, "the first words (Enter)")
    browser.find_element("tag name", "body").send_keys(Keys.ESCAPE)
    until(browser, lambda d: last_reply(d).find_element("css selector", ".speed").text == "stopped", "Esc stops")
    browser.find_element("id", "input").send_keys(Keys.CONTROL, Keys.SHIFT, "o")
    until(browser, lambda d: d.find_elements("css selector", ".msg") == [], "Ctrl+Shift+O starts a new chat")


def test_with_an_api_key_the_page_asks_for_it(engine):
    with live(engine, api_key="s3cret") as s:
        assert request(s.url, "GET", "/")[0] == 200
        driver = chromium()
        try:
            driver.get(s.url + "/")
            until(driver, lambda d: d.find_element("id", "keybox").is_displayed(), "the key prompt")
            set_field(driver, "key", "s3cret")
            driver.find_element("id", "keyok").click()
            until(driver, lambda d: d.find_element("id", "model").text.endswith(".gguf"), "the model, with the key")
            set_field(driver, "max_tokens", 2)
            say(driver, "Hi")
            until(driver, lambda d: "tokens/s" in last_reply(d).find_element("css selector", ".speed").text, "a reply")
            assert driver.execute_script("return sessionStorage.getItem('marco-gguf-key')") == "s3cret"
        finally:
            driver.quit()


def test_usable_at_a_phone_width(server):
    driver = chromium(390, 844)
    try:
        open_page(driver, server.url)
        assert driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
        for field in ("input", "send", "new", "theme"):
            assert driver.find_element("id", field).is_displayed()
        assert not driver.find_element("id", "settings").is_displayed()  # folded behind its button
        driver.find_element("id", "settings-toggle").click()
        assert driver.find_element("id", "temperature").is_displayed()
        driver.find_element("id", "convs-toggle").click()
        assert driver.find_element("id", "search").is_displayed()
        unnamed = driver.execute_script(
            "return [...document.querySelectorAll('button, input, textarea')].filter((e) => !e.hidden &&"
            " !(e.getAttribute('aria-label') || e.labels?.length || e.textContent.trim())).map((e) => e.id)"
        )
        assert unnamed == [], "every control has an accessible name"
    finally:
        driver.quit()
