// mailrepl console: a client of the gateway's API (/ui/api/... is /api/v1/... as the signed-in token).
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const S = { session: null, page: null, timer: null, mb: { offset: 0, limit: 50, sort: "address", order: "asc" },
              selected: new Map(), seedSamples: [], detail: null };
  const ACTIONS = {
    protect: { label: "Protect", verb: "Start protecting", what: "their changes will be captured and replicated to the standby" },
    unprotect: { label: "Unprotect", verb: "Stop protecting", what: "their changes will no longer be replicated" },
    cutover: { label: "Cut over", verb: "Cut over", what: "users will be served by the standby server; replication from the primary stops for them", danger: true },
    failback: { label: "Fail back", verb: "Start failing back", what: "the changes made on the standby are replayed on the primary; users stay on the standby until confirmed" },
    verify: { label: "Verify", verb: "Verify", what: "their primary and standby copies are compared message by message (bytes, flags, dates, folders); nothing is changed" },
    confirm: { label: "Confirm failback", verb: "Switch back", what: "users will be served by the primary server again", danger: true },
  };

  // ------------------------------------------------------------------ formatting and DOM
  function fmtInt(n) { return n === null || n === undefined ? "-" : Number(n).toLocaleString(); }
  function fmtBytes(n) {
    if (n === null || n === undefined) return "-";
    const u = ["B", "KB", "MB", "GB", "TB"]; let i = 0; let v = n;
    while (v >= 1000 && i < u.length - 1) { v /= 1000; i++; }
    return (i ? v.toFixed(1) : v) + " " + u[i];
  }
  function fmtSecs(s) {
    if (s === null || s === undefined) return "-";
    if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + Math.round(s % 60) + " s";
    return Math.floor(s / 3600) + " h " + Math.round((s % 3600) / 60) + " min";
  }
  function timeEl(iso) {
    const t = document.createElement("time");
    if (!iso) { t.textContent = "-"; return t; }
    const d = new Date(iso);
    t.dateTime = d.toISOString();
    t.textContent = d.toLocaleString();
    t.title = "UTC: " + d.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
    return t;
  }
  function setTime(el, iso) { el.replaceChildren(timeEl(iso)); }
  function cell(tr, text, cls) {
    const td = document.createElement("td");
    if (text instanceof Node) td.appendChild(text); else td.textContent = text;
    if (cls) td.className = cls;
    tr.appendChild(td); return td;
  }
  function toast(msg) { const t = $("toast"); t.textContent = msg; t.classList.add("show"); setTimeout(() => t.classList.remove("show"), 4000); }
  function mbxLink(server, address) {
    const a = document.createElement("a");
    a.href = "#/mailbox/" + encodeURIComponent(server) + "/" + encodeURIComponent(address);
    a.textContent = address; return a;
  }
  function siteOf(st) { return st.site_state || (st.active_site === "dr" ? "at DR" : "at primary"); }
  function canAct() { return S.session && (S.session.role === "operator" || S.session.role === "admin"); }

  async function api(method, path, body) {
    const opts = { method, credentials: "same-origin", headers: {} };
    if (method !== "GET") {
      opts.headers["X-CSRF-Token"] = S.session.csrf;
      if (body !== undefined) { opts.headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(body); }
    }
    const r = await fetch("/ui/api/" + path, opts);
    if (r.status === 401) { location.href = "/ui/login"; throw new Error("signed out"); }
    let data = null;
    try { data = await r.json(); } catch (e) { data = null; }
    if (!r.ok) {
      const d = data && data.detail;
      throw new Error("HTTP " + r.status + ": " + (typeof d === "string" ? d : JSON.stringify(d)));
    }
    return data;
  }

  // ------------------------------------------------------------------ routing and refresh
  function schedule(fn, ms) {
    clearTimeout(S.timer);
    const run = async () => {
      if (!document.hidden) { try { await fn(); } catch (e) { if (e.message !== "signed out") toast(e.message); } }
      S.timer = setTimeout(run, ms);
    };
    run();
  }
  function route() {
    const h = location.hash || "#/overview";
    const parts = h.slice(2).split("/");
    const page = ["overview", "mailboxes", "mailbox"].includes(parts[0]) ? parts[0] : "overview";
    for (const p of ["overview", "mailboxes", "mailbox"]) $("page-" + p).hidden = p !== page;
    document.querySelectorAll("[data-nav]").forEach((a) => {
      if (a.dataset.nav === page || (page === "mailbox" && a.dataset.nav === "mailboxes")) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    });
    S.page = page;
    if (page === "overview") schedule(loadOverview, 2000);
    else if (page === "mailboxes") schedule(loadMailboxes, 3000);
    else {
      const server = decodeURIComponent(parts[1] || ""), address = decodeURIComponent(parts.slice(2).join("/"));
      if (!S.detail || S.detail.address !== address || S.detail.server !== server) S.seedSamples = [];
      S.detail = { server, address };
      renderMailboxActions();
      schedule(loadMailbox, 1000);
    }
  }

  // ------------------------------------------------------------------ overview
  async function loadOverview() {
    const o = await api("GET", "overview");
    $("ov-total").textContent = fmtInt(o.total);
    $("ov-protected").textContent = fmtInt(o.protected);
    for (const p of ["idle", "seeding", "replicating", "error"]) $("ov-phase-" + p).textContent = fmtInt(o.by_phase[p] || 0);
    $("ov-site-primary").textContent = fmtInt(o.by_site.primary || 0);
    $("ov-site-dr").textContent = fmtInt(o.by_site.dr || 0);
    $("ov-site-states").textContent = Object.entries(o.by_site_state).filter(([k]) => k !== "replicating")
      .map(([k, v]) => k + " " + v).join(", ") || "\u00a0";
    $("ov-copy-queue").textContent = o.copy_queue === null ? "n/a" : fmtInt(o.copy_queue);
    $("ov-replay-queue").textContent = fmtInt(o.replay_queue);
    const b = o.bytes;
    $("ov-wire").textContent = b ? fmtBytes(b.wire) : "n/a";
    $("ov-raw").textContent = b ? fmtBytes(b.shipped_raw) : "-";
    $("ov-dedup").textContent = b ? fmtBytes(b.saved_by_dedup) : "-";
    $("ov-compression").textContent = b ? fmtBytes(b.saved_by_compression) : "-";
    const at = $("ov-alarms").tBodies[0]; const rows = [];
    for (const a of o.alarms) {
      const tr = document.createElement("tr"); tr.dataset.kind = a.kind;
      cell(tr, a.severity, "sev sev-" + a.severity); cell(tr, a.kind);
      cell(tr, a.address ? mbxLink(a.server, a.address) : "gateway"); cell(tr, a.message); cell(tr, timeEl(a.since));
      rows.push(tr);
    }
    at.replaceChildren(...rows); $("ov-no-alarms").hidden = rows.length > 0; $("ov-alarms").hidden = rows.length === 0;
    const lt = $("ov-lags").tBodies[0]; const lrows = [];
    for (const st of o.worst_lags) {
      const tr = document.createElement("tr");
      cell(tr, mbxLink(st.server, st.address)); cell(tr, fmtSecs(st.lag_seconds), "num");
      cell(tr, fmtInt((st.copy_queue || 0) + (st.replay_queue || 0)), "num"); lrows.push(tr);
    }
    lt.replaceChildren(...lrows); $("ov-no-lags").hidden = lrows.length > 0; $("ov-lags").hidden = lrows.length === 0;
    setTime($("ov-updated"), o.generated_at);
  }

  // ------------------------------------------------------------------ mailboxes
  function filters() {
    const q = new URLSearchParams();
    for (const [id, name] of [["f-q", "q"], ["f-server", "server"], ["f-phase", "phase"], ["f-site", "site"],
                              ["f-protected", "protected"], ["f-error", "error"]]) {
      const v = $(id).value.trim(); if (v) q.set(name, v);
    }
    q.set("sort", S.mb.sort); q.set("order", S.mb.order); q.set("offset", S.mb.offset); q.set("limit", S.mb.limit);
    return q;
  }
  async function loadMailboxes() {
    const p = await api("GET", "mailbox-search?" + filters().toString());
    const sel = $("f-server");
    if (sel.options.length - 1 !== p.servers.length) {
      const keep = sel.value;
      sel.replaceChildren(new Option("all", ""), ...p.servers.map((s) => new Option(s, s)));
      sel.value = keep;
    }
    const tb = $("mb-table").tBodies[0]; const rows = [];
    for (const st of p.mailboxes) {
      const key = st.server + "/" + st.address;
      const tr = document.createElement("tr"); tr.dataset.address = st.address; tr.dataset.server = st.server;
      const box = document.createElement("input"); box.type = "checkbox"; box.className = "select";
      box.setAttribute("aria-label", "Select " + st.address); box.checked = S.selected.has(key); box.hidden = !canAct();
      box.addEventListener("change", () => { if (box.checked) S.selected.set(key, st); else S.selected.delete(key); updateSelected(); });
      cell(tr, box, "sel"); cell(tr, mbxLink(st.server, st.address), "addr"); cell(tr, st.server);
      cell(tr, st.phase, "c-phase phase-" + st.phase); cell(tr, siteOf(st), "c-site");
      cell(tr, (st.copy_queue === null ? "" : fmtInt(st.copy_queue) + " / ") + fmtInt(st.replay_queue), "num c-queue");
      cell(tr, fmtSecs(st.lag_seconds), "num c-lag"); cell(tr, st.error || "", "err c-error").title = st.error || "";
      rows.push(tr);
    }
    tb.replaceChildren(...rows);
    const end = Math.min(p.offset + p.mailboxes.length, p.total);
    $("mb-count").textContent = p.total ? `${fmtInt(p.offset + 1)}–${fmtInt(end)} of ${fmtInt(p.total)}` : "no mailboxes";
    $("mb-count").dataset.total = p.total;
    $("mb-prev").disabled = p.offset === 0; $("mb-next").disabled = end >= p.total;
    document.querySelectorAll("button.sort").forEach((b) => {
      b.closest("th").setAttribute("aria-sort", b.dataset.sort === S.mb.sort ? (S.mb.order === "asc" ? "ascending" : "descending") : "none");
    });
  }
  function updateSelected() {
    $("mb-selected").textContent = S.selected.size + " selected";
    document.querySelectorAll("#mb-actions button").forEach((b) => { b.disabled = S.selected.size === 0; });
  }
  function renderListActions() {
    const box = $("mb-actions");
    box.hidden = !canAct();
    if (!canAct()) return;
    const acts = S.session.actions.concat(S.session.actions.includes("failback") ? ["confirm"] : []);
    for (const a of acts) {
      const b = document.createElement("button"); b.type = "button"; b.id = "act-" + a; b.dataset.action = a;
      b.textContent = ACTIONS[a].label; if (ACTIONS[a].danger) b.className = "danger";
      b.addEventListener("click", () => confirmAction(a, [...S.selected.values()]));
      box.appendChild(b);
    }
    const clear = document.createElement("button"); clear.type = "button"; clear.textContent = "Clear selection";
    clear.className = "link"; clear.addEventListener("click", () => { S.selected.clear(); updateSelected(); loadMailboxes(); });
    box.appendChild(clear); updateSelected();
  }

  // ------------------------------------------------------------------ mailbox
  function renderMailboxActions() {
    const box = $("mbx-actions");
    box.replaceChildren(); box.hidden = !canAct();
    if (!canAct()) return;
    const acts = S.session.actions.concat(S.session.actions.includes("failback") ? ["confirm"] : []);
    for (const a of acts) {
      const b = document.createElement("button"); b.type = "button"; b.id = "mbx-act-" + a; b.dataset.action = a;
      b.hidden = true;  // shown once the mailbox's state says the action fits
      b.textContent = ACTIONS[a].label; if (ACTIONS[a].danger) b.className = "danger";
      b.addEventListener("click", () => confirmAction(a, [{ server: S.detail.server, address: S.detail.address }]));
      box.appendChild(b);
    }
  }
  async function loadMailbox() {
    const want = S.detail;
    const q = "?server=" + encodeURIComponent(want.server);
    const [d, hist] = await Promise.all([
      api("GET", "mailboxes/" + encodeURIComponent(want.address) + q),
      api("GET", "lag-history?address=" + encodeURIComponent(want.address) + "&server=" + encodeURIComponent(want.server)),
    ]);
    if (S.detail !== want) return;
    $("mbx-address").textContent = d.address; $("mbx-server").textContent = "server " + d.server;
    $("mbx-phase").textContent = d.phase; $("mbx-site").textContent = siteOf(d);
    $("mbx-since").replaceChildren(...(d.site_since ? [document.createTextNode("since "), timeEl(d.site_since)] : []));
    $("mbx-copy").textContent = d.copy_queue === null ? "n/a" : fmtInt(d.copy_queue);
    $("mbx-replay").textContent = fmtInt(d.replay_queue); $("mbx-lag").textContent = fmtSecs(d.lag_seconds);
    $("mbx-error").hidden = !d.error; $("mbx-error").textContent = d.error || "";
    seeding(d.seeding);
    const fits = { protect: !d.protected, unprotect: d.protected, verify: d.protected && d.site_state === "replicating",
                   cutover: d.site_state === "replicating",
                   failback: d.site_state === "active-at-dr", confirm: d.site_state === "failing-back" };
    document.querySelectorAll("#mbx-actions button[data-action]").forEach((b) => { b.hidden = !fits[b.dataset.action]; });
    chart(hist.points);
    const ft = $("mbx-folders").tBodies[0];
    ft.replaceChildren(...d.folders.map((f) => { const tr = document.createElement("tr"); cell(tr, f.name);
      cell(tr, fmtInt(f.messages), "num"); cell(tr, fmtInt(f.pending), "num"); return tr; }));
    $("mbx-no-folders").hidden = d.folders.length > 0; $("mbx-folders").hidden = d.folders.length === 0;
    const tt = $("mbx-transitions").tBodies[0];
    tt.replaceChildren(...[...(d.transitions || [])].reverse().map((t) => { const tr = document.createElement("tr");
      cell(tr, timeEl(t.at)); cell(tr, t.before); cell(tr, t.after, "c-after"); cell(tr, t.actor); cell(tr, t.detail || ""); return tr; }));
    $("mbx-no-transitions").hidden = (d.transitions || []).length > 0; $("mbx-transitions").hidden = !(d.transitions || []).length;
    const rep = d.failback_report;
    $("mbx-report-box").hidden = !rep;
    if (rep) $("mbx-report").replaceChildren(...Object.entries(rep).flatMap(([k, v]) => {
      const dt = document.createElement("dt"); dt.textContent = k; const dd = document.createElement("dd");
      dd.textContent = typeof v === "object" ? JSON.stringify(v) : String(v); return [dt, dd]; }));
    const verify = d.verify || d.last_verify || null;  // shown when the gateway reports one
    $("mbx-verify-box").hidden = !verify;
    if (verify) $("mbx-verify").textContent = typeof verify === "object" ? (verify.verdict || JSON.stringify(verify)) : String(verify);
    const holds = d.holds || null;
    $("mbx-holds-box").hidden = !(holds && holds.length);
    if (holds && holds.length) $("mbx-holds").replaceChildren(...holds.map((h) => { const li = document.createElement("li");
      li.textContent = typeof h === "object" ? (h.message || JSON.stringify(h)) : String(h); return li; }));
    const rt = $("mbx-rejected").tBodies[0];
    rt.replaceChildren(...d.rejected_messages.map((r) => { const tr = document.createElement("tr");
      cell(tr, fmtInt(r.seq), "num"); cell(tr, r.folder); cell(tr, r.reason); return tr; }));
    $("mbx-no-rejected").hidden = d.rejected_messages.length > 0; $("mbx-rejected").hidden = d.rejected_messages.length === 0;
  }
  function seeding(s) {
    const bar = $("mbx-progress"), text = $("mbx-progress-text");
    if (!s || !s.messages_total) {
      bar.max = 1; bar.value = 0; text.textContent = "no seeding recorded on this gateway"; return;
    }
    bar.max = s.messages_total; bar.value = s.messages_done;
    const now = Date.now() / 1000; const smp = S.seedSamples;
    if (!smp.length || smp[smp.length - 1][1] !== s.messages_done) smp.push([now, s.messages_done]);
    while (smp.length > 2 && now - smp[0][0] > 30) smp.shift();
    let tail = "";
    if (s.messages_done < s.messages_total && smp.length >= 2) {
      const [t0, m0] = smp[0], [t1, m1] = smp[smp.length - 1];
      const rate = (m1 - m0) / Math.max(0.001, t1 - t0);
      if (rate > 0) tail = `, ${rate.toFixed(0)} msg/s, ${fmtSecs((s.messages_total - s.messages_done) / rate)} left`;
    }
    const pct = Math.floor((100 * s.messages_done) / s.messages_total);
    text.textContent = `${pct} %: ${fmtInt(s.messages_done)} of ${fmtInt(s.messages_total)} messages, ` +
      `${fmtBytes(s.bytes_done)} of ${fmtBytes(s.bytes_total)}` + (s.messages_done >= s.messages_total ? ", done" : tail);
    text.dataset.done = s.messages_done; text.dataset.total = s.messages_total;
  }
  function chart(points) {
    // points: where the lag changed; each value holds until the next point, the last until now
    const svg = $("mbx-chart"); const ns = "http://www.w3.org/2000/svg";
    const now = Date.now() / 1000; const span = 3600; const start = now - span;
    const max = Math.max(1, ...points.map((p) => p[1]));
    const x = (t) => (300 * (Math.max(t, start) - start) / span).toFixed(1);
    const y = (v) => (58 - 56 * v / max).toFixed(1);
    const xy = [];
    points.forEach(([t, v], i) => {
      const end = i + 1 < points.length ? points[i + 1][0] : now;
      xy.push(`${x(t)},${y(v)}`, `${x(end)},${y(v)}`);
    });
    const path = document.createElementNS(ns, "polyline");
    path.setAttribute("points", xy.join(" "));
    path.setAttribute("class", "line");
    svg.replaceChildren(path);
    const top = points.length ? Math.max(...points.map((p) => p[1])) : null;
    $("mbx-chart-text").textContent = top === null ? "no samples yet" : `highest ${fmtSecs(top)}, now ${fmtSecs(points[points.length - 1][1])}`;
  }

  // ------------------------------------------------------------------ actions
  function confirmAction(action, targets) {
    if (!targets.length) return;
    const A = ACTIONS[action], dlg = $("confirm");
    $("confirm-title").textContent = A.label;
    $("confirm-text").textContent = `${A.verb} ${targets.length} mailbox${targets.length === 1 ? "" : "es"}: ${A.what}.`;
    $("confirm-list").replaceChildren(...targets.slice(0, 10).map((t) => { const li = document.createElement("li");
      li.textContent = t.address + " (" + t.server + ")"; return li; }),
      ...(targets.length > 10 ? [Object.assign(document.createElement("li"), { textContent: `and ${targets.length - 10} more` })] : []));
    $("confirm-progress").textContent = ""; $("confirm-result").hidden = true;
    const go = $("confirm-go"), cancel = $("confirm-cancel");
    go.hidden = false; go.disabled = false; cancel.textContent = "Cancel";
    go.className = A.danger ? "danger" : "";
    go.onclick = () => run(action, targets);
    cancel.onclick = () => { dlg.close(); route(); };
    dlg.showModal(); cancel.focus();
  }
  async function run(action, targets) {
    const go = $("confirm-go"), cancel = $("confirm-cancel"), prog = $("confirm-progress");
    go.disabled = true; cancel.disabled = true;
    const t0 = Date.now(); const tick = setInterval(() => { prog.textContent = `Running… ${((Date.now() - t0) / 1000).toFixed(1)} s`; }, 200);
    const results = [];
    try {
      if (action === "verify") {
        const byServer = new Map();
        for (const t of targets) { if (!byServer.has(t.server)) byServer.set(t.server, []); byServer.get(t.server).push(t.address); }
        for (const [server, addresses] of byServer) {
          try {
            const started = await api("POST", "verify", { addresses, server });
            let job = null;
            for (;;) {
              job = await api("GET", `verify/${encodeURIComponent(started.job)}`);
              const p = job.progress || {};
              prog.textContent = `${server}: ${fmtInt(p.mailboxes_done)} of ${fmtInt(p.mailboxes_total)} mailboxes, ${fmtInt(p.messages_checked)} messages checked`;
              if (job.state !== "running") break;
              await new Promise((res) => setTimeout(res, 1000));
            }
            if (job.error) addresses.forEach((a) => results.push([a, "error: " + job.error]));
            for (const m of job.mailboxes || []) {
              const n = (m.differences || []).length;
              results.push([m.address, m.verdict + (n ? ` (${n} difference${n === 1 ? "" : "s"}: ` +
                [...new Set(m.differences.map((d) => d.kind))].join(", ") + ")" : "") + (m.error ? ": " + m.error : "")]);
            }
          } catch (e) { addresses.forEach((a) => results.push([a, e.message])); }
        }
      } else if (action === "protect" || action === "unprotect") {
        let i = 0;
        for (const t of targets) {
          i++;
          try {
            const st = await api("PUT", `mailboxes/${encodeURIComponent(t.address)}/protection?server=${encodeURIComponent(t.server)}`,
              { enabled: action === "protect" });
            results.push([t.address, st.protected ? "protected (" + st.phase + ")" : "not protected"]);
          } catch (e) { results.push([t.address, e.message]); }
          prog.textContent = `${i} of ${targets.length}`;
        }
      } else {
        const byServer = new Map();
        for (const t of targets) { if (!byServer.has(t.server)) byServer.set(t.server, []); byServer.get(t.server).push(t.address); }
        for (const [server, addresses] of byServer) {
          const body = { addresses, server };
          if (action === "confirm") body.confirm = true;
          try {
            const r = await api("POST", action === "cutover" ? "cutover" : "failback", body);
            r.results.forEach((res, i) => results.push([res.address || addresses[i], res.site_state || res.state || res.error || JSON.stringify(res)]));
          } catch (e) { addresses.forEach((a) => results.push([a, e.message])); }
        }
      }
    } finally {
      clearInterval(tick);
      prog.textContent = `Done in ${((Date.now() - t0) / 1000).toFixed(1)} s.`;
      const tb = $("confirm-result").tBodies[0];
      tb.replaceChildren(...results.map(([a, r]) => { const tr = document.createElement("tr"); cell(tr, a); cell(tr, r, "c-result"); return tr; }));
      $("confirm-result").hidden = false; go.hidden = true; cancel.disabled = false; cancel.textContent = "Close"; cancel.focus();
      S.selected.clear(); updateSelected();
    }
  }

  // ------------------------------------------------------------------ start
  async function start() {
    const r = await fetch("/ui/session", { credentials: "same-origin" });
    if (r.status !== 200) { location.href = "/ui/login"; return; }
    S.session = await r.json();
    $("gw").textContent = `${S.session.gateway_role} gateway ${S.session.gateway_id}`;
    $("who").textContent = `${S.session.name} (${S.session.role})`;
    $("logout-csrf").value = S.session.csrf;
    document.body.dataset.role = S.session.role;
    $("mb-all").hidden = !canAct();
    renderListActions();
    let debounce = null;
    $("mb-filters").addEventListener("input", () => { clearTimeout(debounce); debounce = setTimeout(() => { S.mb.offset = 0; loadMailboxes(); }, 250); });
    $("mb-filters").addEventListener("submit", (e) => e.preventDefault());
    $("mb-prev").addEventListener("click", () => { S.mb.offset = Math.max(0, S.mb.offset - S.mb.limit); loadMailboxes(); });
    $("mb-next").addEventListener("click", () => { S.mb.offset += S.mb.limit; loadMailboxes(); });
    $("mb-limit").addEventListener("change", (e) => { S.mb.limit = Number(e.target.value); S.mb.offset = 0; loadMailboxes(); });
    $("mb-all").addEventListener("change", (e) => {
      document.querySelectorAll("#mb-table tbody tr").forEach((tr) => {
        const key = tr.dataset.server + "/" + tr.dataset.address; const box = tr.querySelector("input.select");
        box.checked = e.target.checked;
        if (e.target.checked) S.selected.set(key, { server: tr.dataset.server, address: tr.dataset.address }); else S.selected.delete(key);
      });
      updateSelected();
    });
    document.querySelectorAll("button.sort").forEach((b) => b.addEventListener("click", () => {
      if (S.mb.sort === b.dataset.sort) S.mb.order = S.mb.order === "asc" ? "desc" : "asc";
      else { S.mb.sort = b.dataset.sort; S.mb.order = b.dataset.sort === "address" ? "asc" : "desc"; }
      S.mb.offset = 0; loadMailboxes();
    }));
    document.addEventListener("visibilitychange", () => { if (!document.hidden) route(); });
    window.addEventListener("hashchange", route);
    route();
  }
  document.addEventListener("DOMContentLoaded", start);
})();
