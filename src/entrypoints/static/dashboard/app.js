// The dashboard: top protocols live from /v2/realtime, REST for listings, changes, history
// and breakdowns, and (with an API key) the account's alert rules and their firings.
// Every node that shows data is built with textContent: nothing from the API is parsed as
// markup.

import { ApiError, apiKey, get, post, setApiKey } from "./api.js";
import { drawLineChart } from "./chart.js";
import { Feed } from "./feed.js";
import { percent, trend, usd, utc } from "./format.js";

const TOP = 100; // rows in the table
// The feed carries TVL and its 24 h change; the listing (names, categories, 1 h and 7 d
// changes) and the breakdowns are read again over REST at most this often while updates
// come in.
const RESYNC_MS = 2_000;
const RESYNC_DELAY_MS = 250;
// How long a protocol the feed announced waits for the listing to show it.
const PROVISIONAL_MS = 5_000;
const BREAKDOWN_ROWS = 10;
const FIRINGS_SHOWN = 50;
const HISTORY_POINTS = 2_000;

const $ = (id) => document.getElementById(id);

function el(tag, { className, text, href, dataset } = {}, ...children) {
  const element = document.createElement(tag);
  if (className) element.className = className;
  if (text !== undefined) element.textContent = text;
  if (href !== undefined) element.href = href;
  if (dataset) Object.assign(element.dataset, dataset);
  element.append(...children);
  return element;
}

function flash(element) {
  element.classList.remove("flash");
  void element.offsetWidth; // restart the animation
  element.classList.add("flash");
}

function showError(where, error) {
  if (error instanceof ApiError && error.status === 401 && !error.withKey) {
    // REQUIRE_KEY_FOR_READS: nothing to show without a key.
    $("key-status").textContent = "this server needs an API key to read";
  }
  console.warn(`${where}: ${error instanceof ApiError ? `${error.status} ${error.code}` : error}`);
}

/** A frame's value is the current one: not history arriving late (docs/websocket.md). */
function isCurrent(frame, knownAt) {
  const { late, timestamp } = frame.data;
  if (frame.snapshot || late === false) return true;
  // Read back from the log (resume): late is unknown, the data time decides.
  return late === null && (knownAt === null || knownAt === undefined || timestamp >= knownAt);
}

// -- the feed -----------------------------------------------------------------------------

const feed = new Feed({
  onStatus(state) {
    const status = $("feed-status");
    status.dataset.state = state;
    status.textContent = state;
  },
  onKeyRefused() {
    setApiKey("");
    $("key-status").textContent = "key refused";
    keyChanged();
  },
  async sessionToken() {
    return (await post("/v2/auth/token")).token;
  },
});

// -- overview: the table ------------------------------------------------------------------

const table = {
  rows: new Map(), // slug -> row: the REST protocol, plus tvlAt and provisional
  loaded: false,
  early: [], // frames that came before the listing
  generation: 0,
  trs: new Map(), // slug -> <tr>
  renderQueued: false,
  resyncTimer: null,
  lastResync: 0,
};

function filters() {
  return { chain: $("chain-filter").value, category: $("category-filter").value };
}

/** TVL on a chain, as the API attributes it: the protocol's own figure for the chain, or
 * its total when it lists that chain alone. */
function chainTvl(row, chain) {
  if (row.chainTvls && row.chainTvls[chain] !== undefined) return row.chainTvls[chain];
  return row.chains.length === 1 && row.chains[0] === chain ? row.tvl : null;
}

function rankValue(row) {
  const { chain } = filters();
  const value = chain ? chainTvl(row, chain) : row.tvl;
  return value === null || value === undefined ? -1 : value;
}

