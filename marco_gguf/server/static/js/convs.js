// The conversation list: open, rename, export, delete (a second click confirms), filtered by the search box.
import { button, el } from "./dom.js";
import * as store from "./store.js";

const $ = (id) => document.getElementById(id);
let state = null; // the page's state (app.js): the open conversation, the running request, the model's name
let render = () => {};

/** Connects the list to the page: `pageState` is read and changed, `rerender` redraws the conversation. */
export function connect(pageState, rerender) {
  state = pageState;
  render = rerender;
}

/** The list of saved conversations matching the search box, the open one marked. */
export function listConversations() {
  const list = $("convlist");
  list.replaceChildren();
  for (const conv of store.search($("search").value)) {
    const li = el("li");
    li.dataset.id = conv.id;
    if (conv.id === state.conv.id) li.className = "current";
    const open = button(conv.title || "(untitled)", "Open conversation: " + (conv.title || "untitled"), () => {
      if (state.controller) return;
      state.conv = store.get(conv.id) ?? store.blank();
      render();
    });
    open.className = "open";
    const rename = button("✎", "Rename conversation", () => startRename(li, conv));
    rename.className = "rename";
    const exp = button("⤓", "Export conversation", () => download(store.exportOne(conv, state.model), conv.title));
    exp.className = "export";
    const del = button("✕", "Delete conversation", () => {
      if (!del.classList.contains("armed")) {
        del.classList.add("armed"); // a second click deletes: no dialog, no accident
        del.textContent = "Delete?";
        return;
      }
      store.remove(conv.id);
      if (conv.id === state.conv.id) state.conv = store.blank();
      render();
    });
    del.className = "delete";
    li.append(open, rename, exp, del);
    list.append(li);
  }
}

function startRename(li, conv) {
  const input = el("input");
  input.value = conv.title;
  input.setAttribute("aria-label", "New name");
  li.replaceChildren(input);
  input.focus();
  const done = (keep) => {
    const fresh = store.get(conv.id);
    if (keep && fresh && input.value.trim()) {
      fresh.title = input.value.trim();
      store.save(fresh);
      if (fresh.id === state.conv.id) state.conv.title = fresh.title;
    }
    listConversations();
  };
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter") done(true);
    if (e.key === "Escape") done(false);
  });
  input.addEventListener("blur", () => input.isConnected && done(true));
}

/** Saves `data` as a JSON file named after `name` (the browser's download). */
export function download(data, name) {
  const blob = new Blob([JSON.stringify(data, null, 2) + "\n"], { type: "application/json" });
  const a = el("a");
  a.href = URL.createObjectURL(blob);
  a.download = (name || "conversation").replace(/[^\w.-]+/g, "_").slice(0, 60) + ".json";
  a.click();
  URL.revokeObjectURL(a.href);
}
