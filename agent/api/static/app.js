// RecBridge's page: chat, profiles and side-by-side comparison over the public HTTP API.
// Plain JavaScript, no build step: everything here is what any client of the API can do.
"use strict";

const KEY_STORE = "recbridge.apiKey";
const state = {
  key: localStorage.getItem(KEY_STORE) || "",
  models: [], // GET /v1/models cards
  domains: [],
  conversation: [], // the chat's messages, sent whole each turn (the API is stateless)
};

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// ------------------------------------------------------------------ the API
class ApiError extends Error {
  constructor(status, error, requestId) {
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.error = error; // OpenAI's shape: message, type, param, code
    this.requestId = requestId;
  }
}

async function apiError(resp) {
  const rid = resp.headers.get("x-request-id");
  let error;
  try {
    error = (await resp.json()).error;
  } catch (_) {
    error = null;
  }
  if (!error) error = { message: `HTTP ${resp.status} ${resp.statusText}`, type: "http_error" };
  return new ApiError(resp.status, error, rid);
}

async function api(path, { method = "GET", body = undefined, stream = false } = {}) {
  const headers = { Accept: stream ? "text/event-stream" : "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (state.key) headers.Authorization = `Bearer ${state.key}`;
  const started = performance.now();
  let resp;
  try {
    resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (exc) {
    throw new ApiError(0, { message: `the server did not answer (${exc.message})`, type: "network_error" }, null);
  }
  if (!resp.ok) {
    const err = await apiError(resp);
    if (resp.status === 401) askForKey(err.error.message);
    throw err;
  }
  if (stream) return { resp, started };
  const data = await resp.json();
  return { data, ms: performance.now() - started, requestId: resp.headers.get("x-request-id") };
}

// Server-sent events of /v1/chat/completions with stream=true: one parsed chunk per event.
async function* sseChunks(resp) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const payload = line.slice(6);
        if (payload === "[DONE]") return;
        yield JSON.parse(payload);
      }
    }
  }
}

// ------------------------------------------------------------------ errors and the key
function showError(err) {
  const box = $("#error");
  box.replaceChildren();
  if (!err) {
    box.hidden = true;
    return;
  }
  const e = err.error || { message: String(err.message || err) };
  const head = [err.status ? `${err.status}` : null, e.type, e.code].filter(Boolean).join(" · ");
  box.append(
    el("strong", { text: head || "error" }),
    " ",
    el("span", { "data-testid": "error-message", text: e.message }),
    e.param ? el("span", { class: "param", "data-testid": "error-param", text: ` (field: ${e.param})` }) : null,
    err.requestId ? el("span", { class: "muted", text: ` request id ${err.requestId}` }) : null,
  );
  box.hidden = false;
}

function askForKey(message) {
  $("#key-state").textContent = message || "this server needs an API key";
  $("#key-form").classList.add("wanted");
  $("#api-key").focus();
}

async function useKey(event) {
  event.preventDefault();
  state.key = $("#api-key").value.trim();
  if (state.key) localStorage.setItem(KEY_STORE, state.key);
  else localStorage.removeItem(KEY_STORE);
  $("#api-key").value = "";
  $("#key-form").classList.remove("wanted");
  await loadServer();
}

// ------------------------------------------------------------------ the server's menus
function fillSelect(select, values, labels = values, keep = true) {
  const previous = select.value;
  select.replaceChildren(...values.map((v, i) => el("option", { value: v, text: labels[i] })));
  if (keep && values.includes(previous)) select.value = previous;
}

function card(name) {
  return state.models.find((m) => m.id === name);
}

function fillVariants(side) {
  const model = card($(".side-pipeline", side).value);
  const templates = (model && model.templates) || [];
  const adapters = (model && model.adapters) || [];
  fillSelect($(".side-template", side), ["", ...templates], ["default", ...templates]);
  fillSelect($(".side-adapter", side), ["", ...adapters], ["default", ...adapters]);
  $(".side-template", side).disabled = templates.length === 0;
  $(".side-adapter", side).disabled = adapters.length === 0;
}