async function loadListing() {
  const generation = table.generation;
  const { chain, category } = filters();
  const page = await get("/v2/protocols", { limit: TOP, chain, category });
  if (generation !== table.generation) return;
  const rows = new Map();
  for (const protocol of page.protocols) {
    const old = table.rows.get(protocol.slug);
    const row = {
      ...protocol, chainTvls: { ...protocol.chainTvls }, tvlAt: null, provisional: 0, changed: true,
    };
    // A value the feed delivered after the listing's data time stays.
    if (old && old.tvlAt !== null && (protocol.updated_at === null || old.tvlAt > protocol.updated_at)) {
      row.tvl = old.tvl;
      row.tvlAt = old.tvlAt;
    }
    rows.set(protocol.slug, row);
  }
  // A protocol the feed announced but the listing does not show yet (its projection is a
  // moment behind) stays until the next listing.
  for (const [slug, old] of table.rows) {
    if (old.provisional && !rows.has(slug) && Date.now() - old.provisional < PROVISIONAL_MS) {
      rows.set(slug, old);
    }
  }
  table.rows = rows;
  if (!table.loaded) {
    table.loaded = true;
    for (const frame of table.early.splice(0)) onTableUpdate(frame);
  }
  renderTable();
}

function onTableUpdate(frame) {
  const data = frame.data;
  if (data.metric !== "tvl" || data.late === true) return;
  if (!table.loaded) {
    table.early.push(frame);
    return;
  }
  let row = table.rows.get(data.id);
  if (!row) {
    // A snapshot's protocols outside the listing are outside the top (the listing and the
    // snapshot are of the same moment, give or take an update that starts a new listing).
    if (frame.snapshot) return;
    scheduleResync();
    if (!entersTop(data)) return;
    // Shown at once; the next listing brings its name, category and changes.
    row = {
      slug: data.id, name: data.id, category: "", chains: [], tvl: null, chainTvls: {},
      change_1h: null, change_1d: null, change_7d: null, updated_at: null, tvlAt: null,
      provisional: Date.now(),
    };
    table.rows.set(data.id, row);
  }
  if (data.chain === "total") {
    if (!isCurrent(frame, row.tvlAt)) return;
    row.tvl = data.value;
    row.tvlAt = data.timestamp;
    if (data.late === false || (frame.snapshot && data.change24h !== null)) {
      row.change_1d = data.change24h;
    }
  } else if (data.late !== null || frame.snapshot) {
    row.chainTvls[data.chain] = data.value;
  }
  row.changed = true;
  scheduleRender();
  if (!frame.snapshot) scheduleResync();
}

/** Whether a protocol not in the table ranks among the top by this update (its total, or
 * with a chain filter its value on that chain). */
function entersTop(data) {
  if (data.chain !== (filters().chain || "total")) return false;
  if (table.rows.size < TOP) return true;
  let lowest = Infinity;
  for (const row of table.rows.values()) lowest = Math.min(lowest, rankValue(row));
  return data.value > lowest;
}

function scheduleRender() {
  if (table.renderQueued) return;
  table.renderQueued = true;
  requestAnimationFrame(() => {
    table.renderQueued = false;
    renderTable();
  });
}

function changeCell(value) {
  return el("td", { className: `num ${trend(value)}`.trim(), text: percent(value) });
}

function rowCells(row, rank, chain) {
  const onChain = el("td", { className: "num chain-tvl", text: usd(chainTvl(row, chain)) });
  onChain.hidden = !chain;
  const cells = [
    el("td", { className: "rank", text: rank }),
    el("td", {}, el("a", { href: `#/protocol/${encodeURIComponent(row.slug)}`, text: row.name })),
    el("td", { className: "category", text: row.category }),
    el("td", { className: "num tvl", text: usd(row.tvl) }),
    onChain,
    changeCell(row.change_1h),
    changeCell(row.change_1d),
    changeCell(row.change_7d),
  ];
  cells[5].classList.add("change-1h");
  cells[6].classList.add("change-1d");
  cells[7].classList.add("change-7d");
  return cells;
}

