// Number and time formatting for the dashboard.

const UNITS = [[1e12, "T"], [1e9, "B"], [1e6, "M"], [1e3, "K"]];

/** "$1.23B" for 1.23e9; "–" for a missing value. */
export function usd(value) {
  if (value === null || value === undefined || !Number.isFinite(value)) return "–";
  for (const [size, unit] of UNITS) {
    if (Math.abs(value) >= size) return `$${(value / size).toFixed(2)}${unit}`;
  }
  return `$${value.toFixed(2)}`;
}

/** "+1.23%" / "-4.00%"; "–" for a missing value. */
export function percent(value) {
  if (value === null || value === undefined || !Number.isFinite(value)) return "–";
  const shown = value.toFixed(2);
  if (Number(shown) === 0) return "0.00%"; // not "-0.00%"
  return `${value > 0 ? "+" : ""}${shown}%`;
}

/** The CSS class of a change: "up", "down" or "". */
export function trend(value) {
  if (value === null || value === undefined || !Number.isFinite(value)) return "";
  const shown = Number(value.toFixed(2)); // as percent() shows it
  return shown === 0 ? "" : shown > 0 ? "up" : "down";
}

/** A unix time (seconds) as "2025-12-01 14:05 UTC". */
export function utc(seconds) {
  if (seconds === null || seconds === undefined) return "";
  return `${new Date(seconds * 1000).toISOString().slice(0, 16).replace("T", " ")} UTC`;
}

/** A unix time (seconds) as a short date "2025-12-01". */
export function day(seconds) {
  return new Date(seconds * 1000).toISOString().slice(0, 10);
}
