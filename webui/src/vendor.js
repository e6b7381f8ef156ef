// The libraries the chat page loads up front (static/vendor/vendor.js, an ES module).
export { default as MarkdownIt } from "markdown-it";
export { default as DOMPurify } from "dompurify";
export { default as hljs } from "highlight.js/lib/common";