function renderTable() {
  const { chain } = filters();
  document.querySelectorAll("#protocols .chain-tvl").forEach((th) => (th.hidden = !chain));
  $("chain-name").textContent = chain;
  const ranked = [...table.rows.values()].sort((a, b) => rankValue(b) - rankValue(a)).slice(0, TOP);
  const body = document.querySelector("#protocols tbody");
  const keep = new Set(ranked.map((row) => row.slug));
  for (const [slug, tr] of table.trs) {
    if (!keep.has(slug)) {
      tr.remove();
      table.trs.delete(slug);
    }
  }
  ranked.forEach((row, index) => {
    let tr = table.trs.get(row.slug);
    const fresh = tr === undefined;
    if (fresh) {
      tr = el("tr", { dataset: { slug: row.slug } });
      table.trs.set(row.slug, tr);
    }
    const rank = String(index + 1);
    if (fresh || row.changed || tr.dataset.rank !== rank || tr.dataset.chain !== chain) {
      const before = fresh ? null : tr.querySelector(".tvl").textContent;
      tr.replaceChildren(...rowCells(row, rank, chain));
      const tvl = tr.querySelector(".tvl");
      if (before !== null && before !== tvl.textContent) flash(tvl);
      Object.assign(tr.dataset, { rank, chain });
      row.changed = false;
    }
    if (body.children[index] !== tr) body.insertBefore(tr, body.children[index] || null);
  });
  $("empty").hidden = ranked.length > 0;
  $("row-count").textContent = `${ranked.length} protocol${ranked.length === 1 ? "" : "s"}`;
}

function scheduleResync() {
  if (table.resyncTimer !== null) return;
  const wait = Math.max(RESYNC_DELAY_MS, table.lastResync + RESYNC_MS - Date.now());
  // Marked while due or under way (tests wait for it before they stop the server).
  $("overview").dataset.syncing = "true";
  table.resyncTimer = setTimeout(async () => {
    table.lastResync = Date.now();
    try {
      await Promise.all([loadListing(), loadBreakdowns()]);
    } catch (error) {
      showError("resync", error);
    } finally {
      table.resyncTimer = null;
      delete $("overview").dataset.syncing;
    }
  }, wait);
}

/** (Re)start the table for the current filters: the listing, then the feed's snapshot
 * and updates for the same filters. */
function startTable() {
  table.generation += 1;
  table.loaded = false;
  table.early = [];
  table.rows = new Map();
  const { chain, category } = filters();
  const params = {};
  if (chain) params.chains = [chain];
  if (category) params.categories = [category];
  feed.subscribe("table", { channel: "protocols", params, snapshot: true }, onTableUpdate);
  loadListing().catch((error) => showError("listing", error));
}

// -- overview: breakdowns and filter options --------------------------------------------

function bars(list, items) {
  const largest = Math.max(1, ...items.map((item) => item.value));
  list.replaceChildren(
    ...items.map((item) => {
      const fill = el("span", { className: "fill" });
      fill.style.width = `${((100 * item.value) / largest).toFixed(1)}%`;
      return el(
        "li",
        { dataset: { key: item.key } },
        el("span", { text: item.key }),
        el("span", { className: "num", text: usd(item.value) }),
        el("span", { className: "bar" }, fill),
      );
    }),
  );
}

function setOptions(select, values, allLabel) {
  const chosen = select.value;
  const options = [el("option", { text: allLabel })];
  options[0].value = "";
  for (const value of values) {
    const option = el("option", { text: value });
    option.value = value;
    options.push(option);
  }
  if (chosen && !values.includes(chosen)) {
    const option = el("option", { text: chosen });
    option.value = chosen;
    options.push(option);
  }
  select.replaceChildren(...options);
  select.value = chosen;
}

async function loadBreakdowns() {
  const [chains, categories] = await Promise.all([
    get("/v2/chains"),
    post("/v2/query", { groupBy: "category", measures: [{ op: "sum", metric: "tvl" }] }),
  ]);
  const byChain = chains.map((chain) => ({ key: chain.name, value: chain.tvl }));
  const byCategory = categories.groups
    .map((group) => ({ key: group.key, value: group.measures.sum_tvl || 0 }))
    .sort((a, b) => b.value - a.value);
  bars($("chain-breakdown"), byChain.slice(0, BREAKDOWN_ROWS));
  bars($("category-breakdown"), byCategory.filter((item) => item.key).slice(0, BREAKDOWN_ROWS));
  setOptions($("chain-filter"), byChain.map((item) => item.key), "All chains");
  setOptions(
    $("category-filter"),
    byCategory.map((item) => item.key).filter(Boolean).sort(),
    "All categories",
  );
}

// -- protocol page ------------------------------------------------------------------------

const detail = { slug: null, points: [], chains: new Map(), tvlAt: null, drawQueued: false };

