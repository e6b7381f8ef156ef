// Reading a streamed reply: Server-Sent Events from /v1/chat/completions, and the speed line under a reply.

/** The JSON chunks of a streamed response, one per `data:` line ([DONE] left out). */
export async function* events(resp) {
  const reader = resp.body.getReader(), decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) { // one SSE event per blank line
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (line.startsWith("data: ") && line !== "data: [DONE]") yield JSON.parse(line.slice(6));
      }
    }
  }
}

/** The speed line: prompt and generation rates (llama-server's timings) and the time to the first token. */
export function speedLine(t, ttft) {
  const r = (x) => (x || 0).toFixed(1);
  return `prompt ${t.prompt_n} tokens at ${r(t.prompt_per_second)} tokens/s · ` +
         `${t.predicted_n} generated at ${r(t.predicted_per_second)} tokens/s · ` +
         `first token after ${ttft.toFixed(2)} s` + (t.cache_n ? ` · ${t.cache_n} cached` : "");
}
