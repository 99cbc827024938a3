// wsgate client SDK: one ES module, no dependencies. Runs in browsers and in Node 18+ (pass `WebSocket` from the
// `ws` package where the runtime has none). The wire protocol it speaks is docs/PROTOCOL.md.

export const VERSION = "0.1.0";

/** Close codes after which the client does not reconnect on its own (the backend or the server said "stop"). */
const FINAL_CODES = new Set([1000, 1002, 1003, 1007, 4000, 4003]);
/** Close codes that mean "come back, but not at once": the backoff never starts below `backoff.later`. */
const LATER_CODES = new Set([1013, 4008, 4029]);
/** Local reasons a connection ends (never sent by the server). */
export const LOCAL = Object.freeze({
  HEARTBEAT_TIMEOUT: 4900,
  OPEN_FAILED: 4901,
  SESSION_ENDED: 4902,
  TOKEN_UNAVAILABLE: 4903,
});

const DEFAULTS = {
  token: null,
  getToken: null,
  transports: ["websocket", "sse", "poll"],
  fallbackAfter: 2,
  backoff: { base: 500, cap: 30000, later: 5000 },
  pongTimeout: 10000,
  openTimeout: 10000,
  refreshAhead: 0.2,
  maxQueue: 1000,
  ackEvery: 1000,
  autoConnect: true,
  ssePath: "/sse",
  pollPath: "/poll",
  version: null,
  WebSocket: null,
  EventSource: null,
  fetch: null,
};

/**
 * A connection to a wsgate gateway that stays up: it reconnects with full-jitter exponential backoff, resubscribes
 * with recovery, refreshes its token, keeps the adaptive heartbeat, acks and dedups user messages, and falls back
 * from WebSocket to SSE to long-poll.
 */
export class Wsgate {
  constructor(url, options = {}) {
    this.url = url;
    this.options = { ...DEFAULTS, ...options, backoff: { ...DEFAULTS.backoff, ...(options.backoff || {}) } };
    this.state = "disconnected";
    this.transport = null;
    this.sid = null;
    this.user = null;
    this._token = this.options.token;
    this._listeners = new Map();
    this._subs = new Map();
    this._pending = new Map();
    this._outbox = [];
    this._nextId = 1;
    this._attempt = 0;
    this._transportIndex = 0;
    this._openFailures = 0;
    this._conn = null;
    this._timers = {};
    this._heartbeat = null;
    this._needFreshToken = false;
    this._lastUserId = null;
    this._seenIds = new Set();
    this._seenOrder = [];
    this._ackedId = null;
    this._toAck = null;
    this._unackedCount = 0;
    if (this.options.autoConnect) queueMicrotask(() => this.state === "disconnected" && this.connect());
  }

  // ---------------------------------------------------------------------------------------------------------
  // Public API
  // ---------------------------------------------------------------------------------------------------------

  /** Starts connecting (the constructor does it unless `autoConnect: false`). */
  connect() {
    if (this.state !== "disconnected" && this.state !== "closed") return;
    this._attempt = 0;
    this._open();
  }

  /** Ends the connection for good: no reconnect, pending sends are rejected. */
  close() {
    this._clearTimers();
    this._dropConn();
    const err = new WsgateError("client closed", 1000);
    // Messages in flight are rejected; other requests (subscribes, refreshes) have nobody left to tell.
    for (const p of this._pending.values()) if (p.item) p.reject(err);
    this._pending.clear();
    for (const m of this._outbox) m.reject(err);
    this._outbox = [];
    this._setState("closed");
  }

