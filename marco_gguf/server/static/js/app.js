// The chat page: conversations (store.js), markdown (markdown.js), streaming from /v1/chat/completions, the
// server's defaults and the model's facts from /props. Text reaches the DOM only through textContent or
// markdown.js (DOMPurify); this file never builds HTML from strings.
import { copyText, renderInto } from "./markdown.js";
import { connect, download, listConversations } from "./convs.js";
import { button, el } from "./dom.js";
import { setTheme, showFacts, THEMES } from "./panel.js";
import * as store from "./store.js";
import { events, speedLine } from "./stream.js";

const $ = (id) => document.getElementById(id);
const FIELDS = { temperature: parseFloat, top_p: parseFloat, top_k: parseInt, min_p: parseFloat,
                 repeat_penalty: parseFloat, max_tokens: parseInt };
const state = { conv: store.blank(), controller: null, model: "", props: null };
let apiKey = sessionStorage.getItem("marco-gguf-key") || ""; // this tab only

function headers() {
  const h = { "Content-Type": "application/json" };
  if (apiKey) h.Authorization = "Bearer " + apiKey;
  return h;
}

function notice(text) {
  $("notice").textContent = text;
}

// ---- the conversation on screen ----

function messageView(m, i) {
  const div = el("div", "msg " + m.role);
  div.dataset.index = i;
  const body = el("div", "text");
  renderInto(body, m.content);
  const meta = el("div", "meta");
  div.append(el("div", "who", m.role), body, meta);
  fillMeta(meta, m, i);
  return div;
}

function fillMeta(meta, m, i) {
  meta.replaceChildren();
  const busy = state.controller !== null;
  if (m.role === "user") {
    const edit = button("Edit", "Edit this message and resend", () => startEdit(i));
    edit.className = "edit";
    edit.disabled = busy;
    meta.append(edit);
    return;
  }
  if (m.alts && m.alts.length > 1) {
    const prev = button("‹", "Previous reply", () => pickAlt(i, -1));
    const next = button("›", "Next reply", () => pickAlt(i, +1));
    prev.className = "alt-prev";
    next.className = "alt-next";
    prev.disabled = busy || m.alt === 0;
    next.disabled = busy || m.alt === m.alts.length - 1;
    meta.append(prev, el("span", "alt-count", `${m.alt + 1}/${m.alts.length}`), next);
  }
  const copy = button("Copy", "Copy this reply", () => copyText(m.content));
  copy.className = "copy";
  meta.append(copy);
  if (i === state.conv.messages.length - 1) {
    const again = button("Regenerate", "Regenerate this reply", () => regenerate());
    again.className = "regenerate";
    again.disabled = busy;
    meta.append(again);
    if (m.finish === "length") {
      const more = button("Continue", "Continue this reply", () => continueReply());
      more.className = "continue";
      more.disabled = busy;
      meta.append(more);
    }
  }
  meta.append(el("span", "speed", m.speed || ""));
}

function render() {
  $("log").replaceChildren(...state.conv.messages.map(messageView));
  $("system").value = state.conv.system;
  $("log").scrollTop = $("log").scrollHeight;
  listConversations();
}

function busy(on) {
  $("send").disabled = on;
  $("stop").disabled = !on;
  $("new").disabled = on;
  $("load").disabled = on;
  for (const b of document.querySelectorAll(".msg .meta button, #convlist button")) b.disabled = on;
}

// ---- conversations ----

function persist() {
  if (!state.conv.messages.length) return;
  try {
    store.save(state.conv);
    notice("");
  } catch (e) {
    notice(e.message);
  }
}

async function importFile(file) {
  try {
    const convs = store.parseImport(await file.text());
    for (const conv of convs) store.save(conv);
    state.conv = convs[convs.length - 1];
    render();
    notice("");
  } catch (e) {
    notice(`${file.name}: ${e.message}`);
  }
}

// ---- generation ----

