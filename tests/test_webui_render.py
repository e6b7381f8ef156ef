"""The chat page's rendering, in headless Chromium: markdown (headings, tables, highlighted code with a copy
button, KaTeX math) from a saved conversation, every XSS trick of issue 24 inert, nothing requested from
another origin; and, without a browser, that `/` and its files are the package's own files, with no URL of
another host in them. The server listens on 127.0.0.1 only."""

from __future__ import annotations

import json
import os
import re
from importlib import resources
from pathlib import Path

import pytest
from browser import (
    chromium,
    copied,
    foreign_requests,
    import_conversation,
    needs_chromium,
    open_page,
    reply_done,
    say,
    set_field,
    until,
)
from checkpoints import Spec
from serving import live, request

from marco_gguf.llama.engine import Engine

SPEC = Spec(dtype="f32")
STATIC = resources.files("marco_gguf.server") / "static"
CODE = "def area(r):\n    return 3.14159 * r ** 2"
RICH = f"""# Circles

## The formula

| radius | area |
|---|---|
| 1 | 3.14 |

```python
{CODE}
```

Inline math $e^{{i\\pi}} + 1 = 0$, \\(a^2 + b^2\\) and a display:

$$\\int_0^1 x\\,dx = \\frac{{1}}{{2}}$$

\\[c^2\\]

Prices like $5 and $6 stay text. Plain `inline code` too."""
# each line one trick; "pwned" set by any of them means script ran
HOSTILE = [
    "<script>window.pwned = 1</script>",
    '<img src=x onerror="window.pwned = 2">',
    '<svg onload="window.pwned = 3"><circle r=1></svg>',
    "[click me](javascript:window.pwned=4)",
    "[case](JaVaScRiPt:window.pwned=5)",
    "[tab](java\tscript:window.pwned=6)",
    "[entity](java&#x09;script:window.pwned=7)",
    "[angle](<javascript:window.pwned=8>)",
    "<javascript:window.pwned=9>",
    "[data](data:text/html;base64,PHNjcmlwdD53aW5kb3cucHduZWQ9MTA8L3NjcmlwdD4=)",
    "![pixel](https://example.com/pixel.png)",
    '[ref][evil]\n\n[evil]: javascript:window.pwned=11 "title"',
    '<a href="javascript:window.pwned=12">raw link</a>',
    '<iframe src="https://example.com/"></iframe>',
    "<style>body { background: url(https://example.com/bg.png) }</style>",
    "[**bold *nested* [inner](javascript:window.pwned=13)**](https://example.com/ok)",
    "$\\href{javascript:window.pwned=14}{math link}$",
    "$\\url{javascript:window.pwned=15}$",
    "$$\\htmlClass{x}{\\includegraphics{https://example.com/x.png}}$$",
    '<details open ontoggle="window.pwned = 16">x</details>',
]


@pytest.fixture(scope="module")
def server(converted):
    with Engine(converted(SPEC, "f32").path, ctx=2048, parallel=1, threads=2) as engine, live(engine) as s:
        yield s


def show(browser, server, tmp_path, content: str) -> None:
    saved = tmp_path / "conversation.json"
    saved.write_text(
        json.dumps(
            {
                "model": "x",
                "messages": [{"role": "user", "content": "show me"}, {"role": "assistant", "content": content}],
            }
        )
    )
    open_page(browser, server.url)
    import_conversation(browser, saved, 2)


@needs_chromium
def test_markdown_code_and_math_render(server, tmp_path):
    browser = chromium()
    try:
        show(browser, server, tmp_path, RICH)
        # KaTeX arrives on first use and the message is rendered again: wait for it, then look
        until(browser, lambda d: len(d.find_elements("css selector", ".msg.assistant .katex")) == 4, "4 formulas")
        reply = browser.find_element("css selector", ".msg.assistant .text")
        assert [h.text for h in reply.find_elements("css selector", "h1, h2")] == ["Circles", "The formula"]
        assert reply.find_element("css selector", "table td").text == "1"
        code = reply.find_element("css selector", "pre.code code.language-python")
        assert code.find_elements("css selector", ".hljs-keyword"), "highlighted"
        reply.find_element("css selector", "pre.code .copy-code").click()
        assert copied(browser, CODE)
        assert len(reply.find_elements("css selector", ".katex-display")) == 2
        assert reply.find_elements("css selector", ".katex-mathml math mi"), "MathML for screen readers"
        assert "$5 and $6 stay text" in reply.text
        assert reply.find_element("css selector", "p code").text == "inline code"
        assert foreign_requests(browser, server.url) == []
        # the README's screenshots: this conversation in the light theme, then the dark
        shots = Path(os.environ.get("MARCO_GGUF_SCREENSHOTS", tmp_path))
        browser.execute_script("document.getElementById('loadfile').hidden = true")
        for theme, name in (("light", "webui.png"), ("dark", "webui-dark.png")):
            browser.find_element("id", "theme").click()
            assert browser.execute_script("return document.documentElement.dataset.theme") == theme
            assert browser.save_screenshot(str(shots / name)) and (shots / name).stat().st_size > 10_000
    finally:
        browser.quit()