  /**
   * Subscribes to `channel`. `onMessage(data, {channel, offset, epoch})` gets every publication in order;
   * `onRecovered({recovered, offset, epoch})` tells after each resubscribe whether nothing was missed.
   * Returns the subscription; `ready` resolves at the first successful subscribe.
   */
  subscribe(channel, handlers = {}) {
    if (this._subs.has(channel)) throw new WsgateError(`already subscribed to ${JSON.stringify(channel)}`);
    let resolve, reject;
    const ready = new Promise((res, rej) => { resolve = res; reject = rej; });
    ready.catch(() => {});
    const sub = {
      channel,
      onMessage: handlers.onMessage || (() => {}),
      onRecovered: handlers.onRecovered || (() => {}),
      onError: handlers.onError || null,
      position: null,
      canRecover: true,
      subscribed: false,
      ready,
      resolve,
      reject,
      unsubscribe: () => this.unsubscribe(channel),
    };
    this._subs.set(channel, sub);
    if (this.state === "connected") this._sendSubscribe(sub);
    return sub;
  }

  /** Stops delivering `channel`. */
  unsubscribe(channel) {
    const sub = this._subs.get(channel);
    if (!sub) return;
    this._subs.delete(channel);
    if (this.state === "connected") this._request({ op: "unsubscribe", channels: [channel] }).catch(() => {});
  }

  /**
   * Sends `data` (any JSON value but null) to the backend (`op: msg`). Resolves when the gateway took it, rejects
   * with a WsgateError (its `code`) when refused. While disconnected, messages wait (at most `maxQueue`) and are
   * sent after the reconnect; a message whose reply was lost with the connection is sent again (at least once).
   * `extra`: `{channel, trace}`.
   */
  send(data, extra = {}) {
    if (data === null || data === undefined) return Promise.reject(new WsgateError("data must not be null"));
    if (this.state === "closed") return Promise.reject(new WsgateError("client closed"));
    const op = { op: "msg", data };
    if (extra.channel !== undefined) op.channel = extra.channel;
    if (extra.trace !== undefined) op.trace = extra.trace;
    return new Promise((resolve, reject) => {
      const item = { op, resolve, reject };
      if (this.state === "connected") return this._sendQueued(item);
      if (this._outbox.length >= this.options.maxQueue) {
        return reject(new WsgateError(`send queue full (maxQueue ${this.options.maxQueue})`));
      }
      this._outbox.push(item);
    });
  }