function drawDetail() {
  if (detail.drawQueued) return;
  detail.drawQueued = true;
  requestAnimationFrame(() => {
    detail.drawQueued = false;
    drawLineChart($("protocol-chart"), detail.points, `TVL of ${detail.slug}`);
    const body = document.querySelector("#protocol-chains tbody");
    const chains = [...detail.chains].sort((a, b) => b[1] - a[1]);
    $("protocol-chains-part").hidden = chains.length === 0;
    body.replaceChildren(
      ...chains.map(([chain, value]) =>
        el("tr", { dataset: { chain } }, el("td", { text: chain }), el("td", { className: "num", text: usd(value) })),
      ),
    );
  });
}

function addPoint(timestamp, value) {
  const points = detail.points;
  let index = points.length;
  while (index > 0 && points[index - 1].timestamp > timestamp) index -= 1;
  if (index > 0 && points[index - 1].timestamp === timestamp) points[index - 1].value = value;
  else points.splice(index, 0, { timestamp, value });
}

function showChange(window, change) {
  const cell = $(`protocol-change-${window}`);
  cell.textContent = change === null ? "" : `${percent(change)} ${window}`;
  cell.className = trend(change);
}

function showLive(value, change, at) {
  const tvl = $("protocol-tvl");
  tvl.textContent = usd(value);
  flash(tvl);
  if (change !== undefined) showChange("1d", change);
  $("protocol-updated").textContent = at ? `observed ${utc(at)}` : "";
}

function onProtocolUpdate(frame) {
  const data = frame.data;
  if (data.id !== detail.slug || data.metric !== "tvl") return;
  if (data.chain !== "total") {
    if (data.late !== true) detail.chains.set(data.chain, data.value);
    drawDetail();
    return;
  }
  // The chart takes every point, late ones too (they are history); the live value only
  // the current one.
  addPoint(data.timestamp, data.value);
  if (isCurrent(frame, detail.tvlAt)) {
    detail.tvlAt = data.timestamp;
    const change = data.late === false || (frame.snapshot && data.change24h !== null) ? data.change24h : undefined;
    showLive(data.value, change, data.timestamp);
  }
  drawDetail();
}

async function showProtocol(slug) {
  feed.unsubscribe("protocol");
  Object.assign(detail, { slug, points: [], chains: new Map(), tvlAt: null });
  $("protocol-name").textContent = slug;
  $("protocol-meta").textContent = "";
  $("protocol-tvl").textContent = "–";
  for (const window of ["1h", "1d", "7d"]) showChange(window, null);
  $("protocol-updated").textContent = "";
  $("protocol-missing").hidden = true;
  $("protocol-chart").replaceChildren();
  let protocol;
  try {
    protocol = await get(`/v2/protocols/${encodeURIComponent(slug)}`);
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) $("protocol-missing").hidden = false;
    else showError("protocol", error);
    return;
  }
  if (detail.slug !== slug) return;
  $("protocol-name").textContent = protocol.name;
  $("protocol-meta").textContent = [protocol.category, protocol.chains.join(", "), protocol.url]
    .filter(Boolean)
    .join(" · ");
  detail.chains = new Map(Object.entries(protocol.chainTvls));
  showLive(protocol.tvl, protocol.change_1d, protocol.updated_at);
  // The feed carries the 24 h change only: 1h and 7d are the listing's.
  showChange("1h", protocol.change_1h);
  showChange("7d", protocol.change_7d);
  const series = await get(`/v2/protocols/${encodeURIComponent(slug)}/metrics`, {
    metric: "tvl",
    limit: HISTORY_POINTS,
  });
  if (detail.slug !== slug) return;
  for (const point of series.points) addPoint(point.timestamp, point.value);
  drawDetail();
  feed.subscribe(
    "protocol",
    { channel: "protocols", params: { protocolIds: [slug] }, snapshot: true },
    onProtocolUpdate,
  );
}

// -- alerts -------------------------------------------------------------------------------

const alerts = { rules: new Map() };

function describeTarget(target) {
  if (target.token) return target.token;
  if (target.chain_id) return `MEV on chain ${target.chain_id}`;
  const chain = target.chain && target.chain !== "total" ? ` on ${target.chain}` : "";
  return `${target.protocol} ${target.metric}${chain}`;
}

