/* runbook-celery pages: live run updates (EventSource), buttons, step logs, trigger form.
   No framework and nothing from the internet. Untrusted text (logs, prompts) is only ever
   set with textContent; HTML comes from our own server-side templates. */
(function () {
  "use strict";

  // Absolute URLs from the origin: a page opened as http://user:pw@host/ would otherwise
  // resolve relative URLs with the credentials in them, which fetch() refuses.
  function at(path) { return new URL(path, window.location.origin).toString(); }

  function cookie(name) {
    var m = document.cookie.match(new RegExp("(?:^|; )" + name + "=([^;]*)"));
    return m ? decodeURIComponent(m[1]) : "";
  }

  function post(path, body) {
    return fetch(at(path), {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-XSRFToken": cookie("_xsrf") },
      body: JSON.stringify(body || {}),
    }).then(function (resp) {
      return resp.json().catch(function () { return {}; }).then(function (data) {
        if (!resp.ok) { throw new Error(data.error || resp.status + " " + resp.statusText); }
        return data;
      });
    });
  }

  // ------------------------------------------------------------------ run page
  var root = document.getElementById("rb-run");
  if (root) { runPage(root); }

  function runPage(root) {
    var ds = root.dataset;
    var flash = document.getElementById("rb-flash");
    var state = document.getElementById("rb-live-state");
    var pending = null, inflight = false, again = false, source = null;
    var finished = ds.finished === "true";

    function say(text, bad) {
      flash.textContent = text;
      flash.classList.toggle("rb-bad", !!bad);
    }

    function refresh() {
      if (inflight) { again = true; return; }
      inflight = true;
      fetch(at(ds.live), { credentials: "same-origin", cache: "no-store" })
        .then(function (r) { if (!r.ok) { throw new Error(r.status); } return r.json(); })
        .then(function (data) {
          var open = {};
          document.querySelectorAll("#rb-steps details[open]").forEach(function (d) { open[d.dataset.key] = 1; });
          var scroll = document.getElementById("rb-dag").scrollLeft;
          document.getElementById("rb-header").innerHTML = data.header;
          document.getElementById("rb-dag").innerHTML = data.dag;
          document.getElementById("rb-dag").scrollLeft = scroll;
          document.getElementById("rb-steps").innerHTML = data.steps;
          document.querySelectorAll("#rb-steps details").forEach(function (d) { if (open[d.dataset.key]) { d.open = true; } });
          root.dataset.status = data.status;
          if (data.finished) { finished = true; stop("run ended"); }
        })
        .catch(function (e) { state.textContent = "(update failed: " + e.message + ")"; })
        .finally(function () {
          inflight = false;
          if (again) { again = false; schedule(); }
        });
    }

    function schedule() {
      if (pending) { return; }
      pending = setTimeout(function () { pending = null; refresh(); }, 250);
    }

    function stop(why) {
      if (source) { source.close(); source = null; }
      state.textContent = "(" + why + ")";
    }

    function follow() {
      var url = at(ds.events) + "?since=" + encodeURIComponent(ds.lastEvent || "0");
      source = new EventSource(url);
      source.onopen = function () { state.textContent = "(live)"; };
      source.onmessage = function () { schedule(); };
      source.addEventListener("end", function () { schedule(); stop("run ended"); });
      source.onerror = function () { if (source) { state.textContent = "(reconnecting…)"; } };
    }

    if (!finished) { follow(); } else { state.textContent = "(run ended)"; }

    document.addEventListener("click", function (ev) {
      var btn = ev.target.closest("[data-rb-action]");
      if (!btn || btn.disabled) { return; }
      var action = btn.dataset.rbAction;
      var question = {
        cancel: "Cancel this run? Running steps are stopped.",
        abort: "Abort: fail the steps waiting for a decision?",
        reject: "Reject step " + btn.dataset.rbStep + "?" + (btn.dataset.rbPrompt ? "\n\n" + btn.dataset.rbPrompt : ""),
        approve: btn.dataset.rbPrompt ? "Approve step " + btn.dataset.rbStep + "?\n\n" + btn.dataset.rbPrompt : null,
      }[action];
      if (question && !window.confirm(question)) { return; }
      btn.disabled = true;
      say(action + "…");
      post(btn.dataset.rbPost, btn.dataset.rbBody ? JSON.parse(btn.dataset.rbBody) : {})
        .then(function (data) {
          if (action === "rerun" || action === "rerun_failed") {
            window.location.assign(at(ds.page + data.id));
            return;
          }
          say(action + ": done");
          schedule();
          if (finished && action !== "cancel") { finished = false; if (!source) { follow(); } }
        })
        .catch(function (e) { btn.disabled = false; say(action + " refused: " + e.message, true); });
    });

    // step logs, following live while the step runs
    var panel = document.getElementById("rb-log-panel");
    var logBox = document.getElementById("rb-log");
    var logState = document.getElementById("rb-log-state");
    var logSource = null;

    function closeLog() { if (logSource) { logSource.close(); logSource = null; } }

    document.getElementById("rb-log-close").addEventListener("click", function () { closeLog(); panel.hidden = true; });

    document.addEventListener("click", function (ev) {
      var btn = ev.target.closest("[data-rb-log]");
      if (!btn) { return; }
      closeLog();
      var step = btn.dataset.rbLog;
      panel.hidden = false;
      document.getElementById("rb-log-step").textContent = step;
      logBox.textContent = "";
      logState.textContent = "(connecting…)";
      logSource = new EventSource(at(ds.logs + encodeURIComponent(step)));
      logSource.onopen = function () { logState.textContent = "(live)"; };
      logSource.onmessage = function (m) {
        var line = JSON.parse(m.data);
        var span = document.createElement("span");
        if (line.s === "err") { span.className = "rb-err"; }
        span.textContent = line.l + "\n";
        var atEnd = logBox.scrollTop + logBox.clientHeight >= logBox.scrollHeight - 4;
        logBox.appendChild(span);
        if (atEnd) { logBox.scrollTop = logBox.scrollHeight; }
      };
      logSource.addEventListener("note", function (m) {
        var span = document.createElement("span");
        span.className = "rb-muted";
        span.textContent = "[" + JSON.parse(m.data).note + "]\n";
        logBox.appendChild(span);
      });
      logSource.addEventListener("end", function () { closeLog(); logState.textContent = "(step ended)"; });
      logSource.onerror = function () { if (logSource) { logState.textContent = "(reconnecting…)"; } };
      panel.scrollIntoView({ block: "nearest" });
    });
  }

  // ------------------------------------------------------------------ trigger form
  var trigger = document.getElementById("rb-trigger");
  if (trigger) {
    trigger.addEventListener("submit", function (ev) {
      var form = ev.target.closest(".rb-trigger-form");
      if (!form) { return; }
      ev.preventDefault();
      var params = {};
      form.querySelectorAll("[data-param]").forEach(function (input) {
        // an optional param left empty is not given: the run takes no value for it
        if (input.value === "" && input.dataset.optional) { return; }
        params[input.dataset.param] = input.value;
      });
      var error = form.querySelector(".rb-error");
      var button = form.querySelector("button[type=submit]");
      error.textContent = "";
      button.disabled = true;
      post(trigger.dataset.api, { workflow: form.dataset.workflow, params: params })
        .then(function (data) { window.location.assign(at(data.url)); })
        .catch(function (e) { button.disabled = false; error.textContent = e.message; });
    });
  }
})();
