// faust-backpressure dashboard: polls this worker's /backpressure/?history=1 and renders it.
// Plain DOM, no dependencies. Values are written with textContent (never parsed as HTML).
"use strict";
(function () {
  var POLL_MS = Number(new URLSearchParams(location.search).get("interval") || 1000);
  var SNAPSHOT = new URL("./?history=1", location.href).toString();

  function h(tag, attrs, children) {
    var el = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "text") el.textContent = attrs[k];
      else el.setAttribute(k, attrs[k]);
    });
    (children || []).forEach(function (c) {
      el.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    });
    return el;
  }
  function fmt(v, digits) {
    if (v === null || v === undefined) return "–";
    if (typeof v !== "number") return String(v);
    if (!isFinite(v)) return v > 0 ? "∞" : "-∞";
    var d = digits === undefined ? (Math.abs(v) >= 100 ? 0 : Math.abs(v) >= 10 ? 1 : 2) : digits;
    return v.toLocaleString("en-US", {maximumFractionDigits: d, minimumFractionDigits: 0});
  }
  function num(v, digits, key) {
    return h("td", {"class": "num" + (key ? " " + key : ""), "data-value": v === null || v === undefined ? "" : String(v),
                    text: fmt(v, digits)});
  }
  function ms(seconds) { return seconds == null ? "–" : fmt(seconds * 1000); }
  // a batch pipeline's latencies, over its last batches done (the view's LatencySummary)
  function batchLatency(b) {
    var line = function (what, l) {
      return l && l.count ? "\n" + what + " p50/p95/p99: " + ms(l.p50) + " / " + ms(l.p95) + " / " +
        ms(l.p99) + " ms (last " + l.count + ")" : "";
    };
    return line("first record to done", b.latency) + line("process_batch", b.processing);
  }
  function sev(name) {
    return h("span", {"class": "sev sev-" + (name || "none"), text: name || "–"});
  }
  // per-second rates of a counter across the history points
  function rates(history, pick) {
    var out = [];
    for (var i = 1; i < history.length; i++) {
      var a = pick(history[i - 1]), b = pick(history[i]);
      var dt = history[i].at - history[i - 1].at;
      out.push(a === undefined || b === undefined || dt <= 0 ? null : Math.max(0, (b - a) / dt));
    }
    return out;
  }
  function spark(series, colors, title) {
    var w = 180, hgt = 34, svgns = "http://www.w3.org/2000/svg";
    var svg = document.createElementNS(svgns, "svg");
    svg.setAttribute("class", "spark"); svg.setAttribute("width", w); svg.setAttribute("height", hgt);
    var max = 0;
    series.forEach(function (s) { s.forEach(function (v) { if (v !== null && isFinite(v)) max = Math.max(max, v); }); });
    if (max <= 0) max = 1;
    series.forEach(function (s, j) {
      if (s.length < 2) return;
      var pts = [];
      s.forEach(function (v, i) {
        if (v === null || !isFinite(v)) return;
        pts.push((i * (w - 2) / (s.length - 1) + 1).toFixed(1) + "," + (hgt - 2 - v / max * (hgt - 4)).toFixed(1));
      });
      var line = document.createElementNS(svgns, "polyline");
      line.setAttribute("points", pts.join(" ")); line.setAttribute("fill", "none");
      line.setAttribute("stroke", colors[j]); line.setAttribute("stroke-width", "1.5");
      svg.appendChild(line);
    });
    var t = document.createElementNS(svgns, "title");
    t.textContent = title + " (max " + fmt(max) + ")";
    svg.appendChild(t);
    return svg;
  }
  // Steering: POST /backpressure/api/<action> with the admin token (401 without it).
  var API = new URL("./api/", location.href).toString();
  var tokenInput = document.getElementById("token");
  tokenInput.value = sessionStorage.getItem("fbp-admin-token") || "";
  tokenInput.addEventListener("change", function () {
    sessionStorage.setItem("fbp-admin-token", tokenInput.value);
  });
  function steer(action, body, label) {
    var out = document.getElementById("steer-result");
    out.hidden = false; out.className = "steer-result"; out.textContent = label + "…";
    body.reason = "from the dashboard"; body.by = "dashboard";
    fetch(API + action, {method: "POST", body: JSON.stringify(body), headers: {
      "Content-Type": "application/json", "Authorization": "Bearer " + tokenInput.value}})
      .then(function (r) { return r.json().then(function (j) { return [r.status, j]; }); })
      .then(function (res) {
        if (res[0] === 200) { out.textContent = label + ": done (acknowledged)"; return; }
        out.className = "steer-result error";
        out.textContent = label + ": HTTP " + res[0] + ": " + (res[1].error || "failed") +
          (res[0] === 401 ? " (open 'steer' and enter the admin token)" : "");
      }).catch(function (e) {
        out.className = "steer-result error"; out.textContent = label + ": " + e.message;
      });
  }
  function button(text, action, body, label) {
    var b = h("button", {"class": "act", type: "button", text: text});
    b.addEventListener("click", function () {
      if (confirm(label + "?")) steer(action, body, label);
    });
    return b;
  }

  function fill(id, rows) {
    var body = document.querySelector("#" + id + " tbody");
    body.replaceChildren.apply(body, rows);
    document.getElementById(id + "-empty").hidden = rows.length > 0;
    document.getElementById(id).hidden = rows.length === 0;
  }

  function render(s) {
    var history = s.history || [];
    var recent = history.slice(-2);
    document.getElementById("app").textContent = s.app;
    var loopOf = {};
    Object.keys(s.control).forEach(function (name) { loopOf[s.control[name].limiter] = s.control[name]; });

    fill("limiters", Object.keys(s.limiters).sort().map(function (id) {
      var l = s.limiters[id], loop = loopOf[id];
      var admitted = rates(history, function (p) { return p.limiters[id] && p.limiters[id].granted; });
      var refused = rates(history, function (p) { return p.limiters[id] && p.limiters[id].denied; });
      var rateHist = history.map(function (p) { return p.limiters[id] ? p.limiters[id].rate : null; });
      var severity = loop ? (loop.override ? "OVERRIDE" : loop.severity) : null;
      var util = Math.max(0, Math.min(1, l.utilization || 0));
      return h("tr", {"data-limiter": id}, [
        h("td", {"class": "id", text: id}),
        num(l.rate, undefined, "rate"), num(l.configured_rate, undefined, "configured"),
        num(loop ? (loop.override ? loop.override.rate : loop.decided_rate) : null, undefined, "decided"),
        h("td", {"class": "severity"}, [sev(severity)]),
        h("td", {"class": "utilization", "data-value": String(l.utilization)}, [
          h("span", {"class": "bar"}, [h("span", {style: "width:" + (util * 100).toFixed(0) + "%"})]),
          fmt(util * 100, 0) + "%"]),
        num(admitted.length ? admitted[admitted.length - 1] : null, 1, "admitted"),
        num(refused.length ? refused[refused.length - 1] : null, 1, "refused"),
        h("td", {}, [spark([rateHist.slice(1), admitted, refused], ["#58a6ff", "#3fb950", "#f85149"],
                           id + ": rate (blue), admitted/s (green), refused/s (red)")]),
      ]);
    }));

    var control = document.getElementById("control");
    var loops = Object.keys(s.control).sort().map(function (name) {
      var c = s.control[name];
      var lagHist = history.map(function (p) { return p.control[name] ? p.control[name].lag : null; });
      var decidedHist = history.map(function (p) { return p.control[name] ? p.control[name].decided_rate : null; });
      var head = h("div", {"class": "head"}, [
        h("strong", {text: name}), sev(c.override ? "OVERRIDE" : c.severity),
        h("span", {text: (c.override ? "held at " + fmt(c.override.rate) : "decided " + fmt(c.decided_rate)) +
                          "/s of baseline " + fmt(c.baseline_rate) + "/s"}),
        h("span", {"class": "muted", text: "policy " + c.policy + ", every " + fmt(c.interval) + " s, " + c.decisions + " decisions"}),
        h("span", {text: "downstream lag " + fmt(c.last_sample ? c.last_sample.lag : null) +
                          (c.lag_seconds !== null && c.lag_seconds !== undefined ? " (" + fmt(c.lag_seconds) + " s behind)" : "")}),
        c.recommended_workers !== null && c.recommended_workers !== undefined ?
          h("span", {text: "recommended downstream workers " + c.recommended_workers}) : h("span"),
        spark([decidedHist, lagHist], ["#58a6ff", "#d29922"], name + ": decided rate (blue), downstream lag (amber)"),
        c.override ? button("restore", "restore", {limiter: name}, "restore " + name) :
          button("emergency stop", "emergency-stop", {limiter: name}, "hold " + name + " at its emergency rate"),
      ]);
      var parts = [head];
      if (c.input_warning) {
        parts.push(h("div", {"class": "input-warning", text: "input: " + c.input_warning}));
      }
      if (c.override) {
        parts.push(h("div", {"class": "override", text: "held at " + fmt(c.override.rate) + "/s by " +
          (c.override.by || "?") + (c.override.reason ? ": " + c.override.reason : "") +
          " (backpressure restore " + name + " releases it)"}));
      }
      parts.push(h("div", {"class": "reason", text: c.override ?
        "why: an operator's hold wins over the control loop (its last decision: " + (c.reason || "none") + ")" :
        c.reason ? "why: " + c.reason : "no decision yet on this worker (another worker may decide)"}));
      // latest first, repeats of the same decision folded into one line
      var folded = [];
      (c.recent_decisions || []).slice().reverse().forEach(function (d) {
        var last = folded[folded.length - 1];
        if (last && last.severity === d.severity && last.rate === d.rate && last.reason === d.reason) last.n += 1;
        else folded.push({severity: d.severity, rate: d.rate, reason: d.reason, n: 1});
      });
      if (folded.length) {
        parts.push(h("div", {"class": "muted", text: "recent decisions, latest first:"}));
        parts.push(h("ol", {}, folded.map(function (d) {
          return h("li", {text: d.severity + " " + fmt(d.rate) + "/s: " + d.reason + (d.n > 1 ? " (×" + d.n + ")" : "")});
        })));
      }
      return h("div", {"class": "loop", "data-loop": name}, parts);
    });
    control.replaceChildren.apply(control, loops);
    document.getElementById("control-empty").hidden = loops.length > 0;

    fill("pipelines", Object.keys(s.pipelines).sort().map(function (name) {
      var p = s.pipelines[name];
      var consumed = rates(history, function (q) { return q.pipelines[name] && q.pipelines[name].consumed; });
      var state = p.paused ? h("span", {"class": "sev sev-PAUSED", text: "PAUSED" +
        (p.paused_by && p.paused_by.by ? " by " + p.paused_by.by : "")}) : h("span", {"class": "sev sev-NORMAL", text: "running"});
      return h("tr", {"data-pipeline": name}, [
        h("td", {"class": "id", text: name, title: p.batch ? "batches of up to " + p.batch.size +
          ": " + p.batch.batches + " done, " + p.batch.abandoned + " abandoned (read again)" +
          batchLatency(p.batch) : "one event at a time"},
          p.batch ? [h("span", {"class": "batch", text: " batches of " + p.batch.size + ": " + p.batch.batches +
            (p.batch.latency && p.batch.latency.count ? ", p99 " + ms(p.batch.latency.p99) + " ms" : "")})] : []),
        h("td", {"class": "src", title: p.source, text: p.source}),
        h("td", {text: p.limiter || "–"}), h("td", {"class": "state"}, [state]),
        num(p.consumed, 0, "consumed"), num(p.produced, 0, "produced"), num(p.retries, 0, "retries"),
        num(p.dead_lettered, 0, "dlq"), num(p.source_lag, 0, "lag"),
        h("td", {}, [spark([consumed], ["#3fb950"], name + ": consumed/s")]),
        h("td", {}, [p.paused ? button("resume", "resume", {pipeline: name}, "resume " + name) :
          button("pause", "pause", {pipeline: name}, "pause " + name + " on every worker")]),
      ]);
    }));

    fill("downstreams", Object.keys(s.downstreams || {}).sort().map(function (name) {
      var d = s.downstreams[name];
      var sev = {closed: "NORMAL", half_open: "WARNING", open: "CRITICAL",
                 forced_open: "EMERGENCY", forced_closed: "WARNING"}[d.breaker] || "WARNING";
      var ms = function (v) { return v == null ? "–" : (v * 1000).toFixed(1); };
      var outcomes = Object.keys(d.outcomes || {}).sort().map(function (k) {
        return k + " " + d.outcomes[k];
      }).join(", ");
      var forced = d.breaker === "forced_open" || d.breaker === "forced_closed";
      return h("tr", {"data-dependency": name}, [
        h("td", {"class": "id", text: name}),
        h("td", {"class": "state"}, [h("span", {"class": "sev sev-" + sev, text: d.breaker})]),
        num(d.limit, 0, "limit"), num(d.in_flight, 0, "in flight"), num(d.queued, 0, "queued"),
        num(d.paused_for, 1, "paused s"), num(d.learnt_rate, 1, "learnt rate"),
        num(d.failure_rate, 3, "failure rate"),
        h("td", {text: ms(d.latency_p50) + " / " + ms(d.latency_p99)}),
        h("td", {"class": "muted", text: outcomes || "–"}),
        h("td", {}, forced ? [button("auto", "breaker", {dependency: name, state: "auto"},
                                     "give " + name + "'s breaker back to automatic")] :
          [button("open", "breaker", {dependency: name, state: "open"},
                  "force " + name + "'s breaker open on every worker (calls wait)"),
           button("close", "breaker", {dependency: name, state: "close"},
                  "force " + name + "'s breaker closed on every worker")]),
      ]);
    }));

    fill("keyed", Object.keys(s.keyed || {}).sort().map(function (name) {
      var k = s.keyed[name];
      var per = function (field) {
        var r = rates(history, function (p) { return p.keyed && p.keyed[name] && p.keyed[name][field]; });
        return num(r.length ? r[r.length - 1] : null, 1, field + "-rate");
      };
      var top = (k.top_limited || []).map(function (t) {
        return t.key + " (" + t.refused + (t.limits ? ", own " + fmt(t.limits.rate) + "/s" : "") + ")";
      }).join(", ");
      return h("tr", {"data-keyed": name}, [
        h("td", {"class": "id", text: name}), h("td", {text: k.agent || "–"}), h("td", {text: k.on_limit}),
        num(k.rate, undefined, "rate"), num(k.burst, undefined, "burst"),
        num(k.keys_tracked, 0, "tracked"), num(k.keys_limited, 0, "limited"),
        num(k.deferred_backlog, 0, "backlog"), per("admitted"), per("deferred"), per("readmitted"), per("held_back"), per("shed"),
        num(k.overrides, 0, "overrides"),
        h("td", {"class": "top muted", "data-field": "top", text: top || "–"}),
      ]);
    }));

    fill("cluster", (s.cluster || []).map(function (w) {
      function total(key) {
        return Object.keys(w.pipelines).reduce(function (sum, p) {
          var v = w.pipelines[p][key];
          return v === null || v === undefined || sum === null ? null : sum + v;
        }, 0);
      }
      var owned = Object.keys(w.limiters).filter(function (l) { return w.limiters[l].owned; });
      var open = Object.keys(w.downstreams).filter(function (d) { return w.downstreams[d] !== "closed"; })
        .map(function (d) { return d + ": " + w.downstreams[d]; });
      var name = w.web ? h("a", {href: w.web, text: w.worker}) : w.worker;
      return h("tr", {"data-worker": w.worker, "class": w.stale ? "stale" : ""}, [
        h("td", {"class": "id"}, [name]),
        h("td", {text: (w.stale ? "stale, " : "") + fmt(w.age, 0) + " s ago"}),
        num(total("consumed"), 0, "consumed"), num(total("source_lag"), 0, "lag"),
        num(total("dead_lettered"), 0, "dlq"),
        h("td", {text: owned.join(", ") || "–"}), h("td", {text: open.join(", ") || "–"}),
      ]);
    }));

    fill("gates", s.gates.map(function (g) {
      return h("tr", {"data-agent": g.agent}, [
        h("td", {"class": "id", text: g.agent}), h("td", {text: g.limiter}), h("td", {text: g.on_limit}),
        num(g.waits, 0, "waits"), num(g.shed, 0, "shed"), num(g.overdrafts, 0, "overdrafts"),
        num(g.source_lag, 0, "lag"),
      ]);
    }));

    var rejected = [];
    Object.keys(s.rejected || {}).forEach(function (topic) {
      Object.keys(s.rejected[topic]).forEach(function (reason) {
        rejected.push(topic + " / " + reason + ": " + s.rejected[topic][reason]);
      });
    });
    document.getElementById("rejected").textContent = rejected.length ? rejected.join(", ") : "none";
    var status = document.getElementById("status");
    status.className = "status live";
    status.textContent = "live · " + new Date(s.at * 1000).toISOString().substr(11, 8) + " UTC · " +
      history.length + " points of history";
    document.body.setAttribute("data-updated", String(s.at));
  }

  function poll() {
    fetch(SNAPSHOT, {cache: "no-store"}).then(function (r) {
      if (!r.ok) throw new Error("HTTP " + r.status);
      return r.json();
    }).then(render).catch(function (e) {
      var status = document.getElementById("status");
      status.className = "status stale";
      status.textContent = "not updating: " + e.message;
    }).finally(function () { setTimeout(poll, POLL_MS); });
  }
  poll();
})();
