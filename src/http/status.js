// Keeps the status page current: polls /api/v1/status every 2 s, counts
// expiry down every second, and writes every value with textContent so
// that no value is ever parsed as markup.
"use strict";
(function () {
  var tokens = [];
  var coordination = null; // {up: bool} when coordination is configured
  var offset = 0; // server time minus browser time, in milliseconds

  function span(seconds) {
    var s = Math.round(Math.abs(seconds));
    var h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), rest = s % 60;
    var parts = [];
    if (h) parts.push(h + "h");
    if (m) parts.push(m + "m");
    if (rest || parts.length === 0) parts.push(rest + "s");
    return parts.join(" ");
  }

  function relative(iso, now) {
    if (!iso) return null;
    var seconds = (Date.parse(iso) - now) / 1000;
    return seconds >= 0 ? "in " + span(seconds) : span(seconds) + " ago";
  }

  function cell(row, text, className) {
    var td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    row.appendChild(td);
    return td;
  }

  function render() {
    var now = Date.now() + offset;
    var body = document.getElementById("tokens");
    var rows = document.createDocumentFragment();
    var valid = 0;
    tokens.forEach(function (token) {
      var state = token.state;
      if (state === "valid" && token.expires_at && Date.parse(token.expires_at) <= now) state = "expired";
      if (state === "valid") valid += 1;
      var row = document.createElement("tr");
      row.dataset.token = token.name;
      row.dataset.expiresAt = token.expires_at || "";
      row.dataset.lastRefresh = token.last_refresh || "";
      cell(row, token.name);
      cell(row, token.source);
      var stateCell = cell(row, state, state);
      if (token.reauth_required) {
        var note = document.createElement("span");
        note.className = "reauth";
        note.textContent = " (re-authentication required)";
        stateCell.appendChild(note);
      }
      cell(row, relative(token.expires_at, now) || "-", "expires-in");
      cell(row, relative(token.last_refresh, now) || "never");
      cell(row, relative(token.next_refresh, now) || "-");
      cell(row, String(token.consecutive_failures));
      cell(row, token.last_error || "-");
      var sinks = cell(row, token.sinks.length ? "" : "none (memory only)");
      token.sinks.forEach(function (sink) {
        var line = document.createElement("div");
        line.textContent = sink.id + ": synced " + (relative(sink.last_success, now) || "never");
        if (sink.last_failure_reason) {
          var failing = document.createElement("span");
          failing.className = "failing";
          failing.textContent = ", failing: " + sink.last_failure_reason;
          line.appendChild(failing);
        }
        sinks.appendChild(line);
      });
      rows.appendChild(row);
    });
    body.replaceChildren(rows);
    var coordinationText = "";
    if (coordination) {
      coordinationText = coordination.up
        ? " Coordination through Redis: up."
        : " Coordination through Redis: down; tokens with rotating refresh tokens are held.";
    }
    document.getElementById("summary").textContent =
      valid + " of " + tokens.length + " tokens valid at " + new Date(now).toISOString().replace(/\.\d+Z$/, "Z") + "." + coordinationText;
  }

  function poll() {
    fetch("/api/v1/status", { cache: "no-store" })
      .then(function (response) {
        if (!response.ok) throw new Error("status " + response.status);
        return response.json();
      })
      .then(function (data) {
        offset = Date.parse(data.now) - Date.now();
        tokens = data.tokens;
        coordination = data.coordination;
        render();
      })
      .catch(function () {
        document.getElementById("summary").textContent = "tokensync is not answering; retrying.";
      });
  }

  poll();
  setInterval(poll, 2000);
  setInterval(function () { if (tokens.length) render(); }, 1000);
})();