function request(messages) {
  const system = state.conv.system.trim();
  const body = { model: state.model, stream: true, stream_options: { include_usage: true },
                 messages: (system ? [{ role: "system", content: system }] : []).concat(messages) };
  for (const [id, parse] of Object.entries(FIELDS)) {
    const v = parse($(id).value);
    if (Number.isFinite(v)) body[id] = v;
  }
  return body;
}

/** Streams a reply to `messages` into `target` (an assistant message, appended to when `prefix` is its text). */
async function generate(messages, target, prefix = "") {
  const view = $("log").lastElementChild;
  const body = view.querySelector(".text");
  state.controller = new AbortController();
  busy(true);
  const sent = performance.now();
  let first = null, timings = null, stopped = false, frame = 0;
  target.content = prefix;
  target.finish = null;
  try {
    const resp = await fetch("v1/chat/completions", { method: "POST", headers: headers(),
                                                       body: JSON.stringify(request(messages)),
                                                       signal: state.controller.signal });
    if (!resp.ok) throw new Error(await errorText(resp));
    for await (const chunk of events(resp)) {
      if (chunk.timings) timings = chunk.timings;
      const choice = chunk.choices && chunk.choices[0];
      if (choice && choice.finish_reason) target.finish = choice.finish_reason;
      if (choice && choice.delta && choice.delta.content) {
        first ??= performance.now();
        target.content += choice.delta.content;
        // at most one render per frame: the text grows without flicker however fast tokens arrive
        frame ||= requestAnimationFrame(() => {
          frame = 0;
          renderInto(body, target.content);
          $("log").scrollTop = $("log").scrollHeight;
        });
      }
    }
  } catch (e) {
    if (e.name === "AbortError") stopped = true;
    else {
      view.classList.add("error");
      target.error = e.message;
    }
  } finally {
    cancelAnimationFrame(frame);
    state.controller = null;
  }
  target.speed = stopped ? "stopped" : target.error ? "error: " + target.error : timings
    ? speedLine(timings, ((first ?? performance.now()) - sent) / 1000) : "";
  if (target.alts) target.alts[target.alt] = target.content;
  renderInto(body, target.content);
  busy(false);
  fillMeta(view.querySelector(".meta"), target, state.conv.messages.indexOf(target));
  const failed = target.error && !target.content;
  delete target.error;
  if (failed) state.conv.messages.pop();
  persist();
  listConversations();
}

async function errorText(resp) {
  if (resp.status === 401) askForKey();
  try {
    return (await resp.json()).error.message;
  } catch {
    return `HTTP ${resp.status}`;
  }
}

function reply(alts) {
  const target = { role: "assistant", content: "" };
  if (alts) Object.assign(target, { alts: [...alts, ""], alt: alts.length });
  state.conv.messages.push(target);
  $("log").append(messageView(target, state.conv.messages.length - 1));
  return target;
}

function send(text) {
  state.conv.messages.push({ role: "user", content: text });
  persist();
  render();
  const history = state.conv.messages.slice();
  return generate(history, reply());
}

function regenerate() {
  const last = state.conv.messages.pop();
  const alts = last.alts ?? [last.content];
  render();
  return generate(state.conv.messages.slice(), reply(alts));
}

function continueReply() {
  const last = state.conv.messages[state.conv.messages.length - 1];
  // the server continues a conversation that ends with the assistant's words (llama-server's prefill)
  return generate(state.conv.messages.slice(), last, last.content);
}

function pickAlt(i, step) {
  const m = state.conv.messages[i];
  m.alt = Math.max(0, Math.min(m.alts.length - 1, m.alt + step));
  m.content = m.alts[m.alt];
  m.speed = "";
  persist();
  render();
}