  /** Adds a listener; returns a function that removes it. Events: state, connected, disconnected, reconnecting,
   * error, message, replay, heartbeat, token. */
  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(fn);
    return () => this.off(event, fn);
  }

  off(event, fn) {
    this._listeners.get(event)?.delete(fn);
  }

  // ---------------------------------------------------------------------------------------------------------
  // Connecting and reconnecting
  // ---------------------------------------------------------------------------------------------------------

  async _open() {
    this._setState(this._everConnected ? "reconnecting" : "connecting");
    const name = this._pickTransport();
    if (!name) {
      this._fail(new WsgateError("no usable transport (none of " + this.options.transports.join(", ") + " is available)"));
      return;
    }
    let token = this._token;
    if (this.options.getToken && (!token || this._needFreshToken || expiresSoon(token, this.options.refreshAhead))) {
      try {
        token = await this.options.getToken();
      } catch (e) {
        this._emitError(new WsgateError("getToken failed: " + (e && e.message || e), LOCAL.TOKEN_UNAVAILABLE));
        this._scheduleReconnect(LOCAL.TOKEN_UNAVAILABLE);
        return;
      }
      if (this.state === "closed") return;
      this._token = token;
      this._needFreshToken = false;
    }
    const conn = { name, welcomed: false };
    const handlers = {
      onMessage: text => this._conn === conn && this._onText(text),
      onError: err => this._conn === conn && this._emitError(err),
      onClose: (code, reason) => this._conn === conn && this._onClose(conn, code, reason),
    };
    const params = { since: this._lastUserId, version: this.options.version };
    try {
      conn.t = TRANSPORTS[name](this._endpoint(name), token, params, this.options, handlers);
    } catch (e) {
      this._emitError(new WsgateError(`${name}: ${e && e.message || e}`, LOCAL.OPEN_FAILED));
      this._conn = conn;
      this._onClose(conn, LOCAL.OPEN_FAILED, String(e));
      return;
    }
    this._conn = conn;
    // A connection attempt that hangs (a proxy that swallows the handshake) counts as a failed one.
    this._timers.open = setTimeout(() => {
      this._timers.open = null;
      if (this._conn === conn && !conn.welcomed) this._onClose(conn, LOCAL.OPEN_FAILED, "no welcome in time");
    }, this.options.openTimeout);
  }

  /** The transport to try now: the first of `transports` this runtime has, advanced past one that failed to open
   * `fallbackAfter` times in a row. */
  _pickTransport() {
    const list = this.options.transports;
    for (let i = 0; i < list.length; i++) {
      const idx = (this._transportIndex + i) % list.length;
      if (available(list[idx], this.options)) {
        this._transportIndex = idx;
        return list[idx];
      }
    }
    return null;
  }

  _endpoint(name) {
    const u = new URL(this.url, globalThis.location?.href);
    if (name === "websocket") {
      if (u.protocol === "http:") u.protocol = "ws:";
      if (u.protocol === "https:") u.protocol = "wss:";
      return u;
    }
    if (u.protocol === "ws:") u.protocol = "http:";
    if (u.protocol === "wss:") u.protocol = "https:";
    u.pathname = name === "sse" ? this.options.ssePath : this.options.pollPath;
    return u;
  }

  _onClose(conn, code, reason) {
    this._conn = null;
    conn.t?.close();
    this._stopConnectionTimers();
    const wasConnected = conn.welcomed;
    this.transport = null;
    if (!wasConnected) {
      this._openFailures++;
      // Falling back is for finding a transport that works; once one did, an outage of the gateway (every
      // transport fails the same way) is no reason to leave it.
      const searching = !this._everConnected;
      if (searching && this._openFailures >= this.options.fallbackAfter && this.options.transports.length > 1) {
        this._openFailures = 0;
        this._transportIndex = (this._transportIndex + 1) % this.options.transports.length;
      }
      // A refused upgrade looks the same as a dead server to a browser; the token may be the reason.
      if (this.options.getToken) this._needFreshToken = true;
    }
    // Requests in flight died with the connection: messages go back to the queue (at least once).
    const resend = [];
    for (const p of this._pending.values()) if (p.item) resend.push(p.item);
    this._pending.clear();
    this._outbox = resend.concat(this._outbox);
    for (const sub of this._subs.values()) sub.subscribed = false;
    if (this.state === "closed") return;
    let reconnect = !FINAL_CODES.has(code);
    if (code === 4001) {
      reconnect = !!this.options.getToken;
      this._needFreshToken = true;
      if (!reconnect) this._emitError(new WsgateError("token expired or refused (4001) and no getToken to renew it", 4001));
    }
    if (code >= 3000 && code < 5000 && !KNOWN_CODES.has(code) && code < 4900) reconnect = false;
    if (!reconnect) {
      this._emit("disconnected", { code, reason, reconnect: false });
      this._failPending(new WsgateError(`disconnected (${code} ${reason})`, code));
      this._setState("closed");
      return;
    }
    this._scheduleReconnect(code, reason);
  }

  _scheduleReconnect(code, reason = "") {
    const { base, cap, later } = this.options.backoff;
    const ceiling = Math.min(cap, base * 2 ** Math.min(this._attempt, 30));
    let delay = Math.random() * ceiling; // full jitter: spreads a crowd of clients over the whole window
    if (LATER_CODES.has(code)) delay = Math.max(delay, later);
    this._attempt++;
    this._emit("disconnected", { code, reason, reconnect: true, delay });
    this._emit("reconnecting", { attempt: this._attempt, delay, code });
    this._setState("reconnecting");
    this._timers.reconnect = setTimeout(() => {
      this._timers.reconnect = null;
      if (this.state !== "closed") this._open();
    }, delay);
  }

  _failPending(err) {
    for (const m of this._outbox) m.reject(err);
    this._outbox = [];
    for (const sub of this._subs.values()) sub.reject(err);
  }

  _fail(err) {
    this._emitError(err);
    this._failPending(err);
    this._setState("closed");
  }

  _dropConn() {
    const conn = this._conn;
    this._conn = null;
    conn?.t?.close();
    this._stopConnectionTimers();
  }

  // ---------------------------------------------------------------------------------------------------------
  // Incoming messages
  // ---------------------------------------------------------------------------------------------------------

  _onText(text) {
    this._alive();
    let msg;
    try {
      msg = JSON.parse(text);
    } catch {
      this._emitError(new WsgateError("server sent invalid JSON"));
      return;
    }
    if (msg === null || typeof msg !== "object") return;
    switch (msg.type) {
      case undefined: return this._onDelivery(msg);
      case "welcome": return this._onWelcome(msg);
      case "reply": return this._onReply(msg);
      case "pong": return;
      case "heartbeat": return this._setHeartbeat(msg);
      case "replay": return this._emit("replay", msg);
      case "error": return this._emitError(new WsgateError("server: " + msg.error));
      case "close": return this._conn && this._onClose(this._conn, msg.code, msg.reason || "");
      default: return;
    }
  }

  _onWelcome(msg) {
    const conn = this._conn;
    conn.welcomed = true;
    conn.t.welcome?.(msg);
    this._everConnected = true;
    this._attempt = 0;
    this._openFailures = 0;
    this.sid = msg.sid;
    this.user = msg.user ?? null;
    this.transport = conn.name;
    this._ackedId = null;
    this._setHeartbeat(msg.heartbeat);
    this._scheduleRefresh();
    this._setState("connected");
    this._emit("connected", { sid: this.sid, user: this.user, transport: this.transport });
    for (const sub of this._subs.values()) this._sendSubscribe(sub);
    const queued = this._outbox;
    this._outbox = [];
    for (const item of queued) this._sendQueued(item);
  }

  _onReply(msg) {
    const p = this._pending.get(msg.id);
    if (!p) {
      if (msg.ok === false) this._emitError(new WsgateError("server: " + msg.error, msg.code));
      return;
    }
    this._pending.delete(msg.id);
    if (msg.ok) p.resolve(msg);
    else p.reject(new WsgateError(msg.error || "refused", msg.code, msg));
  }

  _onDelivery(msg) {
    if (typeof msg.channel === "string") {
      const sub = this._subs.get(msg.channel);
      if (!sub) return;
      if (Array.isArray(msg.batch)) {
        for (const item of msg.batch) this._publication(sub, item.data, item.offset, msg.epoch);
      } else {
        this._publication(sub, msg.data, msg.offset, msg.epoch);
      }
      return;
    }
    if (msg.broadcast) return this._emit("message", { kind: "broadcast", data: msg.data });
    if (msg.sid !== undefined) return this._emit("message", { kind: "sid", data: msg.data });
    if (msg.user !== undefined) return this._userMessage(msg);
  }

  _publication(sub, data, offset, epoch) {
    if (typeof offset === "number") {
      const pos = sub.position;
      // A publication at or below the position in the same epoch was delivered already.
      if (pos && pos.epoch === epoch && offset <= pos.offset) return;
      sub.position = { offset, epoch };
    }
    try {
      sub.onMessage(data, { channel: sub.channel, offset, epoch });
    } catch (e) {
      this._emitError(e);
    }
  }

  _userMessage(msg) {
    const id = typeof msg.id === "string" ? msg.id : null;
    if (id !== null) {
      if (this._seenIds.has(id) || (this._seenFloor && compareIds(id, this._seenFloor) <= 0)) {
        if (msg.ack) this._queueAck(id, true);
        return;
      }
      this._remember(id);
    }
    this._emit("message", { kind: "user", data: msg.data, id, replay: !!msg.replay, user: msg.user });
    if (id === null || !this.user) return;
    if (!this._lastUserId || compareIds(id, this._lastUserId) > 0) this._lastUserId = id;
    this._queueAck(id, !!msg.ack);
  }

  /** Remembers processed ids so a retransmit is processed once; the oldest forgotten id becomes a floor. */
  _remember(id) {
    this._seenIds.add(id);
    this._seenOrder.push(id);
    if (this._seenOrder.length > 4096) {
      const old = this._seenOrder.shift();
      this._seenIds.delete(old);
      if (!this._seenFloor || compareIds(old, this._seenFloor) > 0) this._seenFloor = old;
    }
  }

  /** Acks are cumulative: a message marked `ack` is acked at the end of this burst (within the server's
   * `delivery.ack_timeout`); others at most every `ackEvery` ms or every 100 messages. */
  _queueAck(id, urgent) {
    if (!this._toAck || compareIds(id, this._toAck) > 0) this._toAck = id;
    this._unackedCount++;
    if (urgent || this._unackedCount >= 100) {
      if (!this._ackSoon) {
        this._ackSoon = true;
        queueMicrotask(() => { this._ackSoon = false; this._flushAck(); });
      }
    } else if (!this._timers.ack) {
      this._timers.ack = setTimeout(() => { this._timers.ack = null; this._flushAck(); }, this.options.ackEvery);
    }
  }

  _flushAck() {
    if (!this._toAck || this.state !== "connected") return;
    if (this._ackedId && compareIds(this._toAck, this._ackedId) <= 0) return;
    this._ackedId = this._toAck;
    this._unackedCount = 0;
    this._raw({ op: "ack", id: this._toAck });
  }

  // ---------------------------------------------------------------------------------------------------------
  // Subscriptions and recovery
  // ---------------------------------------------------------------------------------------------------------

  _sendSubscribe(sub) {
    const recovering = sub.position && sub.canRecover;
    const op = { op: "subscribe", channels: [sub.channel] };
    if (recovering) op.recover = { [sub.channel]: { offset: sub.position.offset, epoch: sub.position.epoch } };
    const wasSubscribedBefore = sub.position !== null || sub.everSubscribed;
    this._request(op).then(reply => {
      if (this._subs.get(sub.channel) !== sub) return;
      const pos = reply.positions?.[sub.channel];
      sub.subscribed = true;
      sub.everSubscribed = true;
      if (recovering) {
        const recovered = pos?.recovered !== false && reply.recovered !== false;
        // Not recovered: live publications continue from the server's position; the app reloads its state.
        if (!recovered && pos) sub.position = { offset: pos.offset, epoch: pos.epoch };
        this._callRecovered(sub, { recovered, offset: pos?.offset, epoch: pos?.epoch });
      } else {
        if (pos) sub.position = { offset: pos.offset, epoch: pos.epoch };
        // A channel without history has no way to recover what a reconnect missed: say so.
        if (wasSubscribedBefore) this._callRecovered(sub, { recovered: false, offset: pos?.offset, epoch: pos?.epoch });
      }
      sub.resolve(sub);
    }, err => {
      if (this._subs.get(sub.channel) !== sub || err.code === LOCAL.SESSION_ENDED) return;
      if (recovering) {
        // Recovery refused (e.g. the namespace has no `recover = true`): subscribe without it.
        sub.canRecover = false;
        sub.everSubscribed = true;
        sub.position = null;
        this._sendSubscribe(sub);
        return;
      }
      this._subs.delete(sub.channel);
      sub.reject(err);
      if (sub.onError) sub.onError(err);
      else this._emitError(err);
    });
  }

  _callRecovered(sub, info) {
    try {
      sub.onRecovered(info);
    } catch (e) {
      this._emitError(e);
    }
  }

  // ---------------------------------------------------------------------------------------------------------
  // Requests
  // ---------------------------------------------------------------------------------------------------------

  _request(op, item = null) {
    return new Promise((resolve, reject) => {
      const id = this._nextId++;
      this._pending.set(id, { resolve, reject, item });
      this._raw({ ...op, id });
    });
  }

  _sendQueued(item) {
    this._request(item.op, item).then(item.resolve, item.reject);
  }

  _raw(obj) {
    this._conn?.t.send(JSON.stringify(obj));
  }

  // ---------------------------------------------------------------------------------------------------------
  // Heartbeat and dead-connection detection
  // ---------------------------------------------------------------------------------------------------------

  _setHeartbeat(hb) {
    if (!hb || !(hb.interval > 0)) return;
    this._heartbeat = { interval: hb.interval, timeout: hb.timeout };
    this._emit("heartbeat", this._heartbeat);
    clearTimeout(this._timers.beat);
    this._timers.beat = setTimeout(() => this._beat(), hb.interval * 1000);
  }

  /** Sends `op: ping` every interval; no answer within `pongTimeout` means the connection is dead. */
  _beat() {
    if (this.state !== "connected") return;
    this._raw({ op: "ping" });
    if (!this._timers.pong) {
      const wait = Math.min(this.options.pongTimeout, this._heartbeat.interval * 1000);
      this._timers.pong = setTimeout(() => {
        this._timers.pong = null;
        const conn = this._conn;
        if (conn) this._onClose(conn, LOCAL.HEARTBEAT_TIMEOUT, "no answer to the heartbeat");
      }, wait);
    }
    this._timers.beat = setTimeout(() => this._beat(), this._heartbeat.interval * 1000);
  }

  _alive() {
    clearTimeout(this._timers.pong);
    this._timers.pong = null;
  }

  // ---------------------------------------------------------------------------------------------------------
  // Token refresh
  // ---------------------------------------------------------------------------------------------------------

  /** Refreshes `refreshAhead` of the token's lifetime before it expires (needs `getToken`). */
  _scheduleRefresh() {
    clearTimeout(this._timers.refresh);
    this._timers.refresh = null;
    const claims = jwtClaims(this._token);
    if (!this.options.getToken || !claims || typeof claims.exp !== "number") return;
    const now = Date.now() / 1000;
    const issued = typeof claims.iat === "number" ? claims.iat : now;
    const lead = Math.max((claims.exp - issued) * this.options.refreshAhead, 0);
    const delay = Math.max(claims.exp - lead - now, 0) * 1000;
    this._timers.refresh = setTimeout(() => this._refresh(), Math.min(delay, 2 ** 31 - 1));
  }

  async _refresh(retry = 0) {
    this._timers.refresh = null;
    if (this.state !== "connected") return;
    try {
      const token = await this.options.getToken();
      if (this.state !== "connected") return;
      const reply = await this._request({ op: "refresh", token });
      this._token = token;
      this._emit("token", { exp: reply.exp, unsubscribed: reply.unsubscribed || [] });
      for (const ch of reply.unsubscribed || []) {
        const sub = this._subs.get(ch);
        this._subs.delete(ch);
        sub?.onError?.(new WsgateError("no longer allowed by the token", 4003));
      }
      this._scheduleRefresh();
    } catch (e) {
      if (this.state !== "connected") return;
      this._emitError(new WsgateError("token refresh failed: " + (e && e.message || e), e?.code ?? 4001));
      // Try again soon; if the token expires first, the server closes with 4001 and the reconnect gets a new one.
      if (retry < 5) this._timers.refresh = setTimeout(() => this._refresh(retry + 1), 1000 * 2 ** retry);
    }
  }

  // ---------------------------------------------------------------------------------------------------------
  // Plumbing
  // ---------------------------------------------------------------------------------------------------------

  _stopConnectionTimers() {
    for (const name of ["open", "beat", "pong", "refresh", "ack"]) {
      clearTimeout(this._timers[name]);
      this._timers[name] = null;
    }
  }

  _clearTimers() {
    for (const t of Object.values(this._timers)) clearTimeout(t);
    this._timers = {};
  }

  _setState(state) {
    if (this.state === state) return;
    const prev = this.state;
    this.state = state;
    this._emit("state", state, prev);
  }

  _emit(event, ...args) {
    for (const fn of this._listeners.get(event) || []) {
      try {
        fn(...args);
      } catch (e) {
        if (event !== "error") this._emitError(e);
      }
    }
  }

  _emitError(err) {
    this._emit("error", err);
  }
}

