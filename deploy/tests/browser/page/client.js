// A realtime client as the browser apps (waiter, kitchen, manager, diner) have it, protocol
// sections 2, 4, 7 and 8: a WebSocket to /ws/<endpoint>?token=..., a ping every 30 s, reconnect
// with exponential backoff after any close except the final codes 4001, 4003 and 4029, and after
// every reconnect a catch-up request (cross-origin fetch, `since` = the last event's time) whose
// events are merged with the live ones by content. A second mode opts into resume
// (`resume=live`, then `resume=<last cursor>`). Everything it does is recorded in `log`, which
// the browser test reads through `window.clients[name].snapshot()`.
"use strict";

const FINAL_CODES = [4001, 4003, 4029];

// The content key of an event: its JSON with keys sorted, the resume cursor left out, so the
// same event from the socket (bytes as published, maybe with `_cursor`) and from catch-up (parsed
// and re-serialised) is one entry.
function contentKey(value) {
  if (Array.isArray(value)) return "[" + value.map(contentKey).join(",") + "]";
  if (value !== null && typeof value === "object") {
    return "{" + Object.keys(value).sort().map((k) => JSON.stringify(k) + ":" + contentKey(value[k])).join(",") + "}";
  }
  return JSON.stringify(value);
}

// An event's `ts` (ISO-8601 UTC with microseconds) as unix seconds, or null.
function eventSeconds(event) {
  if (typeof event.ts !== "string") return null;
  const ms = Date.parse(event.ts.replace(/(\.\d{3})\d+/, "$1"));
  return Number.isNaN(ms) ? null : ms / 1000;
}

class RealtimeClient {
  constructor(name, options) {
    this.name = name;
    this.o = Object.assign(
      {
        gateway: "", // host:port of the load balancer, for ws:// and http://
        endpoint: "waiter",
        token: "",
        branchId: 1,
        pingMs: 30000,
        backoffMs: 1000,
        backoffMaxMs: 30000,
        catchUp: true, // after every reconnect
        resume: false,
        credentials: "include",
      },
      options,
    );
    this.log = [];
    this.events = new Map(); // content key -> entry
    this.attempts = 0; // WebSocket objects created
    this.opens = 0;
    this.retries = 0; // since the last successful open
    this.pongs = 0;
    this.cursor = null;
    this.lastEventSeconds = null;
    this.state = "idle";
  }

  record(kind, fields) {
    this.log.push(Object.assign({ t: Date.now(), kind }, fields || {}));
    render();
  }

  start() {
    this.startedSeconds = Date.now() / 1000;
    this.connect();
  }

  connect() {
    this.attempts += 1;
    const params = new URLSearchParams({ token: this.o.token });
    if (this.o.resume) params.set("resume", this.cursor === null ? "live" : String(this.cursor));
    this.state = "connecting";
    this.record("connecting", { attempt: this.attempts, resume: params.get("resume") });
    const ws = new WebSocket(`ws://${this.o.gateway}/ws/${this.o.endpoint}?${params}`);
    this.ws = ws;
    ws.onopen = () => {
      this.opens += 1;
      this.retries = 0;
      this.state = "open";
      this.record("open", { connection: this.opens });
      this.pinger = setInterval(() => ws.send(JSON.stringify({ type: "ping" })), this.o.pingMs);
      if (this.opens > 1 && this.o.catchUp) this.catchUp("reconnect");
    };
    ws.onmessage = (message) => this.onMessage(message.data);
    ws.onerror = () => this.record("error");
    ws.onclose = (event) => this.onClose(event);
  }

  onMessage(data) {
    let message;
    try {
      message = JSON.parse(data);
    } catch (_) {
      this.record("text", { data: String(data).slice(0, 200) });
      return;
    }
    if (message.type === "pong") {
      this.pongs += 1;
      this.record("pong");
      return;
    }
    if (message.type === "RESUME_GAP") {
      // History no longer reaches back: reload through catch-up, carry on with the cursors.
      this.record("resume_gap", { after: message.after, oldest: message.oldest, reason: message.reason });
      this.catchUp("resume_gap");
      return;
    }
    if (typeof message._cursor === "number") this.cursor = message._cursor;
    this.deliver(message, "live");
  }

