// The sktarbucks operator console. It holds no data of its own: it asks for
// the admin token once (kept in sessionStorage, this tab only) and calls the
// admin JSON routes with it, refreshing every 2 s. Everything it shows is
// set with textContent, never parsed as HTML (dead-letter errors and
// payloads come from guests).
"use strict";

const TOKEN_KEY = "sktarbucks-admin-token";
const REFRESH_MS = 2000;

let token = sessionStorage.getItem(TOKEN_KEY);
let refreshSeq = 0;
let timer = null;

const $ = (id) => document.getElementById(id);

/** An element with attributes (`text` = textContent, `data` = dataset). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null) continue;
    if (name === "text") node.textContent = String(value);
    else if (name === "data") Object.assign(node.dataset, value);
    else node.setAttribute(name, String(value));
  }
  node.append(...children);
  return node;
}

const short = (digest) => (digest ? String(digest).slice(0, 12) : "-");

function ago(ms) {
  if (!ms) return "-";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  return new Date(ms).toLocaleString();
}

class ApiError extends Error {
  constructor(status, kind, message) {
    super(message);
    this.status = status;
    this.kind = kind;
  }
}

/** Call an admin route; the parsed JSON answer, or an ApiError. */
async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${token}` };
  if (body !== undefined) headers["Content-Type"] = "application/wasm";
  let response;
  try {
    response = await fetch(path, { method, headers, body, cache: "no-store" });
  } catch (e) {
    throw new ApiError(0, "unreachable", `cannot reach the admin API (${e.message})`);
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const kind = (data && data.error) || `http_${response.status}`;
    const message = (data && data.message) || text || response.statusText;
    throw new ApiError(response.status, kind, message);
  }
  return data;
}

function say(kind, text) {
  const box = $("message");
  box.dataset.kind = kind;
  box.textContent = text;
  box.hidden = false;
}

/**
 * Make `tbody`'s rows match `items`, in order, keyed by `keyOf(item)`: a
 * row that stays is updated in place (its buttons are not replaced under
 * the pointer), new ones are made by `create`, gone ones removed.
 */
function syncRows(tbody, items, keyOf, create, update) {
  const existing = new Map();
  for (const row of tbody.rows) existing.set(row.dataset.key, row);
  let previous = null;
  for (const item of items) {
    const key = String(keyOf(item));
    let row = existing.get(key);
    if (row) existing.delete(key);
    else {
      row = create(item);
      row.dataset.key = key;
    }
    update(row, item);
    const wanted = previous ? previous.nextSibling : tbody.firstChild;
    if (row !== wanted) tbody.insertBefore(row, wanted);
    previous = row;
  }
  for (const row of existing.values()) row.remove();
}

/** Replace the content of `cell` with `text` only when it changed. */
function setText(cell, text) {
  const value = String(text);
  if (cell.textContent !== value) cell.textContent = value;
}

// ---- components and lag -------------------------------------------------

function renderComponents(components) {
  syncRows(
    $("components").tBodies[0],
    components,
    (c) => c.name,
    (c) => {
      const rollback = el("button", {
        type: "button",
        id: `rollback-${c.name}`,
        data: { action: "rollback", rollback: c.name },
        text: "Rollback",
      });
      rollback.addEventListener("click", () => rollbackComponent(c.name, rollback));
      return el(
        "tr",
        { data: { component: c.name } },
        el("td", {}, el("strong", { text: c.name }), el("div", { class: "diverged" })),
        el("td", { class: "digest" }),
        el("td", { class: "source" }),
        el("td", { class: "routes" }),
        el("td", { class: "num in-flight" }),
        el("td", {}, el("span", { class: "badge breaker" })),
        el("td", { class: "num lag" }),
        el("td", {}, rollback),
      );
    },
    (row, c) => {
      row.dataset.digest = c.digest;
      const [name, digest, source, routes, inFlight, breakerCell, lag, actions] = row.cells;
      setText(name.querySelector(".diverged"), c.diverged || "");
      setText(digest, short(c.digest));
      digest.title = c.digest;
      setText(source, c.source || "-");
      source.title = c.activatedMs ? `active since ${new Date(c.activatedMs).toLocaleString()}` : "";
      setText(routes, (c.routes || []).join(" ") || "-");
      setText(inFlight, c.inFlight ?? "-");
      const breaker = breakerCell.firstChild;
      setText(breaker, c.breaker || "-");
      breaker.dataset.state = c.breaker || "";
      row.dataset.breaker = c.breaker || "";
      setText(lag, c.lag ?? "-");
      const button = actions.firstChild;
      const target = (c.rollback || [])[0];
      if (!button.dataset.busy) button.disabled = !target;
      button.title = target ? `back to ${short(target)}` : "no previous version to roll back to";
      button.dataset.target = target || "";
    },
  );
  renderDeployChoices(components.map((c) => c.name));
}

function renderLag(components) {
  const subscribers = components.filter((c) => (c.subscriptions || []).length > 0);
  $("no-subscribers").hidden = subscribers.length > 0;
  syncRows(
    $("lag").tBodies[0],
    subscribers,
    (c) => c.name,
    (c) => el("tr", { data: { lagSubscriber: c.name } }, el("td", { text: c.name }), el("td"), el("td", { class: "num" })),
    (row, c) => {
      const lag = c.lag ?? 0;
      row.dataset.lag = String(lag);
      setText(row.cells[1], c.subscriptions.join(", "));
      setText(row.cells[2], lag);
      row.cells[2].classList.toggle("lagging", lag > 0);
    },
  );
}

function renderDeployChoices(names) {
  const select = $("deploy-component");
  const current = [...select.options].map((o) => o.value);
  if (current.join("\n") === names.join("\n")) return;
  const chosen = select.value;
  select.replaceChildren(...names.map((n) => el("option", { value: n, text: n })));
  if (names.includes(chosen)) select.value = chosen;
}

// ---- dead letters -------------------------------------------------------

function renderDeadLetters(letters) {
  const count = $("dead-letter-count");
  setText(count, letters.length);
  count.classList.toggle("some", letters.length > 0);
  $("no-dead-letters").hidden = letters.length > 0;
  syncRows(
    $("dead-letters").tBodies[0],
    letters,
    (d) => d.id,
    (d) => {
      const replay = el("button", {
        type: "button",
        id: `replay-${d.id}`,
        data: { action: "replay", deadLetter: d.id },
        text: "Replay",
      });
      replay.addEventListener("click", () => replayDeadLetter(d.id, replay));
      return el(
        "tr",
        { data: { deadLetterId: d.id } },
        el("td", { class: "digest", text: d.id }),
        el("td", { text: d.subscriber }),
        el("td", { text: d.topic }),
        el("td", { text: d.key }),
        el("td", { class: "num" }),
        el("td", { class: "error-text" }),
        el("td"),
        el("td", {}, replay),
      );
    },
    (row, d) => {
      setText(row.cells[4], d.attempts);
      setText(row.cells[5], d.error);
      const origin = d.requestId ? `; request ${d.requestId}` : "";
      row.cells[5].title = `event ${d.eventId} from ${d.source}${origin}; payload: ${d.payload}`;
      setText(row.cells[6], ago(d.deadAtMs));
    },
  );
}

// ---- swaps --------------------------------------------------------------

function renderSwaps(swaps) {
  $("no-swaps").hidden = swaps.length > 0;
  syncRows(
    $("swaps").tBodies[0],
    swaps,
    (s) => `${s.atMs}-${s.component}-${s.digest}-${s.source}`,
    (s) =>
      el(
        "tr",
        { data: { swapComponent: s.component, swapSource: s.source, swapDigest: s.digest } },
        el("td"),
        el("td", { text: s.component }),
        el("td", { class: "digest", text: short(s.previous), title: s.previous }),
        el("td", { class: "digest", text: short(s.digest), title: s.digest }),
        el("td", { text: s.source }),
      ),
    (row, s) => setText(row.cells[0], ago(s.atMs)),
  );
}

// ---- actions ------------------------------------------------------------

async function act(button, work) {
  button.disabled = true;
  button.dataset.busy = "1";
  try {
    await work();
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return signOut("The admin token was refused; enter it again.");
    say("error", e instanceof ApiError ? `${e.kind}: ${e.message}` : String(e));
  } finally {
    delete button.dataset.busy;
    button.disabled = false;
    if (token) refresh();
  }
}

function replayDeadLetter(id, button) {
  return act(button, async () => {
    await api("POST", `/admin/dead-letters/${encodeURIComponent(id)}/replay`);
    refreshSeq++; // a refresh that started before the replay would bring the row back
    button.closest("tr")?.remove();
    say("ok", `Dead letter ${id} was put back in front of its subscriber.`);
  });
}

function rollbackComponent(name, button) {
  const target = button.dataset.target;
  if (!target || !confirm(`Roll ${name} back to version ${short(target)}?`)) return;
  return act(button, async () => {
    const swap = await api("POST", `/admin/components/${encodeURIComponent(name)}/rollback`);
    say("ok", `${name} rolled back: ${short(swap.previous)} → ${short(swap.digest)}.`);
  });
}

function deploy(event) {
  event.preventDefault();
  const name = $("deploy-component").value;
  const file = $("deploy-file").files[0];
  if (!name || !file) return;
  return act($("deploy-submit"), async () => {
    const bytes = await file.arrayBuffer();
    const swap = await api("PUT", `/admin/components/${encodeURIComponent(name)}`, bytes);
    say(
      "ok",
      swap.changed
        ? `${name} is now ${short(swap.digest)} (was ${short(swap.previous)}; compiled in ${swap.compileMs} ms).`
        : `${name} already runs ${short(swap.digest)}; nothing changed.`,
    );
    $("deploy-file").value = "";
  });
}

// ---- refresh loop and sign-in --------------------------------------------

async function refresh() {
  const mine = ++refreshSeq;
  clearTimeout(timer);
  try {
    const [listing, letters, swaps] = await Promise.all([
      api("GET", "/admin/components"),
      api("GET", "/admin/dead-letters"),
      api("GET", "/admin/swaps"),
    ]);
    if (mine !== refreshSeq) return; // a newer refresh started meanwhile
    const components = listing.components || [];
    renderComponents(components);
    renderLag(components);
    renderDeadLetters(letters || []);
    renderSwaps(swaps || []);
    $("connection").dataset.state = "ok";
    $("connection").textContent = "connected";
    $("updated").textContent = `Last update ${new Date().toLocaleTimeString()}.`;
  } catch (e) {
    if (mine !== refreshSeq) return;
    if (e instanceof ApiError && e.status === 401) return signOut("The admin token was refused; enter it again.");
    $("connection").dataset.state = "error";
    $("connection").textContent = e instanceof ApiError ? e.message : String(e);
  } finally {
    if (mine === refreshSeq && token) timer = setTimeout(refresh, REFRESH_MS);
  }
}

function showConsole() {
  $("login").hidden = true;
  $("console").hidden = false;
  $("sign-out").hidden = false;
  refresh();
}

function signOut(reason) {
  token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  refreshSeq++;
  clearTimeout(timer);
  $("console").hidden = true;
  $("sign-out").hidden = true;
  $("login").hidden = false;
  $("connection").textContent = "";
  $("login-error").textContent = reason || "";
  $("token").value = "";
  $("token").focus();
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const given = $("token").value.trim();
    if (!given) return;
    token = given;
    sessionStorage.setItem(TOKEN_KEY, token);
    $("login-error").textContent = "";
    showConsole();
  });
  $("sign-out").addEventListener("click", () => signOut());
  $("deploy-form").addEventListener("submit", deploy);
  if (token) showConsole();
  else signOut();
});
