// KaTeX, loaded by the page only when a message holds math (static/vendor/katex.js, an ES module).
export { default } from "katex";