@needs_chromium
def test_hostile_markdown_runs_nothing_and_loads_nothing(server, tmp_path):
    """Reason: model output and pasted text are untrusted; each trick here has broken a markdown chat page."""
    browser = chromium()
    try:
        show(browser, server, tmp_path, "\n\n".join(HOSTILE))
        until(browser, lambda d: d.find_elements("css selector", ".msg.assistant .katex"), "the math rendered")
        set_field(browser, "max_tokens", 2)
        say(browser, "\n".join(HOSTILE[:3]))  # the user's own message goes through the same rendering
        try:
            until(browser, lambda d: reply_done(d, 2), "a reply")
        except Exception as e:
            log = browser.find_element("id", "log").get_attribute("textContent")[-500:]
            views = browser.execute_script(
                "return [...document.querySelectorAll('.msg')].map((v) => [v.className, "
                "v.querySelector('.speed')?.textContent ?? null])"
            )
            raise AssertionError(f"no reply ({e!r}): {views!r} {log!r} {browser.get_log('browser')}") from None
        for a in browser.find_elements("css selector", ".msg a"):
            browser.execute_script("arguments[0].click()", a)  # a link that ran script would set pwned now
        assert browser.execute_script("return window.pwned") is None
        assert browser.find_elements("css selector", ".msg :is(script, img, iframe, style, svg circle, details)") == []
        hrefs = [a.get_attribute("href") for a in browser.find_elements("css selector", ".msg a[href]")]
        assert hrefs and all(h.startswith("https://example.com/") for h in hrefs), hrefs
        rels = {a.get_attribute("rel") for a in browser.find_elements("css selector", ".msg a")}
        assert rels == {"noopener noreferrer"}
        handlers = browser.execute_script(
            "return [...document.querySelectorAll('.msg *')].flatMap((e) => [...e.attributes])"
            ".filter((a) => a.name.startsWith('on') || /^\\s*(javascript|data):/i.test(a.value)).map((a) => a.name)"
        )
        assert handlers == []
        assert foreign_requests(browser, server.url) == [], "no image, frame or style from another host"
        assert "<script>window.pwned = 1</script>" in browser.find_elements("css selector", ".msg.user .text")[-1].text
    finally:
        browser.quit()


def assets(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="(static/[^"]+)"', html)


def test_the_page_and_its_files_are_the_packaged_ones_with_no_other_host(server):
    status, headers, body = request(server.url, "GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert body == (STATIC / "index.html").read_bytes()
    csp = headers["content-security-policy"]
    for rule in ("script-src 'self'", "connect-src 'self'", "default-src 'none'", "require-trusted-types-for 'script'"):
        assert rule in csp, rule
    assert "unsafe-inline" not in csp.split("style-src-attr")[0], "no inline script or stylesheet"
    html = body.decode()
    files = assets(html)
    assert files == ["static/css/page.css", "static/vendor/katex.css", "static/js/app.js"]
    # the modules the page imports, and KaTeX's fonts
    files += [f"static/js/{m}.js" for m in ("markdown", "store", "stream", "panel", "convs", "dom")]
    files += ["static/vendor/vendor.js", "static/vendor/katex.js"]
    files += [f"static/vendor/fonts/{f.name}" for f in (STATIC / "vendor" / "fonts").iterdir()]
    for f in files:
        status, headers, served = request(server.url, "GET", "/" + f)
        assert status == 200 and served == (STATIC / f.removeprefix("static/")).read_bytes(), f
        assert headers["x-content-type-options"] == "nosniff"
    own_js = [f"js/{f.name}" for f in (STATIC / "js").iterdir()]
    assert sorted(own_js) == sorted(f.removeprefix("static/") for f in files if f.startswith("static/js/"))
    for own in ("index.html", "css/page.css", *own_js, "vendor/katex.css"):
        text = (STATIC / own).read_text()
        assert not re.search(r"https?://", text), f"{own} names another host"
    for vendored in ("vendor/vendor.js", "vendor/katex.js"):
        text = (STATIC / vendored).read_text()
        assert not re.search(r"""(import\(|from|url\()\s*["']?(https?:)?//""", text), f"{vendored} loads from elsewhere"
    assert request(server.url, "GET", "/static/../app.py")[0] == 404


def test_the_vendored_files_carry_their_licences():
    text = (STATIC / "vendor" / "LICENSES.txt").read_text()
    for package in ("markdown-it 15.0.3", "dompurify 3.5.0", "highlight.js 11.12.0", "katex 0.19.1"):
        assert package in text, package
    pinned = json.loads((Path(__file__).parents[1] / "webui" / "package.json").read_text())
    assert pinned["dependencies"] == {
        "dompurify": "3.5.0",
        "highlight.js": "11.12.0",
        "katex": "0.19.1",
        "markdown-it": "15.0.3",
    }
