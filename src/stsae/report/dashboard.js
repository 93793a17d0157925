// Concept dashboard of report.html: plain JS, no library, no network. Reads the JSON in
// #dashboard-data (built by stsae/report/dashboard.py) and renders the concept table, one card per
// concept on demand and the window view. Waveforms arrive as base64 int8 with a scale.
(function () {
  "use strict";
  const source = document.getElementById("dashboard-data");
  const root = document.getElementById("dashboard");
  if (!source || !root) { return; }
  const data = JSON.parse(source.textContent);
  if (!data.available) { return; }
  const SVG = "http://www.w3.org/2000/svg";

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    Object.entries(attrs || {}).forEach(([k, v]) => {
      if (k === "text") { node.textContent = v; } else { node.setAttribute(k, v); }
    });
    (children || []).forEach(c => node.appendChild(typeof c === "string" ? document.createTextNode(c) : c));
    return node;
  }
  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    Object.entries(attrs || {}).forEach(([k, v]) => node.setAttribute(k, v));
    return node;
  }
  function decode(packed) {
    const bytes = atob(packed.b);
    const out = new Array(bytes.length);
    for (let i = 0; i < bytes.length; i++) {
      const q = bytes.charCodeAt(i) > 127 ? bytes.charCodeAt(i) - 256 : bytes.charCodeAt(i);
      out[i] = q === -128 ? NaN : q * packed.s;
    }
    return out;
  }
  function fmt(v, digits) {
    return (v === null || v === undefined || Number.isNaN(v)) ? "—" : Number(v).toFixed(digits === undefined ? 3 : digits);
  }
  function na(reason) { return "n/a (" + reason + ")"; }

  function line(values, w, h, color, marks) {
    const box = svg("svg", {width: w, height: h, viewBox: "0 0 " + w + " " + h, "class": "spark"});
    const finite = values.filter(v => !Number.isNaN(v));
    if (!finite.length) { return box; }
    const lo = Math.min(...finite), hi = Math.max(...finite), span = (hi - lo) || 1;
    const x = i => (i / Math.max(values.length - 1, 1)) * (w - 4) + 2;
    const y = v => h - 3 - ((v - lo) / span) * (h - 6);
    (marks || []).forEach(m => box.appendChild(svg("line", {x1: x(m), x2: x(m), y1: 0, y2: h,
      stroke: "#c0262d", "stroke-width": 1, "stroke-dasharray": "2,2", "class": "onset"})));
    const pts = values.map((v, i) => Number.isNaN(v) ? null : x(i).toFixed(1) + "," + y(v).toFixed(1))
      .filter(p => p !== null).join(" ");
    box.appendChild(svg("polyline", {points: pts, fill: "none", stroke: color, "stroke-width": 1.3}));
    return box;
  }

  function histogram(hist) {
    const w = 260, h = 70, box = svg("svg", {width: w, height: h + 16, "class": "hist"});
    if (!hist.counts.length) { return box; }
    const top = Math.max(...hist.counts), bw = w / hist.counts.length;
    hist.counts.forEach((c, i) => box.appendChild(svg("rect", {x: i * bw + 0.5, width: bw - 1,
      y: h - (c / top) * h, height: (c / top) * h, fill: "#0b4f8a"})));
    const label = (t, x, anchor) => { const n = svg("text", {x: x, y: h + 13, "font-size": 10,
      "text-anchor": anchor, fill: "#5b6875"}); n.textContent = t; box.appendChild(n); };
    label(Math.pow(10, hist.lo).toPrecision(2), 0, "start");
    label("log10 activation", w / 2, "middle");
    label(Math.pow(10, hist.hi).toPrecision(2), w, "end");
    return box;
  }

  function windowThumb(wid, concept) {
    const w = data.windows[wid];
    const act = (w.act.find(a => a[0] === concept) || [null, 0])[1];
    const link = el("a", {href: "#window-" + wid, "class": "thumb", "data-window": wid});
    link.appendChild(line(decode(w.w), 180, 46, "#1d2733", w.on));
    link.appendChild(el("div", {"class": "muted",
      text: "a=" + fmt(act, 2) + " · pt " + w.p + " · " + fmt(w.age, 0) + " y " + (w.sex || "?") + " · " + (w.src || "?")}));
    return link;
  }

  function effectTable(c) {
    const rows = [];
    const age = c.effect.age;
    rows.push(["Predicted age", age.na ? na(age.na) :
      fmt(age.coef, 2) + " y per SD of patient-mean activation; contributions " + fmt(age.lo, 2) + " … " +
      fmt(age.hi, 2) + " y (SD " + fmt(age.sd, 2) + ")"]);
    ["htn", "t2d"].forEach(k => {
      const e = c.effect[k];
      rows.push([k.toUpperCase() + " OR per SD (adj. age, sex)", e.na ? na(e.na) :
        fmt(e.or, 2) + " [" + fmt(e.lo, 2) + ", " + fmt(e.hi, 2) + "], p " + Number(e.p).toPrecision(2) + ", n " + e.n]);
    });
    const body = rows.map(r => el("tr", {}, [el("td", {text: r[0]}), el("td", {text: r[1]})]));
    return el("table", {"class": "effects"}, [el("tbody", {}, body)]);
  }

  function morphTable(c) {
    if (c.morph.na) { return el("p", {"class": "muted", text: "Morphology: " + na(c.morph.na)}); }
    const head = el("tr", {}, ["Feature", "Spearman ρ [95% CI]", "q", "patients"].map(t => el("th", {text: t})));
    const body = c.morph.map(r => el("tr", {}, [el("td", {text: r[0]}),
      el("td", {text: fmt(r[1], 2) + " [" + fmt(r[2], 2) + ", " + fmt(r[3], 2) + "]"}),
      el("td", {text: r[4] === null ? "—" : Number(r[4]).toPrecision(2)}), el("td", {text: r[5] === null ? "—" : r[5]})]));
    return el("table", {"class": "morph"}, [el("thead", {}, [head]), el("tbody", {}, body)]);
  }

  function pulsePanel(c) {
    const p = c.pulses;
    if (p.reason) { return el("p", {"class": "muted", text: "Average pulse: " + na(p.reason)}); }
    const box = el("div", {"class": "pulses"});
    box.appendChild(line(decode(p.high), 220, 90, "#c0262d"));
    box.appendChild(line(decode(p.low), 220, 90, "#0b4f8a"));
    const n = v => (v === null ? "" : " (n " + v + ")");
    box.appendChild(el("div", {"class": "muted", text: "red: highest decile" + n(p.n_high) + ", blue: lowest active decile" +
      n(p.n_low) + "; " + p.src}));
    return box;
  }

  function reliability(c) {
    const names = {lag1: "Within-record lag-1 (adjacent − non-adjacent r)", consistency: "Consistency (Jaccard)",
                   matched_cos: "Matched cosine across seeds"};
    const body = Object.keys(names).map(k => {
      const cell = c.rel[k];
      const text = cell.na ? na(cell.na) : fmt(cell.v, 3) + (cell.null !== undefined ? " (independent-firing null " + fmt(cell.null, 3) + ")" : "") + " — " + cell.note;
      return el("tr", {}, [el("td", {text: names[k]}), el("td", {text: text})]);
    });
    return el("table", {"class": "reliability"}, [el("tbody", {}, body)]);
  }

  function mixTable(c) {
    const parts = Object.entries(c.mix).map(([k, counts]) => el("div", {}, [el("b", {text: k + ": "}),
      Object.entries(counts).map(([v, n]) => v + " " + n).join(", ") || "—"]));
    return el("div", {"class": "mix"}, parts);
  }

  function renderCard(id) {
    const c = data.concepts.find(x => x.id === id);
    const host = document.getElementById("concept-card");
    host.replaceChildren();
    if (!c) { return; }
    host.appendChild(el("h3", {text: "Concept " + c.id}));
    host.appendChild(el("p", {"class": "density", text: "Fires on " + (100 * c.density).toFixed(2) + "% of windows (" +
      c.n_active + "); mean active value " + fmt(c.mean_active, 3)}));
    host.appendChild(histogram(c.hist));
    host.appendChild(el("h4", {text: "Top activating windows (≤ 2 per patient; red: beat onsets)"}));
    host.appendChild(el("div", {"class": "thumbs top"}, c.top.map(w => windowThumb(String(w), c.id))));
    host.appendChild(el("h4", {text: "Windows per activation quantile (lowest first)"}));
    if (!c.quantiles.length) {
      host.appendChild(el("p", {"class": "muted", text: na("left out: " + data.n_live + " concepts exceed the report's example cap")}));
    }
    c.quantiles.forEach((ws, i) => host.appendChild(el("div", {"class": "thumbs quantile"},
      [el("div", {"class": "qlabel", text: "Q" + (i + 1)}), ...ws.map(w => windowThumb(String(w), c.id))])));
    host.appendChild(el("h4", {text: "Effects"}));
    host.appendChild(effectTable(c));
    host.appendChild(morphTable(c));
    host.appendChild(el("h4", {text: "Average pulse"}));
    host.appendChild(pulsePanel(c));
    host.appendChild(el("h4", {text: "Reliability"}));
    host.appendChild(reliability(c));
    host.appendChild(el("h4", {text: "Mix among its top " + Object.values(c.mix.sex).reduce((a, b) => a + b, 0) + " windows"}));
    host.appendChild(mixTable(c));
    host.scrollIntoView();
  }

  function renderWindow(wid) {
    const w = data.windows[wid];
    const host = document.getElementById("window-view");
    host.replaceChildren();
    if (!w) { return; }
    const patient = data.patients[w.p] || {contrib: {}};
    host.appendChild(el("h3", {text: "Window " + wid + " · patient " + w.p}));
    host.appendChild(el("p", {"class": "muted", text: "age " + fmt(w.age, 0) + ", sex " + (w.sex || "?") + ", " + (w.src || "?") +
      ", split " + w.split + "; predicted age " + (patient.pred === null || patient.pred === undefined
        ? "n/a (only validation and test patients are predicted)" : fmt(patient.pred, 1))}));
    host.appendChild(line(decode(w.w), 900, 120, "#1d2733", w.on));
    const head = el("tr", {}, ["Concept", "Activation here", "Contribution to patient's predicted age (y)"].map(t => el("th", {text: t})));
    const body = w.act.slice().sort((a, b) => b[1] - a[1]).map(a => el("tr", {}, [
      el("td", {}, [el("a", {href: "#concept-" + a[0], "data-concept": a[0], text: String(a[0])})]),
      el("td", {text: fmt(a[1], 3)}),
      el("td", {text: patient.contrib[String(a[0])] === undefined ? "0 (not in the age model)" : fmt(patient.contrib[String(a[0])], 2)})]));
    host.appendChild(el("table", {"class": "window-concepts"}, [el("thead", {}, [head]), el("tbody", {}, body)]));
    host.scrollIntoView();
  }

  const columns = [
    ["id", "Concept", c => c.id], ["density", "Density", c => c.density],
    ["age", "Age coef (y/SD)", c => c.effect.age.na ? null : c.effect.age.coef],
    ["htn", "HTN OR/SD", c => c.effect.htn.na ? null : c.effect.htn.or],
    ["t2d", "T2D OR/SD", c => c.effect.t2d.na ? null : c.effect.t2d.or],
    ["lag1", "Lag-1", c => c.rel.lag1.na ? null : c.rel.lag1.v],
    ["consistency", "Consistency", c => c.rel.consistency.na ? null : c.rel.consistency.v],
    ["matched_cos", "Matched cos", c => c.rel.matched_cos.na ? null : c.rel.matched_cos.v]];
  let sortKey = "age", descending = true;

  function renderTable() {
    const filter = document.getElementById("concept-filter").value.trim();
    const onlyAge = document.getElementById("concept-age-only").checked;
    const get = columns.find(c => c[0] === sortKey)[2];
    const rows = data.concepts.filter(c => (!filter || String(c.id).startsWith(filter)) &&
      (!onlyAge || (!c.effect.age.na && c.effect.age.coef !== 0)));
    const value = c => { const v = get(c); return v === null ? -Infinity : (sortKey === "age" ? Math.abs(v) : v); };
    rows.sort((a, b) => (descending ? value(b) - value(a) : value(a) - value(b)) || a.id - b.id);
    const body = document.querySelector("#concept-table tbody");
    body.replaceChildren(...rows.map(c => el("tr", {"data-concept": c.id}, columns.map((col, i) => el("td",
      {"class": i ? "num" : ""}, [i ? fmt(col[2](c), 3) : el("a", {href: "#concept-" + c.id, "data-concept": c.id, text: String(c.id)})])))));
    document.getElementById("concept-count").textContent = rows.length + " of " + data.concepts.length + " live concepts";
  }

  function buildTable() {
    const head = el("tr", {}, columns.map(col => {
      const th = el("th", {"data-key": col[0], "class": "sortable", text: col[1]});
      th.addEventListener("click", () => {
        descending = sortKey === col[0] ? !descending : true;
        sortKey = col[0];
        renderTable();
      });
      return th;
    }));
    document.querySelector("#concept-table thead").appendChild(head);
    document.getElementById("concept-filter").addEventListener("input", renderTable);
    document.getElementById("concept-age-only").addEventListener("change", renderTable);
    renderTable();
  }

  function buildWindowPicker() {
    const select = document.getElementById("window-picker");
    const byPatient = {};
    Object.entries(data.windows).forEach(([wid, w]) => { (byPatient[w.p] = byPatient[w.p] || []).push(wid); });
    Object.keys(byPatient).sort().forEach(p => {
      const group = el("optgroup", {label: "patient " + p});
      byPatient[p].forEach(wid => group.appendChild(el("option", {value: wid, text: "window " + wid})));
      select.appendChild(group);
    });
    select.addEventListener("change", () => { location.hash = "window-" + select.value; });
  }

  function route() {
    const hash = location.hash.slice(1);
    if (hash.startsWith("concept-")) { renderCard(Number(hash.slice(8))); }
    if (hash.startsWith("window-")) { renderWindow(hash.slice(7)); }
  }

  buildTable();
  buildWindowPicker();
  window.addEventListener("hashchange", route);
  route();
}());
