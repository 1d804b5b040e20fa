/* parascribe console: one job — player, transcript, downloads, plan and deliveries. */
"use strict";

(function () {
  const el = (...args) => PS.el(...args);
  const LOW_CONFIDENCE = 0.6;
  const PARAGRAPH_GAP_S = 1.5;
  const PARAGRAPH_WORDS = 80;
  let words = [];
  let buttons = [];
  let currentIndex = -1;
  let frame = 0;

  function fact(list, term, value) {
    if (value === null || value === undefined || value === "") return;
    list.append(el("dt", {}, term), el("dd", {}, value));
  }

  function renderHeader(job) {
    document.getElementById("job-title").textContent = PS.jobName(job);
    const facts = PS.clear(document.getElementById("job-facts"));
    const s = job.summary || {};
    const progress = job.state === "transcribing" && job.chunks_total ? ` ${job.chunks_done}/${job.chunks_total}` : "";
    fact(facts, "State", el("span", { class: "state state-" + job.state, id: "job-state" }, job.state + progress));
    fact(facts, "Duration", PS.fmtDuration(s.duration_s));
    fact(facts, "Engines", (s.engines || job.engines || []).join(", ") || "—");
    fact(facts, "Cost", job.summary ? PS.fmtUsd(s.cost_usd) : "—");
    fact(facts, "Savings", job.summary ? PS.fmtUsd(s.savings_usd) : "—");
    fact(facts, "Created", job.created_at ? new Date(job.created_at).toLocaleString() : null);
    fact(facts, "Source URL", job.url);
    fact(facts, "Job id", job.job_id);
    const reason = document.getElementById("job-reason");
    reason.textContent = job.state === "failed" ? "Failed: " + (job.reason || "no reason recorded") : "";
    reason.hidden = job.state !== "failed";
    document.getElementById("cancel-job").hidden = job.state === "done" || job.state === "failed";
  }

  const CANCEL_LABEL = "Cancel job";

  function resetCancel() {
    const button = document.getElementById("cancel-job");
    button.textContent = CANCEL_LABEL;
    button.disabled = false;
    delete button.dataset.armed;
  }

  // Two clicks, no dialog: the first arms the button and says what a cancel does, the second sends it.
  async function cancelJob(jobId) {
    const button = document.getElementById("cancel-job");
    const msg = document.getElementById("cancel-msg");
    if (!button.dataset.armed) {
      button.dataset.armed = "1";
      button.textContent = "Confirm: cancel this job";
      msg.textContent = "It ends failed; chunks not yet transcribed are skipped.";
      return;
    }
    button.disabled = true;
    msg.textContent = "Cancelling…";
    try {
      const answer = await PS.api(`/v1/jobs/${encodeURIComponent(jobId)}/cancel`, { method: "POST" });
      msg.textContent = "Cancel requested: " + answer.note;
    } catch (err) {
      msg.textContent = "Not cancelled: " + err.message;
    }
    resetCancel();
  }

  function paragraphs(list) {
    const out = [];
    let current = [];
    list.forEach((w, i) => {
      const prev = list[i - 1];
      const gap = prev ? w.start - prev.end : 0;
      const sentenceEnd = prev && /[.?!]$/.test(prev.text);
      if (current.length && (gap > PARAGRAPH_GAP_S || (current.length >= PARAGRAPH_WORDS && sentenceEnd))) {
        out.push(current);
        current = [];
      }
      current.push(i);
    });
    if (current.length) out.push(current);
    return out;
  }

  function seek(seconds) {
    const player = document.getElementById("player");
    player.currentTime = seconds;
    highlight(seconds);
  }

  function renderTranscript(doc) {
    const box = PS.clear(document.getElementById("transcript"));
    words = doc.words || [];
    buttons = [];
    currentIndex = -1;
    if (!words.length) {
      box.append(el("p", { class: "muted" }, "No speech was found in this file."));
      return;
    }
    for (const para of paragraphs(words)) {
      const start = words[para[0]].start;
      const p = el("p", { class: "para" },
        el("button", { type: "button", class: "ts", "aria-label": "Play from " + PS.fmtDuration(start),
          onclick: () => seek(start) }, PS.fmtDuration(start)), " ");
      for (const i of para) {
        const w = words[i];
        const low = typeof w.confidence === "number" && w.confidence < LOW_CONFIDENCE;
        const button = el("button", {
          type: "button", class: low ? "w low" : "w", dataset: { i: String(i), start: String(w.start) },
          title: low ? `low confidence (${Math.round(w.confidence * 100)}%)` : null,
        }, w.text);
        buttons.push(button);
        p.append(button, " ");
      }
      box.append(p);
    }
  }

  function indexAt(t) {
    let lo = 0, hi = words.length - 1, found = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (words[mid].start <= t) { found = mid; lo = mid + 1; } else hi = mid - 1;
    }
    return found >= 0 && t <= words[found].end + 0.25 ? found : -1;
  }

  function highlight(t) {
    const i = indexAt(t);
    if (i === currentIndex) return;
    if (currentIndex >= 0 && buttons[currentIndex]) {
      buttons[currentIndex].classList.remove("cur");
      buttons[currentIndex].removeAttribute("aria-current");
    }
    currentIndex = i;
    if (i >= 0 && buttons[i]) {
      buttons[i].classList.add("cur");
      buttons[i].setAttribute("aria-current", "true");
    }
  }

  function follow() {
    const player = document.getElementById("player");
    highlight(player.currentTime);
    if (!player.paused) frame = requestAnimationFrame(follow);
  }

  function renderLinks(links) {
    const player = document.getElementById("player");
    if (links.audio && player.getAttribute("src") !== links.audio) player.src = links.audio;
    const list = PS.clear(document.getElementById("downloads"));
    const formats = Object.keys(links.outputs || {});
    if (!formats.length) list.append(el("li", { class: "muted" }, "Outputs appear when the job is done."));
    for (const fmt of formats) {
      list.append(el("li", {}, el("a", { href: links.outputs[fmt], "data-format": fmt, rel: "noreferrer" }, fmt)));
    }
    if (formats.length) {
      list.append(el("li", { class: "muted small" }, `links expire in ${Math.round(links.expires_in_s / 60)} min; reload the page for fresh ones`));
    }
  }

  function delivery(list, name, state) {
    if (!state) return;
    let text = state.state;
    if (state.attempts) text += `, ${state.attempts} attempt${state.attempts === 1 ? "" : "s"}`;
    if (state.delivered_at) text += ", delivered " + new Date(state.delivered_at).toLocaleString();
    fact(list, name, el("span", { "data-delivery": name.toLowerCase() }, text));
    if (state.last_error) fact(list, name + " note", state.last_error);
  }

  function renderPlan(plan) {
    const p = plan.plan;
    document.getElementById("plan-summary").textContent = p ? p.summary : (plan.note || "");
    const facts = PS.clear(document.getElementById("plan-facts"));
    if (p) {
      fact(facts, "Method", p.requested_method === p.method ? p.method : `${p.method} (asked: ${p.requested_method})`);
      fact(facts, "Deadline", PS.fmtDuration(p.deadline_s));
      fact(facts, "Language", p.language || null);
      fact(facts, "Estimated finish", PS.fmtDuration(p.finish_s) + (p.meets_deadline ? "" : " (misses the deadline)"));
      fact(facts, "Chunks", `${p.chunk_count} (${p.gpu_chunks} GPU, ${p.deepgram_chunks} Deepgram)`);
      fact(facts, "Why Deepgram", p.spill_reason === "none" ? null : p.spill_reason);
      fact(facts, "GPU backlog", `${Math.round(p.backlog_audio_s)} s of audio (${p.backlog_source})`);
      fact(facts, "Deepgram queue", p.deepgram_queued_requests
        ? `${p.deepgram_queued_requests} request${p.deepgram_queued_requests === 1 ? "" : "s"} ` +
          `(${Math.round(p.deepgram_queued_audio_s)} s of audio), ` +
          `${p.deepgram_slots} at a time`
        : null);
      fact(facts, "Estimated cost", `${PS.fmtUsd(p.cost_usd)} (all-Deepgram ${PS.fmtUsd(p.deepgram_only_usd)})`);
      fact(facts, "Degraded", p.degraded);
    }
    fact(facts, "Fallbacks", String(plan.fallbacks));
    const body = PS.clear(document.getElementById("chunks-body"));
    for (const c of plan.chunks) {
      const ran = c.engine ? `${c.engine} (${c.path})` : plan.state === "failed" ? "not run" : "pending";
      body.append(el("tr", {},
        el("td", { "data-label": "Chunk" }, String(c.index + 1)),
        el("td", { "data-label": "Span" }, `${PS.fmtDuration(c.start_s)}–${PS.fmtDuration(c.end_s)}`),
        el("td", { "data-label": "Planned" }, c.planned),
        el("td", { "data-label": "Ran on" }, ran),
        el("td", { "data-label": "Fallback / error", class: c.error ? "error" : "" }, c.error || c.fallback_reason || "—")));
    }
    const list = PS.clear(document.getElementById("deliveries"));
    delivery(list, "Webhook", plan.webhook);
    delivery(list, "Callback", plan.callback);
    const final = plan.state === "done" || plan.state === "failed";
    document.getElementById("redeliver").disabled = !final;
  }

  async function redeliver(jobId) {
    const msg = document.getElementById("redeliver-msg");
    msg.textContent = "Asking…";
    try {
      const answer = await PS.api(`/v1/jobs/${encodeURIComponent(jobId)}/webhook/redeliver`, { method: "POST" });
      renderPlan(await PS.api(`/v1/jobs/${encodeURIComponent(jobId)}/plan`));
      msg.textContent = "Queued: " + answer.detail;
    } catch (err) {
      msg.textContent = "Not redelivered: " + err.message;
    }
  }

  PS.showJob = function (jobId) {
    const token = PS.current();
    const path = "/v1/jobs/" + encodeURIComponent(jobId);
    const player = document.getElementById("player");
    player.removeAttribute("src");
    player.load();
    PS.clear(document.getElementById("transcript")).append(
      el("p", { class: "muted" }, "The transcript appears when the job is done."));
    document.getElementById("redeliver-msg").textContent = "";
    document.getElementById("redeliver").onclick = () => redeliver(jobId);
    resetCancel();
    document.getElementById("cancel-msg").textContent = "";
    document.getElementById("cancel-job").onclick = () => cancelJob(jobId);
    player.onplay = () => { cancelAnimationFrame(frame); follow(); };
    player.ontimeupdate = () => highlight(player.currentTime);
    player.onseeked = () => highlight(player.currentTime);
    document.getElementById("transcript").onclick = (event) => {
      const target = event.target.closest("button.w");
      if (target) seek(Number(target.dataset.start));
    };
    let loaded = false;
    PS.poll(async () => {
      const job = await PS.api(path);
      if (token !== PS.current()) return false;
      renderHeader(job);
      const [links, plan] = await Promise.all([PS.api(path + "/links"), PS.api(path + "/plan")]);
      if (token !== PS.current()) return false;
      renderLinks(links);
      renderPlan(plan);
      if (job.state === "done" && !loaded) {
        loaded = true;
        renderTranscript(await PS.api(path + "/words"));
      }
      return !(job.state === "done" || job.state === "failed");
    }, 2000);
  };
})();