async function loadServer() {
  showError(null);
  try {
    const [models, users] = await Promise.all([api("/v1/models"), api("/v1/users?limit=200")]);
    state.models = models.data.data;
    state.domains = users.data.domains;
    const names = state.models.map((m) => m.id);
    fillSelect($("#chat-pipeline"), names);
    $$(".side").forEach((side, i) => {
      const select = $(".side-pipeline", side);
      fillSelect(select, names);
      if (!select.dataset.touched && names.length > 1) select.value = names[Math.min(i, names.length - 1)];
      fillVariants(side);
    });
    for (const id of ["#chat-domain", "#compare-domain"]) {
      fillSelect($(id), ["", ...state.domains], ["auto", ...state.domains]);
    }
    $("#user-list").replaceChildren(
      ...users.data.data.map((u) =>
        el("option", { value: u.user_id, text: `${u.history_len} items: ${u.domains.join(", ")}` }),
      ),
    );
    $("#followup-domains").replaceChildren(
      ...state.domains.map((d) =>
        el("button", {
          type: "button",
          class: "small",
          "data-testid": `switch-${d}`,
          text: `switch to ${d}`,
          onclick: () => chatTurn(JSON.stringify({ domain: d })),
        }),
      ),
    );
    $("#key-state").textContent = state.key ? "key in use" : "";
    document.body.dataset.loaded = "1";
    document.body.dataset.loadedMs = performance.now().toFixed(1); // for benchmarks.bench_page
    $("#server").textContent = `${names.length} pipelines · domains ${state.domains.join(", ")}`;
  } catch (err) {
    showError(err);
  }
}

// ------------------------------------------------------------------ who: a user or a history
function mountWho() {
  $$(".who-slot").forEach((slot, i) => {
    const who = $("#who-template").content.cloneNode(true);
    $$("input[type=radio]", who).forEach((r) => (r.name = `who-${i}`));
    slot.append(who);
    const box = slot.querySelector(".who");
    const pick = (mode) => ($$("input[type=radio]", box).find((r) => r.value === mode).checked = true);
    $(".who-user", box).addEventListener("input", () => pick("user"));
    $(".who-history", box).addEventListener("input", () => pick("history"));
  });
}

function who(form) {
  const box = $(".who", form);
  const mode = $$("input[type=radio]", box).find((r) => r.checked).value;
  if (mode === "user") return { user: $(".who-user", box).value.trim() };
  const lines = $(".who-history", box).value.split("\n").map((s) => s.trim()).filter(Boolean);
  return { history: lines };
}

// ------------------------------------------------------------------ items
function moved(retrievalRank, finalRank) {
  const delta = retrievalRank - finalRank;
  if (delta > 0) return el("span", { class: "up", title: "moved up by the reranker", text: `▲${delta}` });
  if (delta < 0) return el("span", { class: "down", title: "moved down by the reranker", text: `▼${-delta}` });
  return el("span", { class: "same", title: "retrieval order", text: "=" });
}

function itemCard(item, rank, extra = {}) {
  return el(
    "li",
    { class: "item", "data-testid": "item", "data-item-id": item.item_id },
    el("span", { class: "rank", "data-testid": "final-rank", text: `${rank}` }),
    el(
      "div",
      { class: "body" },
      el("div", { class: "title", "data-testid": "item-title", title: item.title, text: item.display_title || item.title }),
      el(
        "div",
        { class: "meta" },
        el("code", { text: item.item_id }),
        ` ${item.domain} · score `,
        el("span", { "data-testid": "item-score", text: Number(item.score).toFixed(3) }),
        " · retrieval #",
        el("span", { "data-testid": "retrieval-rank", text: `${item.retrieval_rank}` }),
        " ",
        moved(item.retrieval_rank, rank),
        extra.badge || null,
      ),
      el("div", { class: "reason", "data-testid": "item-reason", text: item.reason }),
      extra.actions || null,
    ),
  );
}

function resolvedList(resolved) {
  if (!resolved || !resolved.length) return null;
  return el(
    "ul",
    { class: "resolved", "data-testid": "resolved" },
    resolved.map((r) =>
      el(
        "li",
        {},
        `"${r.ref}" → `,
        el("code", { text: r.item_id }),
        ` ${r.title} (${r.how}${r.similarity != null ? ` ${Number(r.similarity).toFixed(2)}` : ""})`,
      ),
    ),
  );
}

