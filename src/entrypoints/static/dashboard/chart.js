// A small SVG line chart: no library, built with DOM calls (no markup strings).

import { day, usd } from "./format.js";

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 800;
const HEIGHT = 260;
const PAD = { left: 70, right: 12, top: 12, bottom: 26 };

function node(name, attributes, text) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
  if (text !== undefined) element.textContent = text;
  return element;
}

/** Draw points [{timestamp, value}] (oldest first) into container, replacing its chart. */
export function drawLineChart(container, points, label) {
  container.replaceChildren();
  const svg = node("svg", {
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
    role: "img",
    "aria-label": label,
    "data-points": points.length,
  });
  svg.append(node("title", {}, label));
  if (points.length === 0) {
    svg.append(node("text", { x: WIDTH / 2, y: HEIGHT / 2, "text-anchor": "middle", class: "axis" }, "no history yet"));
    container.append(svg);
    return;
  }
  const times = points.map((p) => p.timestamp);
  const values = points.map((p) => p.value);
  let [t0, t1] = [Math.min(...times), Math.max(...times)];
  let [v0, v1] = [Math.min(...values), Math.max(...values)];
  if (t0 === t1) [t0, t1] = [t0 - 1, t1 + 1];
  if (v0 === v1) [v0, v1] = [v0 * 0.95, v1 * 1.05 || 1];
  const x = (t) => PAD.left + ((t - t0) / (t1 - t0)) * (WIDTH - PAD.left - PAD.right);
  const y = (v) => HEIGHT - PAD.bottom - ((v - v0) / (v1 - v0)) * (HEIGHT - PAD.top - PAD.bottom);

  for (const v of [v0, (v0 + v1) / 2, v1]) {
    svg.append(node("line", { x1: PAD.left, x2: WIDTH - PAD.right, y1: y(v), y2: y(v), class: "grid" }));
    svg.append(node("text", { x: PAD.left - 6, y: y(v) + 4, "text-anchor": "end", class: "axis" }, usd(v)));
  }
  svg.append(node("text", { x: PAD.left, y: HEIGHT - 6, class: "axis" }, day(t0)));
  svg.append(node("text", { x: WIDTH - PAD.right, y: HEIGHT - 6, "text-anchor": "end", class: "axis" }, day(t1)));

  const line = points.map((p, i) => `${i ? "L" : "M"}${x(p.timestamp).toFixed(1)},${y(p.value).toFixed(1)}`).join("");
  const base = HEIGHT - PAD.bottom;
  const area = `${line}L${x(t1).toFixed(1)},${base}L${x(points[0].timestamp).toFixed(1)},${base}Z`;
  svg.append(node("path", { d: area, class: "area" }));
  svg.append(node("path", { d: line, class: "line" }));
  container.append(svg);
}