/** Codes the server sends (docs/PROTOCOL.md "Close codes", "Codes"); other 3000–4999 codes come from the backend
 * (`POST /api/disconnect`) and end the session. */
const KNOWN_CODES = new Set([4001, 4008, 4010, 4013, 4029]);

export class WsgateError extends Error {
  constructor(message, code = null, reply = null) {
    super(message);
    this.name = "WsgateError";
    this.code = code;
    this.reply = reply;
  }
}

// -------------------------------------------------------------------------------------------------------------
// Transports: each opens at once and calls onMessage(text) per server message and onClose(code, reason) once.
// -------------------------------------------------------------------------------------------------------------

function available(name, o) {
  if (name === "websocket") return !!(o.WebSocket || globalThis.WebSocket);
  if (name === "sse") return !!((o.EventSource || globalThis.EventSource) && (o.fetch || globalThis.fetch));
  if (name === "poll") return !!(o.fetch || globalThis.fetch);
  return false;
}

function query(url, token, params, withToken) {
  if (params.since) url.searchParams.set("since", params.since);
  if (params.version) url.searchParams.set("v", params.version);
  if (token && withToken) url.searchParams.set("token", token);
  return url;
}

const TRANSPORTS = {
  websocket(url, token, params, o, h) {
    const WS = o.WebSocket || globalThis.WebSocket;
    const protocols = token ? ["wsgate", "bearer." + token] : ["wsgate"];
    const ws = new WS(query(url, token, params, false).toString(), protocols);
    let done = false;
    const end = (code, reason) => {
      if (done) return;
      done = true;
      h.onClose(code, reason);
    };
    ws.onmessage = e => typeof e.data === "string" && h.onMessage(e.data);
    ws.onclose = e => end(e.code || 1006, e.reason || "");
    ws.onerror = () => {};
    return {
      send: text => ws.readyState === 1 && ws.send(text),
      close() {
        done = true;
        ws.onmessage = ws.onclose = null;
        try {
          ws.close(1000);
        } catch {
          // already closing
        }
      },
    };
  },

  sse(url, token, params, o, h) {
    const ES = o.EventSource || globalThis.EventSource;
    const doFetch = o.fetch || globalThis.fetch;
    const es = new ES(query(url, token, params, true).toString());
    const opUrl = new URL(url);
    opUrl.pathname = opUrl.pathname.replace(/\/?$/, "/op");
    opUrl.search = "";
    let done = false;
    let session = null;
    const waiting = [];
    // One op request at a time, so ops reach the server in the order they were sent (a subscribe before the
    // message that names its channel).
    let chain = Promise.resolve();
    const end = (code, reason) => {
      if (done) return;
      done = true;
      es.close();
      h.onClose(code, reason);
    };
    const post = text => {
      const u = new URL(opUrl);
      u.searchParams.set("sid", session.sid);
      u.searchParams.set("key", session.key);
      const attempt = tries => done || doFetch(u.toString(), {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: text,
      }).then(r => {
        if (r.status === 404) return end(LOCAL.SESSION_ENDED, "session ended");
        // 503: the session's reactor could not take the op just now.
        if (r.status === 503 && tries < 5) return new Promise(res => setTimeout(res, 50 * 2 ** tries)).then(() => attempt(tries + 1));
        if (r.status >= 300) h.onError(new WsgateError(`op refused: HTTP ${r.status}`));
      }, () => end(1006, "op request failed"));
      chain = chain.then(() => attempt(0));
    };
    es.onmessage = e => h.onMessage(e.data);
    // The session's end: the close code a WebSocket would have got.
    es.addEventListener("close", e => {
      let info = {};
      try {
        info = JSON.parse(e.data);
      } catch {
        // no details: a plain end
      }
      end(typeof info.code === "number" ? info.code : 1006, info.reason || "");
    });
    // EventSource would reconnect by itself; the client reconnects with its own backoff and recovery instead.
    es.onerror = () => end(1006, "event stream failed");
    return {
      welcome(msg) {
        session = { sid: msg.sid, key: msg.key };
        for (const text of waiting.splice(0)) post(text);
      },
      send(text) {
        if (done) return;
        if (session) post(text);
        else waiting.push(text);
      },
      close() {
        done = true;
        es.close();
      },
    };
  },

  poll(url, token, params, o, h) {
    const doFetch = o.fetch || globalThis.fetch;
    let done = false;
    let session = null;
    let ops = [];
    let generation = 0;
    const end = (code, reason) => {
      if (done) return;
      done = true;
      h.onClose(code, reason);
    };
    const headers = { "Content-Type": "application/json" };
    if (token) headers.Authorization = "Bearer " + token;
    const poll = () => {
      const mine = ++generation;
      const u = new URL(url);
      if (session) {
        u.searchParams.set("sid", session.sid);
        u.searchParams.set("key", session.key);
      } else {
        query(u, token, params, false);
      }
      const body = session ? JSON.stringify(ops.splice(0).map(t => JSON.parse(t))) : "";
      doFetch(u.toString(), { method: "POST", headers, body })
        .then(async r => {
          if (done) return;
          if (r.status === 404) return end(LOCAL.SESSION_ENDED, "session ended");
          if (r.status === 401) return end(4001, "token refused");
          if (r.status !== 200) return end(1006, "poll answered " + r.status);
          const list = await r.json();
          for (const m of Array.isArray(list) ? list : []) {
            if (done) return;
            h.onMessage(JSON.stringify(m));
          }
          // A newer poll (one that carried ops) replaced this one.
          if (!done && mine === generation) poll();
        })
        .catch(() => end(1006, "poll failed"));
    };
    poll();
    return {
      welcome(msg) {
        session = { sid: msg.sid, key: msg.key };
      },
      send(text) {
        if (done) return;
        ops.push(text);
        // One poll at a time per session: a new one (carrying the ops) ends the one waiting with [].
        if (session && ops.length === 1) queueMicrotask(() => !done && ops.length && poll());
      },
      close() {
        done = true;
      },
    };
  },
};

