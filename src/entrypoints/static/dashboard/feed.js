// The WebSocket feed (/v2/realtime, docs/websocket.md): named subscriptions over one
// connection, resumed after a drop with `since` (every missed update, no gap, no duplicate).

const PING_EVERY_MS = 30_000; // the server closes sockets silent for WS_IDLE_TIMEOUT (120 s)
const RETRY_MS = [500, 1_000, 2_000, 4_000, 8_000];
const CLOSE_BAD_KEY = 4001;
const CLOSE_FORBIDDEN = 4003;

export class Feed {
  /**
   * @param {object} hooks onStatus(state, detail) with state connecting|live|reconnecting;
   *   onKeyRefused() when the API key was refused (401/403, or close 4001/4003);
   *   sessionToken() a promise of a session token minted from the key (POST
   *   /v2/auth/token): the key itself never goes in a URL.
   */
  constructor(hooks) {
    this.hooks = hooks;
    this.key = "";
    this.socket = null;
    this.subscriptions = new Map(); // name -> {spec, handler, serverId, position}
    this.byServerId = new Map(); // subscriptionId -> name
    this.requests = new Map(); // request id of a subscribe -> its subscription
    this.nextRequest = 1;
    this.attempt = 0;
    this.retryTimer = null;
    this.pingTimer = null;
    this.generation = 0; // bumped by drop(): an open() awaiting its token gives up
  }

  /** (Re)connect with this API key ("" for none): every subscription resumes. */
  connect(key) {
    this.key = key;
    this.drop();
    this.attempt = 0;
    this.open();
  }

  /**
   * Subscribe under a local name (replacing the subscription of that name). spec:
   * {channel, params, snapshot}; handler(frame, sub) gets each update or alert frame.
   */
  subscribe(name, spec, handler) {
    this.unsubscribe(name);
    const sub = { name, spec, handler, serverId: null, position: null };
    this.subscriptions.set(name, sub);
    this.sendSubscribe(sub);
  }

  unsubscribe(name) {
    const sub = this.subscriptions.get(name);
    if (!sub) return;
    this.subscriptions.delete(name);
    if (sub.serverId !== null) {
      this.byServerId.delete(sub.serverId);
      this.send({ type: "unsubscribe", subscriptionId: sub.serverId });
    }
  }

  // -- internals ------------------------------------------------------------------------

  url(token) {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    // Browsers cannot set headers on a WebSocket: a short-lived session token goes in the
    // query (a fresh one for each connection), never the key.
    const query = token ? `?token=${encodeURIComponent(token)}` : "";
    return `${scheme}//${location.host}/v2/realtime${query}`;
  }

  async open() {
    this.hooks.onStatus(this.attempt === 0 ? "connecting" : "reconnecting");
    const generation = this.generation;
    let token = "";
    if (this.key) {
      try {
        token = await this.hooks.sessionToken();
      } catch (error) {
        if (generation !== this.generation) return;
        if (error.status === 401 || error.status === 403) {
          this.key = "";
          this.hooks.onKeyRefused(); // which may connect() again, without the key
        }
        if (this.socket === null && this.retryTimer === null) this.scheduleRetry();
        return;
      }
      if (generation !== this.generation) return; // dropped or reconnected meanwhile
    }
    const socket = new WebSocket(this.url(token));
    this.socket = socket;
    socket.addEventListener("open", () => {
      if (socket !== this.socket) return;
      this.attempt = 0;
      this.hooks.onStatus("live");
      this.byServerId.clear();
      for (const sub of this.subscriptions.values()) this.sendSubscribe(sub);
      this.pingTimer = setInterval(() => this.send({ type: "ping" }), PING_EVERY_MS);
    });
    socket.addEventListener("message", (event) => {
      if (socket === this.socket) this.receive(event.data);
    });
    socket.addEventListener("close", (event) => {
      if (socket !== this.socket) return;
      this.socket = null;
      clearInterval(this.pingTimer);
      if ((event.code === CLOSE_BAD_KEY || event.code === CLOSE_FORBIDDEN) && this.key) {
        this.key = "";
        this.hooks.onKeyRefused(); // which may connect() again, without the key
      }
      if (this.socket === null && this.retryTimer === null) this.scheduleRetry();
    });
  }

  drop() {
    this.generation += 1;
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    clearInterval(this.pingTimer);
    const socket = this.socket;
    this.socket = null;
    if (socket) socket.close(1000);
    for (const sub of this.subscriptions.values()) sub.serverId = null;
    this.byServerId.clear();
    this.requests.clear();
  }

  scheduleRetry() {
    const delay = RETRY_MS[Math.min(this.attempt, RETRY_MS.length - 1)];
    this.attempt += 1;
    this.hooks.onStatus("reconnecting");
    for (const sub of this.subscriptions.values()) sub.serverId = null;
    this.byServerId.clear();
    this.requests.clear();
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      this.open();
    }, delay);
  }

  send(message) {
    if (this.socket && this.socket.readyState === WebSocket.OPEN) {
      this.socket.send(JSON.stringify(message));
    }
  }

  sendSubscribe(sub) {
    // A fresh request id per subscribe: the answer to a replaced subscription's request
    // must not be taken for the new one's.
    const id = `${sub.name}#${this.nextRequest++}`;
    this.requests.set(id, sub);
    const message = { type: "subscribe", channel: sub.spec.channel, id };
    if (sub.spec.params) message.params = sub.spec.params;
    if (sub.position !== null) {
      message.since = sub.position; // resume: the missed updates, then live ones
    } else if (sub.spec.snapshot) {
      message.snapshot = true; // first the current value of every matching series
    }
    this.send(message);
  }

  receive(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    for (const one of Array.isArray(frame) ? frame : [frame]) this.dispatch(one);
  }

  dispatch(frame) {
    if (frame.type === "subscribed") {
      const sub = this.requests.get(frame.id);
      this.requests.delete(frame.id);
      if (!sub || this.subscriptions.get(sub.name) !== sub) {
        // Unsubscribed (or replaced) before the answer came: let the server know.
        this.send({ type: "unsubscribe", subscriptionId: frame.subscriptionId });
        return;
      }
      sub.serverId = frame.subscriptionId;
      this.byServerId.set(frame.subscriptionId, sub.name);
      if (sub.position === null) sub.position = frame.position;
    } else if (frame.type === "update" || frame.type === "alert") {
      const sub = this.subscriptions.get(this.byServerId.get(frame.subscriptionId));
      if (!sub) return;
      if (frame.position > sub.position) sub.position = frame.position;
      sub.handler(frame, sub);
    } else if (frame.type === "error") {
      this.refused(frame);
    }
  }

  refused(frame) {
    const sub = this.requests.get(frame.id);
    this.requests.delete(frame.id);
    if (!sub || this.subscriptions.get(sub.name) !== sub) return;
    if (frame.code === "invalid_since") {
      // The log is not the one we followed (a fresh store): start over from a snapshot.
      sub.position = null;
      this.sendSubscribe(sub);
    } else if (frame.code === "too_many_replays" || frame.code === "replay_failed") {
      setTimeout(() => this.subscriptions.get(sub.name) === sub && this.sendSubscribe(sub), 1_000);
    } else {
      console.warn(`subscription ${sub.name} refused: ${frame.code}: ${frame.message}`);
    }
  }
}
