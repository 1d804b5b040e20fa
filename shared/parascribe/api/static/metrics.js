/* parascribe console: the dashboard's charts, drawn with the vendored uPlot. */
"use strict";

(function () {
  const el = (...args) => PS.el(...args);
  const COLORS = ["#1a73e8", "#e8710a", "#188038", "#d93025", "#9334e6", "#007b83", "#b06000", "#5f6368"];
  const HEIGHT = 220;
  let plots = [];
  let resizeTimer = 0;

  function fmtValue(value, title) {
    if (value === null || value === undefined) return "—";
    if (/USD/.test(title)) return PS.fmtUsd(value);
    if (Math.abs(value) >= 100) return value.toFixed(0);
    return Number(value.toPrecision(3)).toString();
  }

  function aligned(chart) {
    const xs = [...new Set(chart.series.flatMap((s) => s.points.map((p) => p[0])))].sort((a, b) => a - b);
    // One period of padding on each side, so a single bucket still has a range to draw in.
    const padded = [xs[0] - chart.period_s, ...xs, xs[xs.length - 1] + chart.period_s];
    const columns = chart.series.map((s) => {
      const byX = new Map(s.points.map((p) => [p[0], p[1]]));
      return padded.map((x) => (byX.has(x) ? byX.get(x) : null));
    });
    return [padded, ...columns];
  }

  function draw(chart, box) {
    const bars = chart.plot === "STACKED_BAR";
    const series = [{}].concat(chart.series.map((s, i) => ({
      label: s.name,
      stroke: COLORS[i % COLORS.length],
      fill: bars ? COLORS[i % COLORS.length] + "99" : undefined,
      width: bars ? 1 : 2,
      points: { show: true, size: 6 },
      paths: bars ? uPlot.paths.bars({ size: [0.6, 48] }) : undefined,
      value: (u, v) => fmtValue(v, chart.title),
    })));
    const opts = {
      width: Math.max(240, box.clientWidth),
      height: HEIGHT,
      series,
      scales: { x: { time: true } },
      axes: [{}, { size: 80, values: (u, vals) => vals.map((v) => fmtValue(v, chart.title)) }],
      legend: { live: true },
    };
    const plot = new uPlot(opts, aligned(chart), box);
    plots.push({ plot, box });
  }

  function summary(chart) {
    const list = el("ul", { class: "series-totals" });
    for (const s of chart.series) {
      const values = s.points.map((p) => p[1]);
      const additive = chart.plot === "STACKED_BAR";
      const shown = additive ? values.reduce((a, b) => a + b, 0) : values[values.length - 1];
      list.append(el("li", {}, `${s.name}: ${fmtValue(shown, chart.title)}${additive ? " in the window" : " (latest)"}`));
    }
    return list;
  }

  function card(chart) {
    const points = chart.series.reduce((n, s) => n + s.points.length, 0);
    const section = el("section", { class: "card", "aria-label": chart.title,
      dataset: { title: chart.title, points: String(points), kind: chart.kind } }, el("h2", {}, chart.title));
    if (chart.note) section.append(el("p", { class: "muted small" }, chart.note));
    if (chart.kind === "scorecard") {
      section.dataset.value = String(chart.value ?? "");
      section.append(el("p", { class: "score" }, chart.note ? "—" : fmtValue(chart.value, chart.title)));
      return { section, box: null };
    }
    if (!points) {
      if (!chart.note) section.append(el("p", { class: "muted" }, "No data in this window."));
      return { section, box: null };
    }
    const box = el("div", { class: "plot" });
    section.append(box, summary(chart));
    return { section, box };
  }

  function render(answer) {
    for (const p of plots) p.plot.destroy();
    plots = [];
    const source = { local: "local metrics file", cloud: "Cloud Monitoring", none: "metrics are off" }[answer.source];
    document.getElementById("metrics-source").textContent = "from " + (source || answer.source);
    const grid = PS.clear(document.getElementById("charts"));
    const pending = [];
    for (const chart of answer.charts) {
      const { section, box } = card(chart);
      grid.append(section);
      if (box) pending.push([chart, box]);
    }
    for (const [chart, box] of pending) draw(chart, box);
  }

  function resize() {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => {
      for (const { plot, box } of plots) plot.setSize({ width: Math.max(240, box.clientWidth), height: HEIGHT });
    }, 100);
  }

  PS.showMetrics = function () {
    const select = document.getElementById("metrics-hours");
    select.onchange = () => PS.route();
    const token = PS.current();
    PS.poll(async () => {
      const answer = await PS.api("/v1/metrics?hours=" + encodeURIComponent(select.value));
      if (token !== PS.current()) return false;
      render(answer);
      return true;
    }, 30000);
  };

  window.addEventListener("resize", resize);
})();
