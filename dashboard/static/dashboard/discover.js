// Discover: results the Hub's listing left without sizes are checked one repo at a time after the page shows
// (a few at once: data-details-concurrency), each row filled in as its answer arrives; "Only what fits here"
// hides the results whose verdict is red, and families left empty.
(function () {
  "use strict";
  const results = document.querySelector("[data-testid=discover-results]");
  if (!results) return;
  const toggle = document.querySelector("[data-discover-fits]");

  function applyFilter() {
    if (!toggle) return;
    document.querySelectorAll("[data-testid=discover-group]").forEach(function (group) {
      let shown = 0;
      group.querySelectorAll("[data-testid=discover-result]").forEach(function (row) {
        const hide = toggle.checked && row.dataset.verdict === "red";
        row.hidden = hide;
        if (!hide) shown += 1;
      });
      group.hidden = shown === 0;
    });
  }

  function bytes(n) {
    const units = ["bytes", "KB", "MB", "GB", "TB"];
    let value = n;
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return unit === 0 ? n + " bytes" : value.toFixed(1) + "\u00a0" + units[unit];
  }

  function count(n) {
    const steps = [[1e12, " trillion"], [1e9, " billion"], [1e6, " million"]];
    for (const [size, word] of steps) {
      if (n >= size) return (n / size).toFixed(1) + word;
    }
    return n.toLocaleString();
  }

  function cell(row, name, text) {
    const td = row.querySelector("[data-cell=" + name + "]");
    if (td) td.textContent = text;
  }

  function fill(row, result) {
    cell(row, "quantization", result.quantization || "—");
    const approx = result.quantization.indexOf("bit") >= 0 ? "≈" : "";
    cell(row, "parameters", result.parameters ? approx + count(result.parameters) : "—");
    cell(row, "size", result.weights_bytes === null ? "—" : bytes(result.weights_bytes));
    const badge = row.querySelector("[data-testid=verdict]");
    badge.className = "badge " + result.verdict;
    badge.textContent = result.verdict;
    badge.title = result.verdict_reason;
    const reason = row.querySelector("[data-reason]");
    if (reason) reason.textContent = " " + result.verdict_reason;
    row.dataset.verdict = result.verdict;
  }

  function check(row) {
    row.dataset.details = "checking";
    const badge = row.querySelector("[data-testid=verdict]");
    badge.textContent = "checking…";
    return fetch(row.dataset.detailsUrl, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        return response.json().then(function (body) {
          if (!response.ok) throw new Error((body.error && body.error.message) || "HTTP " + response.status);
          fill(row, body);
          row.dataset.details = "done";
        });
      })
      .catch(function (err) {
        // The row keeps its amber "size unknown": the pull plan, one click away, still tells.
        badge.textContent = row.dataset.verdict;
        badge.title = "Could not check: " + err.message;
        row.dataset.details = "failed";
      })
      .then(applyFilter);
  }

  // A small pool: at most `limit` checks in flight for this page, the next one started as one ends.
  const queue = Array.from(results.querySelectorAll("[data-details=pending]"));
  const limit = Math.max(1, parseInt(results.dataset.detailsConcurrency, 10) || 4);
  function next() {
    const row = queue.shift();
    if (row) check(row).then(next);
  }
  for (let i = 0; i < limit; i += 1) next();

  if (toggle) {
    toggle.addEventListener("change", applyFilter);
    applyFilter();
  }
})();
