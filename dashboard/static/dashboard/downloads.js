// Live download progress over /ws/downloads/. The page is rendered from the database first; this only
// updates it: a snapshot of active jobs on every (re)connect, then progress/state events. Reconnects with
// exponential backoff. Markup contract: [data-job-id] containers with [data-f=<field>] children.
(function () {
  "use strict";
  const root = document.querySelector("[data-downloads-live]");
  if (!root) return;
  const status = document.querySelector("[data-ws-status]");
  const template = document.getElementById("job-template");
  const list = root.querySelector("[data-jobs]") || root;
  const LABELS = { queued: "Queued", running: "Running", succeeded: "Succeeded", failed: "Failed", cancelled: "Cancelled" };

  const units = ["bytes", "KB", "MB", "GB", "TB"];
  function size(n) {
    n = Number(n) || 0;
    if (n < 1024) return n + " bytes";
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return n.toFixed(1) + " " + units[i];
  }
  function duration(s) {
    if (s === null || s === undefined || !isFinite(s)) return "";
    s = Math.round(s);
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
    return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  }
  function setText(el, name, value) {
    el.querySelectorAll('[data-f="' + name + '"]').forEach((n) => { n.textContent = value; });
  }
  function showFor(el, state) {
    el.querySelectorAll("[data-show]").forEach((n) => { n.hidden = !n.dataset.show.split(",").includes(state); });
  }

  function rowFor(job) {
    let el = document.querySelector('[data-job-id="' + job.job_id + '"]');
    if (el || !template || !root.hasAttribute("data-insert")) return el;
    const html = template.innerHTML.replace(/__ID__/g, String(job.job_id));
    const holder = document.createElement("div");
    holder.innerHTML = html.trim();
    el = holder.firstElementChild;
    setText(el, "repo_id", job.repo_id);
    setText(el, "revision", job.revision);
    list.prepend(el);
    const empty = root.querySelector("[data-empty]");
    if (empty) empty.hidden = true;
    return el;
  }

  function apply(job) {
    const el = rowFor(job);
    if (!el) return;
    const state = job.state || el.dataset.state;
    const done = Number(job.bytes_done ?? el.dataset.done ?? 0);
    // Events can arrive slightly out of order around a reconnect: never move a running bar backwards.
    if (state === "running" && el.dataset.state === "running" && done < Number(el.dataset.done || 0)) return;
    el.dataset.state = state;
    el.dataset.done = String(done);
    const badge = el.querySelector('[data-f="state"]');
    if (badge) { badge.className = "badge " + state; badge.textContent = LABELS[state] || state; }
    if (job.bytes_total !== undefined) {
      const total = Number(job.bytes_total) || 0;
      const pct = state === "succeeded" ? 100 : total ? Math.min(100, (100 * done) / total) : 0;
      const bar = el.querySelector('[data-f="bar"]');
      if (bar) bar.style.width = pct.toFixed(1) + "%";
      const meter = el.querySelector('[role="progressbar"]');
      if (meter) meter.setAttribute("aria-valuenow", pct.toFixed(0));
      setText(el, "percent", pct.toFixed(1) + " %");
      setText(el, "bytes", total ? size(done) + " of " + size(total) : "");
      setText(el, "files", job.files_total ? job.files_done + "/" + job.files_total + " files" : "");
      const running = state === "running";
      setText(el, "speed", running && job.speed_bps ? size(job.speed_bps) + "/s" : "");
      setText(el, "eta", running && job.eta_seconds != null ? duration(job.eta_seconds) + " left" : "");
      setText(el, "current_file", running ? job.current_file || "" : "");
    }
    if (state === "succeeded") {
      const bar = el.querySelector('[data-f="bar"]');
      if (bar) bar.style.width = "100%";
      setText(el, "percent", "100 %");
    }
    if (job.error_code !== undefined) {
      setText(el, "error", job.error_message ? job.error_message : "");
      const err = el.querySelector('[data-f="error"]');
      if (err) err.hidden = !job.error_message;
    }
    if (job.snapshot_id) {
      el.querySelectorAll("[data-href-model]").forEach((a) => {
        a.href = a.dataset.hrefModel.replace("__SNAPSHOT__", job.snapshot_id);
      });
    }
    showFor(el, state);
  }

  let delay = 1000;
  let socket = null;
  function setStatus(ok, text) {
    if (!status) return;
    status.querySelector(".dot").className = "dot " + (ok ? "ok" : "warn");
    status.querySelector("[data-label]").textContent = text;
  }
  function connect() {
    const proto = location.protocol === "https:" ? "wss://" : "ws://";
    socket = new WebSocket(proto + location.host + (root.dataset.ws || "/ws/downloads/"));
    socket.onopen = () => { delay = 1000; setStatus(true, "Live"); };
    socket.onmessage = (msg) => {
      const data = JSON.parse(msg.data);
      if (data.type === "downloads.snapshot") data.jobs.forEach(apply);
      else if (data.type === "download.progress" || data.type === "download.state") apply(data);
    };
    socket.onclose = (event) => {
      if (event.code === 4401) {  // this login session ended (logged out): reconnecting would not help
        setStatus(false, "Logged out");
        return;
      }
      setStatus(false, "Reconnecting…");
      // Backoff with jitter, capped: a restarting server is not hammered by every open tab at once.
      setTimeout(connect, delay + Math.random() * 500);
      delay = Math.min(delay * 2, 30000);
    };
  }
  connect();
})();