function costLine(usage, seconds, ms) {
  const parts = [];
  if (ms !== undefined) parts.push(`${(ms / 1000).toFixed(2)} s`);
  if (seconds) {
    const stages = Object.entries(seconds).map(([k, v]) => `${k} ${Number(v).toFixed(2)} s`);
    if (stages.length) parts.push(stages.join(", "));
  }
  if (usage) {
    const total = usage.total_tokens ?? (usage.prompt_tokens || 0) + (usage.completion_tokens || 0);
    parts.push(`${total} tokens, ${usage.llm_calls || 0} LLM calls`);
  }
  return parts.join(" · ");
}

function notes(info) {
  const out = [];
  if (info.fallback === "llm_unavailable") out.push("The LLM was unavailable: this is the retriever's order.");
  else if (info.fallback) out.push("The LLM's answer was unusable: this is the retriever's order.");
  if (info.exclude_unmatched && info.exclude_unmatched.length)
    out.push(`Not in the list, nothing excluded: ${info.exclude_unmatched.join(", ")}`);
  if (info.reason) out.push(`The reranker's reason: ${info.reason}`);
  return out.map((t) => el("div", { class: "note", "data-testid": "answer-note", text: t }));
}

// ------------------------------------------------------------------ chat
function firstMessage(form) {
  const body = who(form);
  const message = { ...body, top_k: Number($("#chat-topk").value) || 10 };
  if ($("#chat-domain").value) message.domain = $("#chat-domain").value;
  if (!body.user && !(body.history && body.history.length)) throw new Error("give a user id or a history");
  return JSON.stringify(message);
}

async function chatTurn(content) {
  showError(null);
  const log = $("#chat-log");
  log.append(el("div", { class: "turn user", "data-testid": "turn-user" }, el("pre", { text: content })));
  const answer = el("div", { class: "turn assistant", "data-testid": "turn-assistant" });
  const status = el("div", { class: "muted", "data-testid": "turn-status", text: "ranking…" });
  const list = el("ol", { class: "items", "data-testid": "items" });
  answer.append(status, list);
  log.append(answer);
  answer.scrollIntoView({ block: "end" });
  const messages = [...state.conversation, { role: "user", content }];
  let text = "";
  let firstItemMs = null;
  try {
    const { resp, started } = await api("/v1/chat/completions", {
      method: "POST",
      stream: true,
      body: {
        model: $("#chat-pipeline").value,
        messages,
        stream: true,
        stream_options: { include_usage: true },
      },
    });
    for await (const chunk of sseChunks(resp)) {
      const delta = (chunk.choices && chunk.choices[0] && chunk.choices[0].delta) || {};
      text += delta.content || "";
      const rb = chunk.recbridge;
      if (!rb) continue;
      if (rb.type === "meta") {
        status.textContent = `${rb.pipeline} · ${rb.domain} for ${rb.user_id} (${rb.history.length} history items)`;
        const how = resolvedList(rb.resolved);
        if (how) answer.insertBefore(how, list);
      } else if (rb.type === "item") {
        if (firstItemMs === null) firstItemMs = performance.now() - started;
        list.append(itemCard(rb.item, rb.rank, { actions: excludeButton(rb.item) }));
      } else if (rb.type === "done") {
        answer.append(...notes(rb));
        answer.append(
          el("div", { class: "cost", "data-testid": "turn-cost", text: costLine(rb.usage, rb.seconds, performance.now() - started) }),
        );
        answer.dataset.firstItemMs = firstItemMs === null ? "" : firstItemMs.toFixed(1);
        if (!list.children.length) list.append(el("li", { text: "No items left to recommend." }));
      }
    }
    state.conversation = [...messages, { role: "assistant", content: text }];
    $("#followup-form").hidden = false;
    answer.classList.add("done");
  } catch (err) {
    answer.remove();
    log.lastChild && log.lastChild.remove(); // the user turn that failed
    showError(err);
  }
}

function excludeButton(item) {
  return el("button", {
    type: "button",
    class: "small",
    "data-testid": "exclude",
    text: "exclude",
    title: "ask again without this item",
    onclick: () => chatTurn(JSON.stringify({ exclude: [item.item_id] })),
  });
}

function resetChat() {
  state.conversation = [];
  $("#chat-log").replaceChildren();
  $("#followup-form").hidden = true;
  showError(null);
}

