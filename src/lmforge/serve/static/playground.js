// The lmforge playground: one prompt, one or two decoding settings side by side, streamed through the server's
// OpenAI-compatible API with logprobs, so that every generated token can show what the model considered.
"use strict";

const TOP = 10;  // alternatives asked for each token
const state = { model: null, mode: "completion", columns: [], running: [] };
const $ = (id) => document.getElementById(id);

function escapeToken(text) {
  return JSON.stringify(text).slice(1, -1);
}

function tint(p) {  // red (improbable) to green (probable)
  return `hsla(${Math.round(120 * p)}, 75%, 55%, ${0.18 + 0.3 * (1 - p)})`;
}

function makeColumn(index) {
  const node = $("column-template").content.firstElementChild.cloneNode(true);
  node.querySelector("legend").textContent = index === 0 ? "Setting A" : "Setting B";
  const settings = node.querySelector(".settings");
  if (index === 1) {  // a second setting that differs from the first out of the box
    settings.elements.strategy.value = "sample";
  }
  const column = { node, settings, output: node.querySelector(".output"), stats: node.querySelector(".stats"),
                   transcript: node.querySelector(".transcript"), messages: [] };
  settings.elements.strategy.addEventListener("change", () => showFields(column));
  showFields(column);
  $("columns").appendChild(node);
  return column;
}

function showFields(column) {
  const strategy = column.settings.elements.strategy.value;
  for (const label of column.settings.querySelectorAll("label[data-for]")) {
    label.classList.toggle("off", label.dataset.for !== strategy);
  }
}

function decodingFields(column) {
  const s = column.settings.elements, number = (name) => Number(s[name].value);
  const fields = { max_tokens: number("max_tokens") };
  if (number("no_repeat_ngram_size") > 0) fields.no_repeat_ngram_size = number("no_repeat_ngram_size");
  const strategy = s.strategy.value;
  if (strategy === "greedy") fields.temperature = 0;
  if (strategy === "sample") {
    fields.temperature = number("temperature");
    fields.top_p = number("top_p");
    fields.top_k = number("top_k");
    fields.seed = number("seed");
  }
  if (strategy === "beam") fields.num_beams = number("num_beams");
  return fields;
}

// ---- one request, streamed ---------------------------------------------------------------------------

async function* serverSentEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      if (event.startsWith("data: ")) yield event.slice(6);
    }
  }
}

class TokenView {
  // Appends tokens to a column's output as clickable spans, text taken from the completion's text offsets
  // (completion mode) or from each token's bytes (chat mode), so that characters split over tokens show whole.
  constructor(column) {
    this.column = column;
    this.bytes = new TextDecoder("utf-8");
    this.count = 0;
  }

  add(text, token, logprob, alternatives) {
    const span = document.createElement("span");
    span.className = "tok";
    // line breaks and whitespace-only tokens stay visible (and clickable)
    span.textContent = text.replaceAll("\n", "\u21b5\n") || "\u2205";
    if (/^[ \t]+$/.test(text)) span.textContent = text.replaceAll(" ", "\u00b7");
    const p = Math.exp(logprob);
    span.style.background = tint(p);
    span.title = `${escapeToken(token)}  p=${p.toFixed(3)}`;
    span.addEventListener("click", () => showDetails(span, token, logprob, alternatives));
    this.column.output.appendChild(span);
    this.count += 1;
  }

  completionPiece(choice) {  // {text, logprobs: {tokens, token_logprobs, top_logprobs, text_offset}}
    const lp = choice.logprobs;
    if (!lp || lp.tokens.length === 0) {
      if (choice.text) this.column.output.append(choice.text);
      return;
    }
    const base = lp.text_offset[0];
    for (let i = 0; i < lp.tokens.length; i++) {
      const start = lp.text_offset[i] - base, end = i + 1 < lp.tokens.length ? lp.text_offset[i + 1] - base : choice.text.length;
      const alternatives = Object.entries(lp.top_logprobs[i] || {}).map(([t, v]) => [t, v]);
      this.add(choice.text.slice(start, end), lp.tokens[i], lp.token_logprobs[i], alternatives);
    }
  }

  chatPiece(choice) {  // {delta: {content}, logprobs: {content: [{token, logprob, bytes, top_logprobs}]}}
    const entries = choice.logprobs ? choice.logprobs.content : [];
    if (entries.length === 0) {
      if (choice.delta.content) this.column.output.append(choice.delta.content);
      return;
    }
    for (const e of entries) {
      const text = this.bytes.decode(new Uint8Array(e.bytes), { stream: true });
      this.add(text, e.token, e.logprob, e.top_logprobs.map((t) => [t.token, t.logprob]));
    }
  }
}

