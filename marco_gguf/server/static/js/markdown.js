// Markdown to safe HTML: markdown-it (GFM tables, strikethrough, autolinks; raw HTML off), highlight.js for
// fenced code, KaTeX for $...$, $$...$$, \(...\) and \[...\] (loaded on first use), and DOMPurify over the
// result, always: whatever the model or the user wrote becomes inert markup or text.
import { DOMPurify, MarkdownIt, hljs } from "../vendor/vendor.js";

let katex = null; // KaTeX (about 270 KiB) arrives when a message first holds math
let katexLoading = null;
const SAFE_URL = /^(?:https?:|mailto:|#)/i; // links may go to web pages and mail, nothing else (no javascript:, data:)

const md = new MarkdownIt({ html: false, linkify: true, breaks: false, highlight });
md.validateLink = (url) => SAFE_URL.test(url.trim());
md.inline.ruler.before("escape", "math_inline", mathInline);
md.block.ruler.before("fence", "math_block", mathBlock, { alt: ["paragraph", "reference", "blockquote", "list"] });
md.renderer.rules.math_inline = (tokens, i) => tex(tokens[i].content, false);
md.renderer.rules.math_block = (tokens, i) => `<div class="math-block">${tex(tokens[i].content, true)}</div>\n`;

function highlight(code, lang) {
  const known = lang && hljs.getLanguage(lang);
  const html = known ? hljs.highlight(code, { language: lang, ignoreIllegals: true }).value : md.utils.escapeHtml(code);
  return `<pre class="code"><code class="hljs${known ? " language-" + md.utils.escapeHtml(lang) : ""}">${html}</code></pre>`;
}

function tex(source, display) {
  if (!katex) {
    katexLoading ??= import("../vendor/katex.js").then((m) => (katex = m.default));
    return `<span class="math-pending">${md.utils.escapeHtml(source)}</span>`;
  }
  // trust: false makes \href, \url, \includegraphics and \htmlClass render as plain text (KaTeX's default)
  return katex.renderToString(source, { displayMode: display, throwOnError: false, trust: false, strict: "ignore",
                                        maxExpand: 500, maxSize: 20, output: "htmlAndMathml" });
}

// $...$ (not "$5 and $6": no space inside the dollars, no digit after), $$...$$, \(...\), \[...\] inside a line
function mathInline(state, silent) {
  const src = state.src, at = state.pos;
  let open, close;
  if (src.startsWith("$$", at)) [open, close] = ["$$", "$$"];
  else if (src[at] === "$") [open, close] = ["$", "$"];
  else if (src.startsWith("\\(", at)) [open, close] = ["\\(", "\\)"];
  else if (src.startsWith("\\[", at)) [open, close] = ["\\[", "\\]"];
  else return false;
  const start = at + open.length;
  let end = src.indexOf(close, start);
  if (open === "$") {
    while (end > 0 && src[end - 1] === "\\") end = src.indexOf(close, end + 1);
    if (end < 0 || /\s/.test(src[start] ?? " ") || /\s/.test(src[end - 1]) || /\d/.test(src[end + 1] ?? "")) return false;
  }
  if (end <= start) return false;
  if (!silent) {
    const token = state.push(open === "$" || open === "\\(" ? "math_inline" : "math_display_inline", "math", 0);
    token.content = src.slice(start, end);
    token.markup = open;
  }
  state.pos = end + close.length;
  return true;
}
md.renderer.rules.math_display_inline = (tokens, i) => tex(tokens[i].content, true);

// a block that starts with $$ or \[ on its own line and ends at the line holding $$ or \]
function mathBlock(state, startLine, endLine, silent) {
  const lineText = (n) => state.src.slice(state.bMarks[n] + state.tShift[n], state.eMarks[n]);
  const first = lineText(startLine);
  const open = first.startsWith("$$") ? "$$" : first.startsWith("\\[") ? "\\[" : null;
  if (!open || state.sCount[startLine] - state.blkIndent >= 4) return false;
  const close = open === "$$" ? "$$" : "\\]";
  let body = first.slice(2), line = startLine, found = false;
  if (body.trimEnd().endsWith(close)) {
    body = body.trimEnd().slice(0, -2);
    found = true;
  }
  while (!found && ++line < endLine) {
    const text = lineText(line);
    const cut = text.indexOf(close);
    if (cut >= 0) {
      body += "\n" + text.slice(0, cut);
      found = true;
    } else body += "\n" + text;
  }
  if (!found) return false;
  if (silent) return true;
  const token = state.push("math_block", "math", 0);
  token.content = body.trim();
  token.map = [startLine, line + 1];
  token.block = true;
  state.line = line + 1;
  return true;
}

// links open in a new tab without a handle on this one; anything DOMPurify lets through is still checked
DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") {
    if (!SAFE_URL.test(node.getAttribute("href") ?? "")) node.removeAttribute("href");
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  }
});
const PURIFY = { RETURN_TRUSTED_TYPE: true, FORBID_TAGS: ["style", "form", "input", "img", "iframe"],
                 FORBID_ATTR: ["src", "srcset", "action", "formaction", "xlink:href"] };

/** Markdown `text` as sanitised HTML (a TrustedHTML where the browser has Trusted Types). */
export function toHTML(text) {
  return DOMPurify.sanitize(md.render(text), PURIFY);
}

/** Render `text` into `el`; when KaTeX was still loading, `el` is rendered again once it is there. */
export function renderInto(el, text) {
  el.innerHTML = toHTML(text);
  addCopyButtons(el);
  if (!katex && katexLoading && el.querySelector(".math-pending")) {
    katexLoading.then(() => el.isConnected && el.dataset.source === text && renderInto(el, text));
  }
  el.dataset.source = text;
}

function addCopyButtons(el) {
  for (const pre of el.querySelectorAll("pre.code")) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "copy-code";
    button.textContent = "Copy";
    button.setAttribute("aria-label", "Copy the code");
    pre.prepend(button);
  }
}

/** Copy `text` to the clipboard; falls back to a selection where the Clipboard API is missing (plain HTTP). */
export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    const area = document.createElement("textarea");
    area.value = text;
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  window.lastCopied = text; // what a test reads back (headless browsers keep no clipboard)
}