// ------------------------------------------------------------------ profile
function historyList(items) {
  return el(
    "ol",
    { class: "history-items" },
    items.map((it) =>
      el(
        "li",
        { id: `h-${it.item_id}`, "data-testid": "history-item", "data-item-id": it.item_id },
        el("code", { text: it.item_id }),
        ` ${it.title} `,
        el("span", { class: "muted", text: it.domain }),
      ),
    ),
  );
}

function evidenceLinks(ids, titles) {
  if (!ids || !ids.length) return null;
  return el(
    "div",
    { class: "evidence" },
    "evidence: ",
    ids.map((id) =>
      el("a", {
        href: `#h-${id}`,
        class: "evidence-link",
        "data-testid": "evidence-link",
        "data-item-id": id,
        text: titles[id] ? titles[id].slice(0, 60) : id,
        onclick: (event) => {
          event.preventDefault();
          highlight(id);
        },
      }),
    ),
  );
}

function highlight(id) {
  $$(".history-items li").forEach((li) => li.classList.toggle("hl", li.dataset.itemId === id));
  const target = document.getElementById(`h-${id}`);
  if (target) target.scrollIntoView({ block: "nearest" });
}

function phrases(label, values) {
  if (!values || !values.length) return null;
  return el("div", { class: "phrases" }, `${label}: `, values.map((v) => el("span", { class: "chip", text: v })));
}

function profileBlock(profile, titles, testid) {
  return el(
    "div",
    { class: "profile", "data-testid": testid },
    el("p", { class: "summary", text: profile.summary }),
    phrases("likes", profile.preferences),
    phrases("dislikes", profile.dislikes),
    phrases("cross-domain themes", profile.cross_domain_themes),
    evidenceLinks(profile.evidence_item_ids, titles),
  );
}

function callLine(call) {
  const flags = [call.fallback ? "fallback" : null, call.repaired ? "repaired" : null, call.retried ? "retried" : null].filter(Boolean);
  return `${call.calls} LLM calls, ${call.prompt_tokens + call.completion_tokens} tokens, ${Number(call.latency_s).toFixed(1)} s${flags.length ? ` (${flags.join(", ")})` : ""}`;
}

function renderTree(tree, titles) {
  const root = $("#profile-tree");
  root.replaceChildren(
    el("h3", { text: `Cross-domain profile of ${tree.user_id}` }),
    el("div", { class: "muted", text: `${tree.mode} profile by ${tree.model}${tree.adapter ? ` + ${tree.adapter}` : ""}, ${Number(tree.seconds).toFixed(1)} s to make` }),
    profileBlock(tree.profile, titles, "cross-profile"),
    el("div", { class: "muted", text: callLine(tree.call) }),
    ...tree.domains.map((dom) =>
      el(
        "details",
        { open: true, class: "domain", "data-testid": "domain-profile", "data-domain": dom.domain },
        el("summary", { text: `${dom.domain}: ${dom.history_len} items, grouped by ${dom.grouping}` }),
        profileBlock(dom.profile, titles, "domain-summary"),
        el("div", { class: "muted", text: callLine(dom.call) }),
        el(
          "ul",
          { class: "groups" },
          dom.groups.map((g) =>
            el(
              "li",
              { "data-testid": "group" },
              el("strong", { text: g.key }),
              `: ${g.text} `,
              evidenceLinks(g.item_ids, titles),
            ),
          ),
        ),
      ),
    ),
  );
}

async function showProfile(event) {
  event.preventDefault();
  showError(null);
  const form = $("#profile-form");
  const notice = $("#profile-notice");
  $("#profile-tree").replaceChildren();
  $("#profile-history").replaceChildren();
  try {
    const body = who(form);
    let items;
    let profiled;
    if (body.user) {
      const { data } = await api(`/v1/users/${encodeURIComponent(body.user)}`);
      items = data.history;
      profiled = data.profiled;
    } else {
      if (!body.history.length) throw new Error("give a user id or a history");
      const { data } = await api("/v1/items/resolve", { method: "POST", body: { refs: body.history } });
      items = data.items;
      profiled = data.profiled;
      body.history = items.map((it) => it.item_id);
      const how = resolvedList(data.resolved);
      if (how) $("#profile-history").append(how);
    }
    $("#profile-history").append(el("h3", { text: "History (oldest first)" }), historyList(items));
    const titles = Object.fromEntries(items.map((it) => [it.item_id, it.title]));
    notice.textContent = profiled
      ? "Reading the cached profile…"
      : "Generating the profile with the LLM: one call per group and domain, then the cross-domain merge. On a CPU this takes about a minute.";
    notice.dataset.state = profiled ? "cached" : "generating";
    notice.hidden = false;
    const started = performance.now();
    const { data: tree } = await api("/v1/profiles", { method: "POST", body });
    notice.hidden = true;
    renderTree(tree, titles);
    $("#profile-tree").append(el("div", { class: "cost", text: `answered in ${((performance.now() - started) / 1000).toFixed(1)} s` }));
  } catch (err) {
    notice.hidden = true;
    showError(err);
  }
}

