// The console page: plain JavaScript, no library, nothing loaded from
// elsewhere. All text from the server goes into the page as text, never as
// HTML.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  let info = null;
  let current = null; // {id, es, deadline, offset, timer}

  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else e.setAttribute(k, v);
    }
    for (const k of kids) e.append(k);
    return e;
  }

  function size(n) {
    if (n >= 1 << 20 && n % (1 << 20) === 0) return (n >> 20) + " MiB";
    if (n >= 1 << 10 && n % (1 << 10) === 0) return (n >> 10) + " KiB";
    return n + " bytes";
  }

  // showError shows msg in the alert region: "Error: ..." unless msg
  // already says what kind of refusal it is.
  function showError(msg) {
    const e = $("error");
    e.textContent = /^(Limit reached|Too large):/.test(msg) ? msg : "Error: " + msg;
    e.hidden = false;
    e.focus();
  }

  function clearError() {
    $("error").hidden = true;
    $("error").textContent = "";
  }

  const badges = { idle: "Idle", starting: "Starting", running: "Running", exited: "Finished", failed: "Failed", stopped: "Stopped", refused: "Not started" };

  function setStatus(state, text) {
    const s = $("status");
    s.dataset.state = state;
    s.querySelector(".badge").textContent = badges[state] || state;
    $("status-text").textContent = text;
    const busy = state === "starting" || state === "running";
    $("run-button").disabled = busy;
    $("stop-button").disabled = !busy;
  }

  async function loadInfo() {
    const r = await fetch("/api/info", { credentials: "same-origin" });
    info = await r.json();
    $("keeps-where").textContent = info.keeps;
    renderExamples();
    renderBackends();
    const l = info.limits;
    $("limits").textContent = "Each run stops after " + Math.round(l.time_limit_ms / 1000) + " s or " + size(l.max_output) +
      " of output. Uploads up to " + size(l.max_upload) + ". One running keep per visitor; " + l.max_keeps + " at most on this console.";
    if (info.run) attach(info.run);
  }

  function renderExamples() {
    const list = $("example-list");
    list.textContent = "";
    let checked = false;
    for (const ex of info.examples) {
      const id = "wl-" + ex.id;
      const input = el("input", { type: "radio", name: "workload", id: id, value: ex.id });
      const label = el("label", { for: id }, el("span", { class: "title", text: ex.title }), el("span", { class: "desc", text: ex.description }));
      if (ex.state === "unavailable") {
        input.disabled = true;
        label.append(el("span", { class: "unavailable", text: "Unavailable here: " + ex.reason }));
      } else if (ex.state === "not-built" || ex.state === "building") {
        label.append(el("span", { class: "desc", text: "Note: " + ex.reason + "; the first run takes longer." }));
      }
      if (!checked && !input.disabled) {
        input.checked = true;
        checked = true;
      }
      list.append(el("div", { class: "choice" }, input, label));
    }
    if (!checked) $("wl-upload").checked = true;
    syncUpload();
  }

  function renderBackends() {
    const sel = $("backend");
    sel.textContent = "";
    for (const b of info.backends) {
      const o = el("option", { value: b.name, text: b.label + (b.usable ? "" : " (unavailable here)") });
      o.disabled = !b.usable;
      if (b.name === info.default_backend) o.selected = true;
      sel.append(o);
    }
    describeBackend();
  }

  function describeBackend() {
    const b = info.backends.find((x) => x.name === $("backend").value);
    if (!b) return;
    $("backend-desc").textContent = b.description + (b.usable ? "" : " Unavailable: " + b.reason);
  }

  function syncUpload() {
    $("upload-fields").hidden = !$("wl-upload").checked;
  }

  function workload() {
    const c = document.querySelector('input[name="workload"]:checked');
    return c ? c.value : "";
  }

  async function submit(ev) {
    ev.preventDefault();
    clearError();
    const fd = new FormData();
    const w = workload();
    if (w === "upload") {
      const f = $("wasm-file").files[0];
      if (!f) return showError("Choose a .wasm file to upload, or pick an example.");
      if (f.size > info.limits.max_upload) return showError(f.name + " is " + size(f.size) + ", larger than the upload limit of " + size(info.limits.max_upload) + ".");
      fd.append("backend", $("backend").value);
      fd.append("wasm", f, f.name);
      const c = $("config-file").files[0];
      if (c) fd.append("config", c, c.name);
    } else if (w) {
      fd.append("backend", $("backend").value);
      fd.append("example", w);
    } else {
      return showError("Choose an example or upload a module.");
    }
    reset();
    setStatus("starting", w === "upload" ? "Uploading and checking the module…" : "Preparing the example (the first run compiles it from source)…");
    let r, body;
    try {
      r = await fetch("/api/runs", { method: "POST", body: fd, credentials: "same-origin" });
      body = await r.json();
    } catch (e) {
      setStatus("failed", "The console did not answer.");
      return showError("The console did not answer: " + e.message);
    }
    if (!r.ok) {
      setStatus("refused", "The keep was not started: see the error above.");
      let msg = body.error || ("the console answered " + r.status);
      if (body.limit === "session") msg = "Limit reached: " + msg;
      if (body.limit === "keeps") msg = "Limit reached: " + msg;
      if (body.limit === "upload") msg = "Too large: " + msg;
      return showError(msg);
    }
    attach(body.id);
  }

  // reset forgets the previous run: its stream, output and proof.
  function reset() {
    if (current && current.es) current.es.close();
    stopCountdown();
    current = null;
    $("stdout").textContent = "";
    $("stderr").textContent = "";
    $("listen").hidden = true;
    $("proof").textContent = "";
    $("proof").append(el("p", { text: "Run a workload to see the certificate and evidence of its keep." }));
    $("proof-status").textContent = "";
  }

  function attach(id) {
    reset();
    current = { id: id, es: null, deadline: 0, offset: 0, timer: null };
    $("proof").textContent = "";
    $("proof").append(el("p", { text: "Waiting for the keep to present its certificate and evidence…" }));
    setStatus("starting", "Starting the keep…");
    const es = new EventSource("/api/runs/" + id + "/events");
    current.es = es;
    const mine = current;
    const on = (name, f) => es.addEventListener(name, (e) => { if (current === mine) f(JSON.parse(e.data)); });
    on("clock", (c) => { current.offset = c.now_ms - Date.now(); });
    on("state", onState);
    on("stdout", (t) => append("stdout", t));
    on("stderr", (t) => append("stderr", t));
    on("proof", renderProof);
    on("listen", onListen);
    on("exit", onExit);
    on("end", () => { es.close(); stopCountdown(); });
    es.onerror = () => {
      if (es.readyState === EventSource.CLOSED && current === mine) setStatus("failed", "Lost the connection to the console.");
    };
  }

  function append(which, text) {
    const pre = $(which);
    const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    pre.append(document.createTextNode(text));
    if (atEnd) pre.scrollTop = pre.scrollHeight;
  }

  function onState(st) {
    if (st.url) showListen(st.url, false);
    // Show the choices this run was made with (a reloaded page follows it).
    const choice = $(st.example ? "wl-" + st.example : "wl-upload");
    if (choice) choice.checked = true;
    $("backend").value = st.backend;
    describeBackend();
    syncUpload();
    if (st.state === "running") {
      setStatus("running", st.title + " is running on backend " + st.backend + ". Time limit " + Math.round(st.time_limit_ms / 1000) + " s.");
      current.deadline = st.deadline_ms;
      current.limit = st.time_limit_ms;
      startCountdown();
    }
  }

  function startCountdown() {
    stopCountdown();
    $("countdown-line").hidden = false;
    const tick = () => {
      const left = Math.max(0, Math.ceil((current.deadline - (Date.now() + current.offset)) / 1000));
      $("countdown").textContent = "Time left: " + left + " s of " + Math.round(current.limit / 1000) + " s";
    };
    tick();
    current.timer = setInterval(tick, 250);
  }

  function stopCountdown() {
    if (current && current.timer) {
      clearInterval(current.timer);
      current.timer = null;
    }
    $("countdown-line").hidden = true;
  }

  function showListen(url, ready) {
    const p = $("listen");
    p.textContent = "";
    p.append(ready ? "This keep is listening on this machine at " : "This keep will listen on this machine at ",
      el("a", { href: url, target: "_blank", rel: "noopener", text: url }),
      ready ? " (open it in a new tab)." : " (waiting for it to accept connections…)");
    p.hidden = false;
  }

  function onListen(l) {
    if (l.ready) showListen(l.url, true);
  }

  function onExit(ex) {
    stopCountdown();
    const hadFocus = document.activeElement === $("stop-button");
    const state = ex.reason === "exited" ? (ex.code === 0 ? "exited" : "failed") : ex.reason === "failed" ? "failed" : "stopped";
    setStatus(state, ex.message);
    $("listen").hidden = true;
    // A keyboard user who pressed Stop lands on Run, not on a disabled button.
    if (hadFocus) $("run-button").focus();
  }

  function fact(dl, term, ...dd) {
    dl.append(el("dt", { text: term }), el("dd", {}, ...dd));
  }

  function mark(ok, text, warn) {
    return el("span", { class: ok ? "mark-ok" : warn ? "mark-warn" : "mark-bad", text: text });
  }

  function renderProof(p) {
    const box = $("proof");
    box.textContent = "";
    if (p.error) {
      box.append(el("p", { class: "verdict insecure", text: "No proof: " + p.error }));
      $("proof-status").textContent = "The keep presented no proof.";
      return;
    }
    $("proof-status").textContent = "The keep's proof is shown below the output: " + p.verdict;
    box.append(el("p", { class: "verdict " + (p.insecure ? "insecure" : "secure"), id: "verdict", text: (p.insecure ? "⚠ " : "✔ ") + p.verdict }));
    box.append(el("p", { text: p.explanation }));
    const dl = el("dl", { class: "facts" });
    fact(dl, "Workload digest", el("code", { id: "proof-digest", text: p.workload_digest }),
      el("span", { class: "desc", text: " (the fingerprint of the module and its config that this keep loaded; the same as castellan run --digest)" }));
    fact(dl, "Backend", p.backend);
    fact(dl, "Platform", p.platform_name);
    fact(dl, "Insecure?", p.insecure ? mark(false, "Yes: do not trust this keep with secrets.") : mark(true, "No."));
    fact(dl, "Hardware evidence", p.evidence.present ? mark(p.evidence.verified, p.evidence.summary) : mark(false, p.evidence.summary, true));
    fact(dl, "Measurement", p.measurement ? el("code", { text: p.measurement }) : "None: no TEE measured the runtime.",
      p.measurement ? el("span", { class: "desc", text: " (hash of the code the TEE launched, fixed when the keep started)" }) : "");
    fact(dl, "TCB versions", p.tcb && p.tcb.length ? p.tcb.map((t) => t.component + " " + t.svn).join(", ") : "None reported.",
      p.tcb && p.tcb.length ? el("span", { class: "desc", text: " (security patch levels of the platform's firmware and microcode)" }) : "");
    if (p.tcb_status) fact(dl, "Intel's TCB verdict", p.tcb_status,
      el("span", { class: "desc", text: " (from Intel's TCB info for this platform: UpToDate means no known unpatched vulnerability)" }));
    for (const id of p.identity || []) fact(dl, id.name, el("code", { text: id.value }), el("span", { class: "desc", text: " (" + id.meaning + ")" }));
    if (p.platform === "none") fact(dl, "Debugging", "Not applicable: without a TEE this machine can read the keep anyway.");
    else fact(dl, "Debugging", p.debug ? mark(false, "Allowed: the host could read the keep.") : mark(true, "Not allowed by the hardware report."));
    fact(dl, "Checked by", el("span", { id: "proof-verified-by", text: p.verified_by }));
    if (p.key_fingerprint) fact(dl, "Keep key", el("code", { text: p.key_fingerprint }),
      el("span", { class: "desc", text: " (the key the evidence names; made inside the keep when it started)" }));
    if (p.nonce) fact(dl, "Nonce", el("code", { text: p.nonce }),
      el("span", { class: "desc", text: " (the console's fresh challenge: the evidence was made for this run, not replayed)" }));
    if (p.delivery) fact(dl, "Delivery", el("span", { id: "proof-delivery", text: p.delivery }));
    const c = p.certificate;
    fact(dl, "Certificate", el("span", { id: "proof-certificate", text: c.summary }));
    if (c.present) {
      fact(dl, "Certificate validity", (c.valid_now ? mark(true, "Valid now") : mark(false, "Not valid now")),
        ": from " + c.not_before.replace("T", " ").replace("Z", " UTC") + " to " + c.not_after.replace("T", " ").replace("Z", " UTC") + ".");
    }
    fact(dl, "Attested by a service", p.attested ? mark(true, "Yes: " + p.attestation_service) : mark(false, "No: no attestation service checked this keep; the console did (see above).", true));
    box.append(dl);
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("run-form").addEventListener("submit", submit);
    $("examples").addEventListener("change", syncUpload);
    $("backend").addEventListener("change", describeBackend);
    $("stop-button").addEventListener("click", async () => {
      if (!current) return;
      $("stop-button").disabled = true;
      $("status-text").textContent = "Stopping…";
      const r = await fetch("/api/runs/" + current.id + "/stop", { method: "POST", credentials: "same-origin" });
      if (!r.ok) showError((await r.json()).error);
    });
    loadInfo().catch((e) => showError("Could not load the console's settings: " + e.message));
  });
})();