// -------------------------------------------------------------------------------------------------------------
// Helpers
// -------------------------------------------------------------------------------------------------------------

/** The claims of a JWT (unverified: only to know when to refresh), or null. */
export function jwtClaims(token) {
  if (typeof token !== "string") return null;
  const part = token.split(".")[1];
  if (!part) return null;
  try {
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((part.length + 3) % 4);
    return JSON.parse(atob(b64));
  } catch {
    return null;
  }
}

function expiresSoon(token, ahead) {
  const c = jwtClaims(token);
  if (!c || typeof c.exp !== "number") return false;
  const now = Date.now() / 1000;
  const issued = typeof c.iat === "number" ? c.iat : now;
  return c.exp - now <= Math.max((c.exp - issued) * ahead, 1);
}

/** Orders message ids `MS-SEQ` like the two numbers (string comparison would put "9-0" after "10-0"). */
export function compareIds(a, b) {
  const [am, as = "0"] = a.split("-");
  const [bm, bs = "0"] = b.split("-");
  if (am.length !== bm.length) return am.length - bm.length;
  if (am !== bm) return am < bm ? -1 : 1;
  if (as.length !== bs.length) return as.length - bs.length;
  return as === bs ? 0 : as < bs ? -1 : 1;
}

export default Wsgate;