function startEdit(i) {
  const view = $("log").children[i];
  const box = el("textarea", "edit-box");
  box.value = state.conv.messages[i].content;
  box.setAttribute("aria-label", "Edit the message");
  const resend = button("Send", "Resend the edited message", () => {
    if (!box.value.trim() || state.controller) return;
    state.conv.messages.length = i; // the edited message replaces it and what followed it
    send(box.value);
  });
  resend.className = "resend primary";
  const cancel = button("Cancel", "Cancel editing", render);
  view.querySelector(".text").replaceChildren(box);
  view.querySelector(".meta").replaceChildren(resend, cancel);
  box.focus();
}

// ---- the server: key, defaults, model ----

function askForKey() {
  $("keybox").classList.add("shown");
  $("key").focus();
}

function applyDefaults() {
  const p = state.props.default_generation_settings.params;
  for (const id of Object.keys(FIELDS)) {
    const v = id === "max_tokens" && p[id] < 0 ? "" : p[id];
    $(id).value = v ?? "";
  }
}

async function loadServer() {
  try {
    const resp = await fetch("props", { headers: headers() });
    if (resp.status === 401) {
      $("model").textContent = "API key needed";
      askForKey();
      return;
    }
    if (!resp.ok) throw new Error(await errorText(resp));
    state.props = await resp.json();
    state.model = state.props.model_alias;
    $("model").textContent = state.props.model.file;
    applyDefaults();
    showFacts(state.props);
  } catch (e) {
    $("model").textContent = "server not reachable";
    notice(e.message);
  }
}

// ---- theme and keys ----

function newChat() {
  if (state.controller) return;
  state.conv = store.blank();
  render();
  $("input").focus();
}

$("ask").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("input").value;
  if (!text.trim() || state.controller) return;
  $("input").value = "";
  send(text);
});
$("input").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    $("ask").requestSubmit();
  }
});
document.addEventListener("keydown", (e) => {
  const mod = e.ctrlKey || e.metaKey;
  if (e.key === "Escape" && state.controller) state.controller.abort();
  else if (mod && e.shiftKey && e.key.toLowerCase() === "o") {
    e.preventDefault();
    newChat();
  } else if (mod && e.key.toLowerCase() === "k") {
    e.preventDefault();
    $("convs").classList.remove("folded");
    $("search").focus();
  }
});
$("log").addEventListener("click", (e) => {
  const b = e.target.closest(".copy-code");
  if (!b) return;
  copyText(b.parentElement.querySelector("code").textContent.replace(/\n$/, "")); // the fence's last newline
  b.textContent = "Copied";
  setTimeout(() => (b.textContent = "Copy"), 1500);
});
$("stop").addEventListener("click", () => state.controller && state.controller.abort());
$("new").addEventListener("click", newChat);
$("system").addEventListener("change", () => {
  state.conv.system = $("system").value;
  persist();
});
$("reset").addEventListener("click", () => state.props && applyDefaults());
$("keyok").addEventListener("click", () => {
  apiKey = $("key").value.trim();
  sessionStorage.setItem("marco-gguf-key", apiKey);
  $("keybox").classList.remove("shown");
  loadServer();
});
$("settings-toggle").addEventListener("click", () => $("settings").classList.toggle("folded"));
$("convs-toggle").addEventListener("click", () => $("convs").classList.toggle("folded"));
$("search").addEventListener("input", listConversations);
$("theme").addEventListener("click", () => {
  const now = localStorage.getItem("marco-gguf-theme") || "system";
  setTheme(THEMES[(THEMES.indexOf(now) + 1) % THEMES.length]);
});
$("save").addEventListener("click", () => download(store.exportOne(state.conv, state.model), state.conv.title));
$("export-all").addEventListener("click", () => download(store.all().map((c) => store.exportOne(c, state.model)), "conversations"));
$("load").addEventListener("click", () => $("loadfile").click());
$("loadfile").addEventListener("change", () => {
  const file = $("loadfile").files[0];
  $("loadfile").value = "";
  if (file) importFile(file);
});

connect(state, render);
setTheme(localStorage.getItem("marco-gguf-theme") || "system");
const latest = store.all()[0];
if (latest) state.conv = latest; // the page opens where it was left
render();
loadServer();
$("input").focus();
