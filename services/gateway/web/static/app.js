// The dashboard's only script: live updates for the job page (Server-Sent Events) and the job
// list (a periodic refresh). Everything it shows comes either from the server's HTML (parsed,
// never built from strings) or from event fields put in with textContent: nothing is
// interpreted as markup.
"use strict";

(function () {
  const MAX_LOG_ROWS = 5000;
  const LIST_REFRESH_MS = 3000;
  const PANEL_DEBOUNCE_MS = 300;

  // Make `old` look like `fresh`, keeping nodes that did not change (a playing <video>
  // survives). Children of a [data-keyed] element are matched by id.
  function sync(old, fresh) {
    if (old.isEqualNode(fresh)) return;
    if (!old.hasAttribute("data-keyed") || !fresh.hasAttribute("data-keyed") || !fresh.id) {
      old.replaceWith(fresh);
      return;
    }
    for (const attr of fresh.attributes) old.setAttribute(attr.name, attr.value);
    const byId = new Map();
    for (const child of Array.from(old.children)) byId.set(child.id, child);
    let previous = null;
    for (const child of Array.from(fresh.children)) {
      let current = child.id ? byId.get(child.id) : undefined;
      if (current) {
        byId.delete(child.id);
        if (!current.isEqualNode(child)) {
          if (current.hasAttribute("data-keyed") && child.hasAttribute("data-keyed")) {
            sync(current, child);
          } else {
            current.replaceWith(child);
            current = child;
          }
        }
      } else {
        current = child;
      }
      const wanted = previous ? previous.nextElementSibling : old.firstElementChild;
      if (wanted !== current) old.insertBefore(current, wanted);
      previous = current;
    }
    for (const stale of byId.values()) stale.remove();
  }

  function parse(html, selector) {
    const template = document.createElement("template");
    template.innerHTML = html;
    return template.content.querySelector(selector);
  }

  async function fetchHtml(url) {
    const response = await fetch(url, { cache: "no-store", credentials: "same-origin" });
    if (response.status === 401) {
      window.location.reload(); // the page itself sends us to the login page
      return null;
    }
    if (!response.ok) throw new Error("HTTP " + response.status);
    return response.text();
  }

  function setLive(element, state, icon, text) {
    element.dataset.state = state;
    element.replaceChildren();
    const mark = document.createElement("span");
    mark.setAttribute("aria-hidden", "true");
    mark.textContent = icon;
    element.append(mark, " " + text);
  }

  function badge(labels, value) {
    const known = labels[value] || ["•", value];
    const span = document.createElement("span");
    span.className = "badge s-" + value;
    const icon = document.createElement("span");
    icon.className = "icon";
    icon.setAttribute("aria-hidden", "true");
    icon.textContent = known[0];
    const word = document.createElement("span");
    word.className = "word";
    word.textContent = known[1];
    span.append(icon, " ", word);
    return span;
  }

  function cell(row, text, className) {
    const td = row.insertCell();
    td.textContent = text;
    if (className) td.className = className;
    return td;
  }

  function clock(seconds) {
    return new Date(seconds * 1000).toISOString().slice(11, 23);
  }

  function jobPage(root) {
    const labels = JSON.parse(document.getElementById("labels").textContent);
    const panel = document.getElementById("panel");
    const log = document.getElementById("events");
    const box = document.getElementById("log-box");
    const live = document.getElementById("live");
    const noun = root.dataset.noun || "task";
    let last = 0; // cursor of the last event shown
    let duplicates = 0;
    let gaps = 0;
    let source = null;
    let retryDelay = 1000;
    let panelTimer = null;
    let panelBusy = false;
    let panelAgain = false;

    async function refreshPanel() {
      if (panelBusy) { panelAgain = true; return; }
      panelBusy = true;
      try {
        const html = await fetchHtml(root.dataset.panel);
        const fresh = html && parse('<div id="panel" data-keyed>' + html + "</div>", "#panel");
        if (fresh) sync(panel, fresh);
      } catch (error) {
        // The gateway is away: the stream's reconnect refreshes again once it is back.
      } finally {
        panelBusy = false;
        if (panelAgain) { panelAgain = false; schedulePanel(); }
      }
    }

    function schedulePanel() {
      if (panelTimer !== null) return;
      panelTimer = setTimeout(() => { panelTimer = null; refreshPanel(); }, PANEL_DEBOUNCE_MS);
    }

    function showStatusAtOnce(event) {
      if (event.task_index !== null && event.task_status) {
        const card = document.getElementById("task-" + event.task_index);
        if (card && card.dataset.status !== event.task_status) {
          card.dataset.status = event.task_status;
          card.className = "task s-" + event.task_status;
          const status = card.querySelector(".status");
          if (status) status.replaceChildren(badge(labels.task, event.task_status));
        }
      }
      if (event.job_status) {
        const status = document.getElementById("job-status");
        if (status) status.replaceChildren(badge(labels.job, event.job_status));
      }
    }

    function append(event) {
      if (event.cursor <= last) {
        duplicates += 1;
        log.dataset.duplicates = String(duplicates);
        return;
      }
      if (event.cursor !== last + 1) {
        gaps += 1;
        log.dataset.gaps = String(gaps);
      }
      last = event.cursor;
      const stick = box.scrollTop + box.clientHeight >= box.scrollHeight - 8;
      const row = log.insertRow();
      row.dataset.cursor = String(event.cursor);
      row.dataset.type = event.type;
      cell(row, String(event.cursor), "cursor");
      cell(row, clock(event.created_at));
      cell(row, event.type.replaceAll("_", " "));
      cell(row, event.task_index === null ? "job" : (event.task_index === 0 && noun === "set" ? "plan" : noun + " " + event.task_index));
      const status = row.insertCell();
      const value = event.task_status || event.job_status;
      if (value) status.append(badge(event.task_status ? labels.task : labels.job, value));
      const message = cell(row, event.message);
      if (event.error_class) {
        const code = document.createElement("code");
        code.textContent = event.error_class;
        message.append(" (", code, ")");
      }
      while (log.rows.length > MAX_LOG_ROWS) log.deleteRow(0);
      if (stick) box.scrollTop = box.scrollHeight;
      showStatusAtOnce(event);
    }

    function open() {
      // A fresh EventSource resumes with ?after=; the browser's own reconnects send
      // Last-Event-ID (the same cursor), which the server prefers.
      source = new EventSource(root.dataset.events + "?after=" + last);
      source.onopen = () => {
        retryDelay = 1000;
        setLive(live, "live", "●", "live");
        schedulePanel();
      };
      source.onmessage = (message) => {
        append(JSON.parse(message.data));
        schedulePanel();
      };
      source.addEventListener("gone", () => {
        source.close();
        setLive(live, "gone", "⊘", "this job no longer exists (it was deleted)");
      });
      source.onerror = () => {
        if (source.readyState === EventSource.CLOSED) {
          // Refused (e.g. too many streams, or signed out): the browser gave up; we do not.
          setLive(live, "reconnecting", "↻", "connection lost; retrying…");
          setTimeout(open, retryDelay);
          retryDelay = Math.min(retryDelay * 2, 15000);
        } else {
          setLive(live, "reconnecting", "↻", "connection lost; reconnecting…");
        }
      };
    }

    open();
  }

  function listPage(table) {
    const url = table.dataset.refresh;
    async function refresh() {
      if (document.visibilityState !== "visible") return;
      try {
        const html = await fetchHtml(url);
        const fresh = html && parse("<table>" + html + "</table>", "#job-rows");
        const rows = document.getElementById("job-rows");
        if (fresh && rows) sync(rows, fresh);
      } catch (error) {
        // Try again at the next tick.
      }
    }
    setInterval(refresh, LIST_REFRESH_MS);
    document.addEventListener("visibilitychange", refresh);
  }

  document.addEventListener("DOMContentLoaded", () => {
    const job = document.getElementById("job");
    if (job) jobPage(job);
    const jobs = document.getElementById("jobs");
    if (jobs && jobs.dataset.refresh) listPage(jobs);
  });
})();
