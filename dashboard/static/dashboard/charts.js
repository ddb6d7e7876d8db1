// Tiny inline-SVG charts, no library: stacked bars, lines, donut. Data comes from a json_script element:
// <div class="chart" data-chart="bars|line|donut" data-source="<script id>" data-key="tokens"></div>
// Bars/lines: {labels: [...], series: [{name, values: [...]}]}; donut: [{name, value, cls}].
(function () {
  "use strict";
  const NS = "http://www.w3.org/2000/svg";
  function el(name, attrs, parent) {
    const node = document.createElementNS(NS, name);
    for (const k in attrs) node.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(node);
    return node;
  }
  function tip(node, text) { el("title", {}, node).textContent = text; }
  function short(n) {
    if (n >= 1e9) return (n / 1e9).toFixed(1) + "G";
    if (n >= 1e6) return (n / 1e6).toFixed(1) + "M";
    if (n >= 1e3) return (n / 1e3).toFixed(1) + "k";
    return String(Math.round(n * 10) / 10);
  }
  function nice(max) {
    if (max <= 0) return 1;
    const step = Math.pow(10, Math.floor(Math.log10(max)));
    return [1, 2, 2.5, 5, 10].map((m) => m * step).find((v) => v >= max) || max;
  }

  function frame(box, data, maxValue, height) {
    const W = Math.max(box.clientWidth || 600, 280), H = height, L = 44, B = 22, T = 8;
    const svg = el("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": box.dataset.label || "chart" });
    const top = nice(maxValue);
    for (let i = 0; i <= 4; i++) {
      const y = T + ((H - T - B) * i) / 4;
      el("line", { x1: L, x2: W, y1: y, y2: y, class: "grid-line" }, svg);
      el("text", { x: L - 6, y: y + 4, "text-anchor": "end" }, svg).textContent = short(top * (1 - i / 4));
    }
    const n = data.labels.length, slot = (W - L) / Math.max(n, 1);
    const every = Math.ceil(n / Math.max(1, Math.floor((W - L) / 60)));
    data.labels.forEach((label, i) => {
      if (i % every === 0) el("text", { x: L + slot * (i + 0.5), y: H - 6, "text-anchor": "middle" }, svg).textContent = label;
    });
    return { svg, W, H, L, B, T, top, slot, y: (v) => T + (H - T - B) * (1 - v / top) };
  }

  function bars(box, data) {
    const n = data.labels.length;
    const totals = data.labels.map((_, i) => data.series.reduce((s, x) => s + (x.values[i] || 0), 0));
    const f = frame(box, data, Math.max(...totals, 0), 200);
    const w = Math.max(2, f.slot * 0.66);
    for (let i = 0; i < n; i++) {
      let base = 0;
      data.series.forEach((s, k) => {
        const v = s.values[i] || 0;
        if (!v) return;
        const y0 = f.y(base), y1 = f.y(base + v);
        const r = el("rect", { x: f.L + f.slot * i + (f.slot - w) / 2, y: y1, width: w, height: Math.max(1, y0 - y1), class: "f" + ((k % 7) + 1) }, f.svg);
        tip(r, s.name + " · " + data.labels[i] + ": " + v.toLocaleString());
        base += v;
      });
    }
    return f.svg;
  }

  function line(box, data) {
    const all = data.series.flatMap((s) => s.values.filter((v) => v !== null));
    const f = frame(box, data, Math.max(...all, 0), 160);
    data.series.forEach((s, k) => {
      let d = "", pen = false;
      s.values.forEach((v, i) => {
        if (v === null) { pen = false; return; }
        const x = f.L + f.slot * (i + 0.5), y = f.y(v);
        d += (pen ? "L" : "M") + x.toFixed(1) + " " + y.toFixed(1);
        pen = true;
        tip(el("circle", { cx: x, cy: y, r: 3, class: "f" + (k + 1) }, f.svg), s.name + " · " + data.labels[i] + ": " + v);
      });
      el("path", { d: d, fill: "none", "stroke-width": 2, class: "k" + (k + 1) }, f.svg);
    });
    return f.svg;
  }

  function donut(box, segments) {
    // A non-zero slice gets at least 1.5 % of the ring, or 20 MB of models on a 250 GB disk would not show.
    const sizes = segments.map((x) => x.value);
    const raw = sizes.reduce((a, b) => a + b, 0) || 1;
    const shown = sizes.map((v) => (v > 0 ? Math.max(v, raw * 0.015) : 0));
    const total = shown.reduce((a, b) => a + b, 0) || 1, R = 15.915, C = 2 * Math.PI * R;
    const svg = el("svg", { viewBox: "0 0 42 42", role: "img", "aria-label": box.dataset.label || "chart" });
    let offset = 0;
    segments.forEach((seg, i) => {
      const len = (shown[i] / total) * C;
      const c = el("circle", { cx: 21, cy: 21, r: R, fill: "none", "stroke-width": 6, "stroke-dasharray": len + " " + (C - len), "stroke-dashoffset": -offset, transform: "rotate(-90 21 21)" }, svg);
      c.style.stroke = "var(" + (seg.color || "--c7") + ")";
      tip(c, seg.name);
      offset += len;
    });
    if (box.dataset.center) el("text", { x: 21, y: 23, "text-anchor": "middle", "font-size": 6, "font-weight": 700, fill: "currentColor" }, svg).textContent = box.dataset.center;
    return svg;
  }

  const kinds = { bars, line, donut };
  function draw(box) {
    const src = document.getElementById(box.dataset.source);
    if (!src) return;
    let data = JSON.parse(src.textContent);
    if (box.dataset.key) box.dataset.key.split(".").forEach((k) => { data = data[k]; });
    box.replaceChildren(kinds[box.dataset.chart](box, data));
  }
  function drawAll() { document.querySelectorAll("[data-chart]").forEach(draw); }
  let timer;
  window.addEventListener("resize", () => { clearTimeout(timer); timer = setTimeout(drawAll, 150); });
  drawAll();
})();