function describeCondition(condition) {
  if (condition.kind === "threshold") return `${condition.direction} ${usd(condition.value)}`;
  if (condition.kind === "pct_change") {
    return `change over ${condition.window} ${condition.direction} ${percent(condition.value)}`;
  }
  if (condition.kind === "mev") {
    const by = condition.actor ? ` by ${condition.actor}` : "";
    return `${condition.detection || "mev"}${by} of at least ${usd(condition.min_profit_usd)}`;
  }
  return condition.kind;
}

/** What the rule measured: a value for a threshold, a percent change for pct_change. */
function describeMeasure(rule, measure) {
  if (rule && rule.condition.kind === "pct_change") return percent(measure);
  if (rule && rule.target.metric !== "price") return usd(measure);
  return measure.toPrecision(6);
}

function renderRules() {
  const rules = [...alerts.rules.values()];
  document.querySelector("#alert-rules tbody").replaceChildren(
    ...rules.map((rule) =>
      el(
        "tr",
        { dataset: { alertId: rule.id } },
        el("td", { text: rule.name || "(unnamed)" }),
        el("td", { text: describeTarget(rule.target) }),
        el("td", { text: describeCondition(rule.condition) }),
        el("td", { text: rule.state }),
        el("td", { className: `firing ${rule.firing === "firing" ? "down" : ""}`.trim(), text: rule.firing }),
      ),
    ),
  );
  $("no-rules").hidden = rules.length > 0;
}

async function loadRules() {
  const answer = await get("/v2/alerts");
  alerts.rules = new Map(answer.alerts.map((rule) => [rule.id, rule]));
  renderRules();
}

function onAlert(frame) {
  const rule = alerts.rules.get(frame.alertId);
  if (rule) {
    rule.firing = frame.condition;
    renderRules();
  } else {
    loadRules().catch((error) => showError("alert rules", error));
  }
  const name = rule ? rule.name || describeTarget(rule.target) : frame.alertId;
  const measure = frame.data.measure === null ? "" : ` (${describeMeasure(rule, frame.data.measure)})`;
  const item = el(
    "li",
    { dataset: { alertId: frame.alertId, condition: frame.condition } },
    el("strong", { text: frame.condition }),
    ` ${name}${measure} · ${utc(frame.timestamp)}`,
  );
  const list = $("alert-firings");
  list.prepend(item);
  while (list.children.length > FIRINGS_SHOWN) list.lastElementChild.remove();
}

function keyChanged() {
  const key = apiKey();
  $("forget-key").hidden = !key;
  $("alerts").hidden = !key;
  $("api-key").value = "";
  $("api-key").placeholder = key ? "key in use (this tab only)" : "for your alerts";
  feed.unsubscribe("alerts");
  alerts.rules = new Map();
  $("alert-firings").replaceChildren();
  feed.connect(key);
  // Everything is read again with the key (a server may require one for reads).
  startTable();
  loadBreakdowns().catch((error) => showError("breakdowns", error));
  route();
  if (!key) return;
  feed.subscribe("alerts", { channel: "alerts" }, onAlert);
  loadRules()
    .then(() => ($("key-status").textContent = ""))
    .catch((error) => {
      if (error instanceof ApiError && error.status === 401) {
        setApiKey("");
        $("key-status").textContent = "key refused";
        keyChanged();
      } else {
        showError("alert rules", error);
      }
    });
}

// -- routing and start ------------------------------------------------------------------

function route() {
  const match = /^#\/protocol\/(.+)$/.exec(location.hash);
  $("overview").hidden = Boolean(match);
  $("protocol").hidden = !match;
  if (match) {
    showProtocol(decodeURIComponent(match[1])).catch((error) => showError("protocol", error));
  } else {
    feed.unsubscribe("protocol");
    detail.slug = null;
  }
}

function start() {
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("api-key").value.trim();
    if (!key) return;
    setApiKey(key);
    $("key-status").textContent = "";
    keyChanged();
  });
  $("forget-key").addEventListener("click", () => {
    setApiKey("");
    keyChanged();
  });
  $("chain-filter").addEventListener("change", startTable);
  $("category-filter").addEventListener("change", startTable);
  window.addEventListener("hashchange", route);
  keyChanged(); // connects the feed (with this tab's key, if any) and loads the view
}

start();
