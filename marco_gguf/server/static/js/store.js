// Conversations kept in this browser's localStorage, one key per conversation plus an index.
// localStorage rather than IndexedDB: conversations are small text (a full 32k-token one is under 1 MiB, the
// quota is 5-10 MiB per origin), reads are synchronous so the list and search need no async plumbing, and it
// survives reloads and restarts the same way. A full quota is reported, never silently dropped.
const PREFIX = "marco-gguf-conv:";
const INDEX = "marco-gguf-conversations";

const newId = () => Date.now().toString(36) + Math.random().toString(36).slice(2, 8);

/** A new, empty conversation (not saved until it has a message). */
export function blank() {
  const now = Date.now();
  return { id: newId(), title: "", created: now, updated: now, system: "", messages: [] };
}

function index() {
  try {
    const ids = JSON.parse(localStorage.getItem(INDEX) ?? "[]");
    return Array.isArray(ids) ? ids : [];
  } catch {
    return [];
  }
}

export function get(id) {
  try {
    return JSON.parse(localStorage.getItem(PREFIX + id));
  } catch {
    return null;
  }
}

/** Every saved conversation, the most recently changed first. */
export function all() {
  return index().map(get).filter(Boolean).sort((a, b) => b.updated - a.updated);
}

/** Saves `conv` (throws "the browser's storage for this page is full ..." when the quota is reached). */
export function save(conv) {
  conv.updated = Date.now();
  if (!conv.title) conv.title = titleOf(conv);
  try {
    localStorage.setItem(PREFIX + conv.id, JSON.stringify(conv));
    const ids = index();
    if (!ids.includes(conv.id)) localStorage.setItem(INDEX, JSON.stringify([...ids, conv.id]));
  } catch (e) {
    throw new Error(`the browser's storage for this page is full (${e.name}): export and delete old conversations`);
  }
}

export function remove(id) {
  localStorage.removeItem(PREFIX + id);
  localStorage.setItem(INDEX, JSON.stringify(index().filter((x) => x !== id)));
}

function titleOf(conv) {
  const first = conv.messages.find((m) => m.role === "user");
  return first ? first.content.replace(/\s+/g, " ").trim().slice(0, 60) : "";
}

/** Conversations whose title or any message contains `query` (case-insensitive). */
export function search(query) {
  const q = query.trim().toLowerCase();
  if (!q) return all();
  return all().filter((c) => (c.title + "\n" + c.system + "\n" + c.messages.map((m) => m.content).join("\n"))
    .toLowerCase().includes(q));
}

/** The JSON `marco-gguf chat`'s /save writes and its /load reads: {"model", "messages": [{role, content}]}. */
export function exportOne(conv, model) {
  const messages = conv.messages.map((m) => ({ role: m.role, content: m.content }));
  if (conv.system) messages.unshift({ role: "system", content: conv.system });
  return { model, title: conv.title, messages };
}

const ROLES = ["system", "user", "assistant"];

/** Conversations from a file's text: one saved conversation, or a list of them (what "Export all" writes).
 *  Throws a one-line message naming what is wrong. */
export function parseImport(text) {
  let data;
  try {
    data = JSON.parse(text);
  } catch (e) {
    throw new Error(`not JSON (${e.message})`);
  }
  const items = Array.isArray(data) && data.every((x) => x && typeof x === "object" && !Array.isArray(x)) ? data : [data];
  return items.map((item, n) => {
    const messages = item && item.messages;
    const where = items.length > 1 ? `conversation ${n + 1}: ` : "";
    if (!Array.isArray(messages)) throw new Error(`${where}not a saved conversation: expected {"messages": [...]}`);
    messages.forEach((m, i) => {
      if (!(m && ROLES.includes(m.role) && typeof m.content === "string") || (m.role === "system" && i > 0)) {
        throw new Error(`${where}message ${i + 1} is not {"role": "user"|"assistant"|"system" (first only), "content": "..."}`);
      }
    });
    const conv = blank();
    conv.system = messages[0]?.role === "system" ? messages[0].content : "";
    conv.messages = messages.filter((m) => m.role !== "system").map((m) => ({ role: m.role, content: m.content }));
    conv.title = typeof item.title === "string" ? item.title.slice(0, 200) : "";
    return conv;
  });
}