async function run(column, controller) {
  const chat = state.mode === "chat";
  const body = { model: state.model, stream: true, stream_options: { include_usage: true }, ...decodingFields(column) };
  const view = new TokenView(column);
  if (chat) {
    const user = $("user").value;
    const system = $("system").value.trim();
    if (system && column.messages.length === 0) column.messages.push({ role: "system", content: system });
    column.messages.push({ role: "user", content: user });
    renderTranscript(column);
    Object.assign(body, { messages: column.messages, logprobs: true, top_logprobs: TOP });
  } else {
    Object.assign(body, { prompt: $("prompt").value, logprobs: TOP });
    const prompt = document.createElement("span");
    prompt.className = "prompt";
    prompt.textContent = $("prompt").value;
    column.output.appendChild(prompt);
  }
  const began = performance.now();
  let first = null, finish = null, usage = null, reply = "";
  column.stats.textContent = "waiting…";
  try {
    const response = await fetch(chat ? "/v1/chat/completions" : "/v1/completions", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
      signal: controller.signal });
    if (!response.ok) {
      const error = await response.json().catch(() => ({ error: { message: response.statusText } }));
      throw new Error(error.error.message);
    }
    for await (const data of serverSentEvents(response)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.usage) usage = chunk.usage;
      for (const choice of chunk.choices || []) {
        if (first === null && (choice.text || (choice.delta && choice.delta.content))) first = performance.now();
        if (chat) {
          reply += choice.delta.content || "";
          view.chatPiece(choice);
        } else {
          view.completionPiece(choice);
        }
        finish = choice.finish_reason || finish;
      }
      column.stats.textContent = `${view.count} tokens…`;
    }
    const seconds = (performance.now() - began) / 1000;
    const tokens = usage ? usage.completion_tokens : view.count;
    column.stats.textContent = `${tokens} tokens in ${seconds.toFixed(2)} s (${(tokens / seconds).toFixed(1)} tokens/s` +
      `${first ? `, first after ${((first - began) / 1000).toFixed(2)} s` : ""}), finish: ${finish}`;
    if (chat) column.messages.push({ role: "assistant", content: reply });
  } catch (error) {
    const line = document.createElement("div");
    line.className = "error";
    line.textContent = error.name === "AbortError" ? "stopped" : `error: ${error.message}`;
    column.output.appendChild(line);
    column.stats.textContent = "";
    if (chat) column.messages.pop();
  }
}

function renderTranscript(column) {
  column.transcript.replaceChildren(...column.messages.map((m) => {
    const turn = document.createElement("div");
    turn.className = "turn";
    const role = document.createElement("span");
    role.className = "role";
    role.textContent = m.role;
    turn.append(role, m.content);
    return turn;
  }));
  column.output.replaceChildren();
}

async function generate() {
  const columns = state.columns.filter((c) => !c.node.hidden);
  const controllers = columns.map(() => new AbortController());
  state.running = controllers;
  $("generate").disabled = true;
  $("stop").disabled = false;
  if (state.mode === "completion") columns.forEach((c) => c.output.replaceChildren());
  await Promise.all(columns.map((c, i) => run(c, controllers[i])));
  $("generate").disabled = false;
  $("stop").disabled = true;
}

// ---- the token details panel -------------------------------------------------------------------------

function showDetails(span, token, logprob, alternatives) {
  document.querySelectorAll(".tok.selected").forEach((s) => s.classList.remove("selected"));
  span.classList.add("selected");
  $("details").hidden = false;
  $("details-token").textContent = escapeToken(token);
  const p = Math.exp(logprob);
  const rank = alternatives.findIndex(([t]) => t === token);
  $("details-summary").textContent = `probability ${(100 * p).toFixed(2)} % (log-probability ${logprob.toFixed(3)}), ` +
    (rank >= 0 ? `rank ${rank + 1} of the model's choices` : `not among the top ${alternatives.length}`);
  const rows = alternatives.map(([t, lp]) => {
    const row = document.createElement("tr");
    if (t === token) row.className = "chosen";
    const name = document.createElement("td");
    const code = document.createElement("code");
    code.textContent = escapeToken(t);
    name.appendChild(code);
    const value = document.createElement("td");
    value.textContent = `${(100 * Math.exp(lp)).toFixed(2)} %`;
    const barCell = document.createElement("td");
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.width = `${Math.max(1, 100 * Math.exp(lp))}%`;
    barCell.appendChild(bar);
    row.append(name, value, barCell);
    return row;
  });
  $("details-table").tBodies[0].replaceChildren(...rows);
}

// ---- set-up --------------------------------------------------------------------------------------------

function setMode(mode) {
  state.mode = mode;
  for (const tab of document.querySelectorAll(".tab")) tab.classList.toggle("active", tab.dataset.mode === mode);
  $("completion-input").hidden = mode !== "completion";
  $("chat-input").hidden = mode !== "chat";
  clearAll();
}

function clearAll() {
  for (const c of state.columns) {
    c.messages = [];
    c.output.replaceChildren();
    c.transcript.replaceChildren();
    c.stats.textContent = "";
  }
  $("details").hidden = true;
}

async function init() {
  state.columns = [makeColumn(0), makeColumn(1)];
  const compare = () => {
    state.columns[1].node.hidden = !$("compare").checked;
    $("columns").classList.toggle("single", !$("compare").checked);
  };
  $("compare").addEventListener("change", compare);
  compare();
  for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => setMode(tab.dataset.mode));
  $("generate").addEventListener("click", generate);
  $("stop").addEventListener("click", () => state.running.forEach((c) => c.abort()));
  $("clear").addEventListener("click", clearAll);
  try {
    const models = await (await fetch("/v1/models")).json();
    const card = models.data[0];
    state.model = card.id;
    $("model-info").textContent = `model ${card.id} · context ${card.context_length} tokens · chat template: ` +
      `${card.chat_template}${card.continuous_batching ? " · continuous batching" : ""}`;
  } catch (error) {
    $("model-info").textContent = `cannot reach the server: ${error.message}`;
  }
  document.body.dataset.ready = "true";
}

init();