  deliver(event, via) {
    const body = Object.assign({}, event);
    delete body._cursor;
    const key = contentKey(body);
    let entry = this.events.get(key);
    if (!entry) {
      entry = { event: body, via, live: 0, catchup: 0, connection: this.opens, at: Date.now() };
      this.events.set(key, entry);
    }
    entry[via] += 1;
    const seconds = eventSeconds(body);
    if (seconds !== null && (this.lastEventSeconds === null || seconds > this.lastEventSeconds)) {
      this.lastEventSeconds = seconds;
    }
    this.record("event", { via, type: body.type, connection: this.opens });
  }

  onClose(event) {
    clearInterval(this.pinger);
    this.record("close", { code: event.code, reason: event.reason, wasClean: event.wasClean, connection: this.opens });
    if (this.closing) {
      this.state = "stopped";
      return;
    }
    if (FINAL_CODES.includes(event.code)) {
      this.state = "final";
      this.record("final", { code: event.code, reason: event.reason });
      return;
    }
    const delay = Math.min(this.o.backoffMaxMs, this.o.backoffMs * 2 ** this.retries) * (1 + 0.2 * Math.random());
    this.retries += 1;
    this.state = "backoff";
    this.record("retry", { delayMs: Math.round(delay) });
    this.timer = setTimeout(() => this.connect(), delay);
  }

  // The app's own close (logout, page hidden): 1000, no reconnect.
  close() {
    this.closing = true;
    clearTimeout(this.timer);
    clearInterval(this.pinger);
    this.ws.close(1000, "bye");
  }

  // GET /ws/catchup from this page's origin; resolves to what it recorded.
  async catchUp(why, since) {
    if (since === undefined || since === null) since = this.lastEventSeconds ?? this.startedSeconds;
    const params = new URLSearchParams({ branch_id: String(this.o.branchId), since: String(since), token: this.o.token });
    this.record("catchup_start", { why, since });
    let fields;
    try {
      const answer = await fetch(`http://${this.o.gateway}/ws/catchup?${params}`, { credentials: this.o.credentials });
      if (!answer.ok) {
        fields = { why, ok: false, status: answer.status };
      } else {
        const body = await answer.json();
        for (const event of body.events) this.deliver(event, "catchup");
        fields = { why, ok: true, status: answer.status, count: body.count };
      }
    } catch (error) {
      // A CORS refusal: the browser keeps the answer from the page and says only this.
      fields = { why, ok: false, error: String(error) };
    }
    this.record("catchup", fields);
    return fields;
  }

  snapshot() {
    return {
      name: this.name,
      state: this.state,
      attempts: this.attempts,
      opens: this.opens,
      pongs: this.pongs,
      cursor: this.cursor,
      log: this.log,
      events: [...this.events.values()].map(({ event, via, live, catchup, connection }) => ({ event, via, live, catchup, connection })),
    };
  }
}

window.clients = {};

window.startClient = function (name, options) {
  const client = new RealtimeClient(name, options);
  window.clients[name] = client;
  client.start();
  return name;
};

// A table per client and the last log lines, so that screenshots show what happened.
function render() {
  const rows = Object.values(window.clients).map((c) => {
    const live = [...c.events.values()].filter((e) => e.live > 0).length;
    const caught = [...c.events.values()].filter((e) => e.via === "catchup").length;
    const close = c.log.filter((l) => l.kind === "close").pop();
    const closeText = close ? `${close.code} ${close.reason || ""} (clean: ${close.wasClean})` : "";
    return `<tr class="${c.state}"><td>${c.name}</td><td>${c.o.resume ? "resume" : "catch-up"}</td><td>${c.state}</td>` +
      `<td>${c.attempts}</td><td>${c.opens}</td><td>${c.pongs}</td><td>${c.events.size}</td><td>${live}</td>` +
      `<td>${caught}</td><td>${closeText}</td></tr>`;
  });
  document.getElementById("clients").innerHTML = rows.join("");
  const lines = Object.values(window.clients)
    .flatMap((c) => c.log.map((l) => Object.assign({ client: c.name }, l)))
    .sort((a, b) => a.t - b.t)
    .slice(-22)
    .map(({ t, client, kind, ...rest }) => `${new Date(t).toISOString().slice(11, 23)} ${client} ${kind} ${JSON.stringify(rest)}`);
  document.getElementById("log").textContent = lines.join("\n");
}
