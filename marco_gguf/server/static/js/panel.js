// The side panel's model facts (from /props) and the theme (system, light or dark; kept in localStorage).
const $ = (id) => document.getElementById(id);

function el(tag, text) {
  const node = document.createElement(tag);
  node.textContent = text;
  return node;
}

/** The model panel: name, file, size, quantization per group, experts, active parameters, bytes per token. */
export function showFacts(props) {
  const m = props.model;
  const gib = (n) => (n / 2 ** 30).toFixed(2) + " GiB";
  const rows = [
    ["name", m.name ?? m.id], ["file", m.file], ["size", gib(m.size)], ["type", m.file_type ?? "?"],
    ["parameters", (m.parameters / 1e9).toFixed(2) + " B"],
    ["active", (m.active_parameters / 1e9).toFixed(2) + " B per token"],
    ["experts", `${m.experts.used} of ${m.experts.count} per token`],
    ["read per token", gib(m.bytes_per_token)], ["context", `${props.default_generation_settings.n_ctx} tokens`],
    ["slots", String(props.total_slots)],
  ];
  for (const [group, g] of Object.entries(m.groups)) {
    if (g.tensors) rows.push([group, `${g.types.join(", ")} · ${g.bits_per_weight.toFixed(2)} bits/weight`]);
  }
  $("facts").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", k), el("dd", v)]));
  $("template").textContent = props.chat_template;
}

export const THEMES = ["system", "light", "dark"];

export function setTheme(theme) {
  if (theme === "system") delete document.documentElement.dataset.theme;
  else document.documentElement.dataset.theme = theme;
  localStorage.setItem("marco-gguf-theme", theme);
  $("theme").setAttribute("aria-label", `Theme: ${theme === "system" ? "follows the system" : theme}`);
  $("theme").textContent = { system: "◐", light: "☀", dark: "☾" }[theme];
}