// ------------------------------------------------------------------ compare
function sideRequest(side, base) {
  const body = { ...base, model: $(".side-pipeline", side).value };
  const template = $(".side-template", side).value;
  const adapter = $(".side-adapter", side).value;
  if (template) body.template = template;
  if (adapter) body.adapter = adapter;
  return body;
}

function renderSide(column, label, result, other) {
  const { data, ms } = result;
  const otherRank = new Map(other ? other.data.items.map((it, i) => [it.item_id, i + 1]) : []);
  const variant = [data.template, data.adapter].filter(Boolean).join(" + ");
  column.replaceChildren(
    el("h3", { text: `${label}: ${data.model}${variant ? ` (${variant})` : ""}` }),
    el("div", { class: "cost", "data-testid": "side-cost", text: costLine(data.usage, data.seconds, ms) }),
    ...notes(data),
    el(
      "ol",
      { class: "items" },
      data.items.map((item, i) => {
        const there = otherRank.get(item.item_id);
        let badge;
        if (there === undefined) badge = el("span", { class: "only", "data-testid": "only-here", text: " only here" });
        else if (there !== i + 1)
          badge = el("span", { class: "moved", "data-testid": "moved", text: ` #${there} on the other side` });
        return itemCard(item, i + 1, { badge });
      }),
    ),
  );
}

async function runCompare(event) {
  event.preventDefault();
  showError(null);
  const form = $("#compare-form");
  const left = $("#compare-left");
  const right = $("#compare-right");
  try {
    const base = who(form);
    if (!base.user && !(base.history && base.history.length)) throw new Error("give a user id or a history");
    base.top_k = Number($("#compare-topk").value) || 10;
    if ($("#compare-domain").value) base.domain = $("#compare-domain").value;
    const sides = $$(".side", form);
    left.replaceChildren(el("div", { class: "muted", text: "ranking…" }));
    right.replaceChildren(el("div", { class: "muted", text: "ranking…" }));
    // One after the other: on a small server two LLM pipelines at once slow each other,
    // and each side's latency should be its own.
    const a = await api("/v1/recommendations", { method: "POST", body: sideRequest(sides[0], base) });
    const b = await api("/v1/recommendations", { method: "POST", body: sideRequest(sides[1], base) });
    renderSide(left, "Left", a, b);
    renderSide(right, "Right", b, a);
  } catch (err) {
    left.replaceChildren();
    right.replaceChildren();
    showError(err);
  }
}

// ------------------------------------------------------------------ wiring
function showTab(name) {
  $$(".tab").forEach((t) => t.classList.toggle("active", t.dataset.tab === name));
  $$(".panel").forEach((p) => (p.hidden = p.id !== `tab-${name}`));
}

function wire() {
  mountWho();
  $$(".tab").forEach((t) => t.addEventListener("click", () => showTab(t.dataset.tab)));
  $("#key-form").addEventListener("submit", useKey);
  $("#chat-form").addEventListener("submit", (event) => {
    event.preventDefault();
    resetChat();
    try {
      chatTurn(firstMessage($("#chat-form")));
    } catch (err) {
      showError(err);
    }
  });
  $("#chat-reset").addEventListener("click", resetChat);
  $("#followup-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("#followup").value.trim();
    if (!text) return;
    $("#followup").value = "";
    chatTurn(text);
  });
  $("#profile-form").addEventListener("submit", showProfile);
  $("#compare-form").addEventListener("submit", runCompare);
  $$(".side").forEach((side) =>
    $(".side-pipeline", side).addEventListener("change", (e) => {
      e.target.dataset.touched = "1";
      fillVariants(side);
    }),
  );
  document.body.dataset.ready = "1";
}

wire();
loadServer();
