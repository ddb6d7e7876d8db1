// The chat page: send over the ws/chat/ socket, render the streamed answer, Stop, Regenerate.
// No framework, no CDN. Model output is untrusted: it is rendered by markdown-it (vendored under
// static/vendor/markdown-it) with raw HTML off, so any tag a model writes stays text; links are http(s) or
// mailto only and open in a new tab without a referrer; images are off (an answer must not make the browser
// fetch anything).
(function () {
  "use strict";

  // --- Safe Markdown ---------------------------------------------------------------------------------------

  const md = window.markdownit({ html: false, linkify: false, breaks: true, typographer: false });
  md.disable(["image"]);
  const SAFE_LINK = /^(https?:\/\/|mailto:)/i;
  md.validateLink = (url) => SAFE_LINK.test(String(url).trim());
  const renderToken = (tokens, idx, options, env, self) => self.renderToken(tokens, idx, options);
  const linkOpen = md.renderer.rules.link_open || renderToken;
  md.renderer.rules.link_open = (tokens, idx, options, env, self) => {
    tokens[idx].attrSet("target", "_blank");
    tokens[idx].attrSet("rel", "noopener noreferrer nofollow");
    return linkOpen(tokens, idx, options, env, self);
  };

  function renderMarkdown(source) {
    return md.render(String(source)).trim(); // no text node after the last block
  }
  window.renderMarkdown = renderMarkdown; // for tests and the console

  // --- The page --------------------------------------------------------------------------------------------

  const root = document.getElementById("chat");
  if (!root) return;
  const list = document.getElementById("messages");
  const form = document.getElementById("composer");
  const prompt = document.getElementById("prompt");
  const sendButton = document.getElementById("send");
  const stopButton = document.getElementById("stop");
  const regenerateButton = document.getElementById("regenerate");
  const statusLine = document.getElementById("chat-status");
  const titleEl = document.getElementById("chat-title");
  const modelSelect = document.getElementById("model");
  const systemPrompt = document.getElementById("system-prompt");
  const settingsPanel = document.getElementById("chat-settings");
  const settingsSummary = document.getElementById("settings-summary");
  let conversationId = root.dataset.conversationId || null;

  let socket = null;
  let retry = 500;
  let current = null; // the answer being generated: {requestId, el, text, seq}
  let asked = null; // what was sent and not yet accepted: {kind, content}
  let elsewhere = null; // an answer generating for another (or an earlier) page: {requestId}
  let poller = null;

  function status(text, isError) {
    statusLine.textContent = text || "";
    statusLine.classList.toggle("error", Boolean(isError));
  }

  function busy(on) {
    sendButton.disabled = on || !modelSelect || Boolean(elsewhere);
    stopButton.hidden = !(current || elsewhere);
    regenerateButton.disabled = on || Boolean(elsewhere);
  }

  function part(el, role) {
    return el.querySelector('[data-role="' + role + '"]');
  }

  function render(el, text) {
    const body = part(el, "body");
    body.classList.add("md");
    body.innerHTML = renderMarkdown(text);
  }

  function nearBottom() {
    return window.innerHeight + window.scrollY >= document.body.scrollHeight - 120;
  }

  function keepScrolled(wasNear) {
    if (wasNear) window.scrollTo(0, document.body.scrollHeight);
  }

  function figures(f) {
    if (!f || f.completion_tokens == null) return "";
    const bits = [];
    if (f.ttft_ms != null) bits.push("TTFT " + Math.round(f.ttft_ms) + " ms");
    if (f.tokens_per_second) bits.push(f.tokens_per_second.toFixed(1) + " tokens/s");
    bits.push(f.completion_tokens + " tokens");
    if (f.prompt_tokens != null) {
      bits.push("prompt " + f.prompt_tokens + (f.cached_tokens ? " (" + f.cached_tokens + " cached)" : ""));
    }
    return bits.join(" · ");
  }

  function setStatus(el, state, label) {
    el.dataset.status = state;
    let badge = part(el, "status");
    if (state === "complete") {
      if (badge) badge.remove();
      return;
    }
    if (!badge) {
      badge = document.createElement("span");
      badge.dataset.role = "status";
      el.querySelector(".msg-head").appendChild(badge);
    }
    badge.className = "badge " + state;
    badge.textContent = label || (state === "pending" || state === "streaming" ? "generating…" : state);
  }

  function messageElement(role, id, text) {
    const el = document.createElement("article");
    el.className = "msg " + role;
    el.dataset.role = role;
    if (id) el.dataset.id = id;
    el.innerHTML =
      '<div class="msg-head"><span class="msg-role"></span><span class="msg-model" data-role="model"></span></div>' +
      '<div class="msg-body" data-role="body"></div>' +
      '<p class="msg-error error" data-role="error" hidden></p>' +
      '<p class="msg-figures muted small" data-role="figures"></p>';
    el.querySelector(".msg-role").textContent = role === "user" ? "You" : "Assistant";
    if (role !== "assistant") part(el, "model").remove();
    render(el, text || "");
    const empty = document.getElementById("empty-note");
    if (empty) empty.remove();
    list.appendChild(el);
    return el;
  }

  function showError(el, message) {
    const error = part(el, "error");
    error.textContent = message;
    error.hidden = false;
  }

  // --- Socket --------------------------------------------------------------------------------------------

  function connect() {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    socket = new WebSocket(scheme + location.host + root.dataset.socketPath);
    socket.addEventListener("open", () => {
      retry = 500;
      root.dataset.connected = "1"; // for tests and styles
      status("");
    });
    socket.addEventListener("message", (event) => handle(JSON.parse(event.data)));
    socket.addEventListener("close", (event) => {
      delete root.dataset.connected;
      if (event.code === 4401) {
        status("Your session has ended: log in again to chat.", true);
        busy(true);
        stopButton.hidden = true;
        return;
      }
      // The server stopped the generation when the socket closed and saved what it had: re-read it.
      if (current || asked) {
        current = null;
        asked = null;
        busy(false);
        resync();
      }
      status("Connection lost; reconnecting…", true);
      setTimeout(connect, retry);
      retry = Math.min(retry * 2, 10000);
    });
  }

  function sendFrame(frame) {
    if (!socket || socket.readyState !== WebSocket.OPEN) {
      status("Not connected yet; try again in a moment.", true);
      return false;
    }
    socket.send(JSON.stringify(frame));
    return true;
  }

  function handle(msg) {
    const wasNear = nearBottom();
    switch (msg.type) {
      case "chat.accepted":
        accepted(msg);
        break;
      case "chat.started":
        if (current && msg.request_id === current.requestId) {
          current.seq = msg.seq + 1;
          if (msg.model) part(current.el, "model").textContent = msg.model;
          setStatus(current.el, "streaming");
          if (msg.notice) {
            const notice = document.createElement("p");
            notice.className = "msg-notice";
            notice.textContent = msg.notice;
            current.el.insertBefore(notice, part(current.el, "body"));
          }
        }
        break;
      case "chat.queued":
        if (current && msg.request_id === current.requestId) {
          setStatus(current.el, "pending", "waiting for the model, " + msg.ahead + " ahead");
        }
        break;
      case "chat.progress":
        if (current && msg.request_id === current.requestId) {
          const pct = msg.total ? Math.floor((100 * msg.processed) / msg.total) : 0;
          setStatus(current.el, "streaming", "reading the prompt " + pct + "%");
        }
        break;
      case "chat.delta":
        if (current && msg.request_id === current.requestId) {
          if (msg.seq !== current.seq) console.warn("chat: expected seq", current.seq, "got", msg.seq);
          current.seq = msg.seq + 1;
          current.text += msg.text;
          scheduleRender();
        }
        break;
      case "chat.done":
        if (current && msg.request_id === current.requestId) {
          const el = current.el;
          render(el, msg.text); // the worker's full text is the reference
          const usage = msg.usage || {};
          part(el, "figures").textContent = figures(usage);
          setStatus(el, msg.finish_reason === "cancelled" ? "stopped" : "complete");
          finish();
        }
        break;
      case "chat.error":
        chatError(msg);
        break;
    }
    keepScrolled(wasNear);
  }

  let renderQueued = false;
  function scheduleRender() {
    if (renderQueued) return;
    renderQueued = true;
    requestAnimationFrame(() => {
      renderQueued = false;
      if (current) {
        const wasNear = nearBottom();
        render(current.el, current.text);
        keepScrolled(wasNear);
      }
    });
  }

  // A conversation the first message just created joins the sidebar at the top, marked current.
  function addToConversationList(id, title) {
    const listEl = document.querySelector(".conv-list");
    if (!listEl) return;
    listEl.querySelectorAll("li.muted").forEach((el) => el.remove());
    listEl.querySelectorAll("a[aria-current]").forEach((el) => el.removeAttribute("aria-current"));
    const link = document.createElement("a");
    link.href = root.dataset.chatUrl + id + "/";
    link.textContent = title;  // text, never HTML
    link.setAttribute("aria-current", "page");
    const item = document.createElement("li");
    item.appendChild(link);
    listEl.prepend(item);
  }

  function accepted(msg) {
    const kind = asked ? asked.kind : "send";
    const content = asked ? asked.content : "";
    asked = null;
    if (!conversationId || String(conversationId) !== String(msg.conversation_id)) {
      conversationId = String(msg.conversation_id);
      root.dataset.conversationId = conversationId;
      history.replaceState(null, "", root.dataset.chatUrl + conversationId + "/");
      titleEl.textContent = msg.title;
      document.title = msg.title + " · Chat · MLX Control Room";
      addToConversationList(conversationId, msg.title);
    }
    if (kind === "regenerate") {
      // The old answer was replaced on the server: drop it here too.
      let last = list.lastElementChild;
      while (last && last.dataset.role === "assistant") {
        last.remove();
        last = list.lastElementChild;
      }
    } else {
      messageElement("user", msg.user_message_id, content);
    }
    const el = messageElement("assistant", msg.assistant_message_id, "");
    el.dataset.requestId = msg.request_id;
    part(el, "model").textContent = selectedModelName();
    // The settings have been chosen: fold them to their one-line summary and give the answer the room.
    if (settingsPanel) settingsPanel.open = false;
    setStatus(el, "pending");
    current = { requestId: msg.request_id, el: el, text: "", seq: 0 };
    regenerateButton.hidden = false;
    busy(true);
    status("");
  }

  function chatError(msg) {
    if (current && msg.request_id === current.requestId) {
      if (msg.code === "cancelled") {
        setStatus(current.el, "stopped");
      } else {
        setStatus(current.el, "error");
        showError(current.el, msg.message);
      }
      finish();
      return;
    }
    // Refused before anything was saved (no worker, bad options...): give the text back.
    if (asked) {
      if (asked.kind === "send" && !prompt.value) prompt.value = asked.content;
      asked = null;
      busy(false);
    }
    status(msg.message, true);
  }

  function finish() {
    current = null;
    busy(false);
    prompt.focus();
  }

  // --- Actions ---------------------------------------------------------------------------------------------

  function selectedModelName() {
    const option = modelSelect && modelSelect.selectedOptions[0];
    return option ? option.dataset.repo || option.textContent : "";
  }

  // "repo · temperature 0.2 · max tokens 12": what the folded settings panel says.
  function summarizeSettings() {
    if (!settingsSummary) return;
    const bits = [];
    if (modelSelect) bits.push(selectedModelName());
    document.querySelectorAll("[data-option]").forEach((input) => {
      const label = document.querySelector('label[for="' + input.id + '"]');
      if (input.value.trim() !== "" && label) bits.push(label.textContent.toLowerCase() + " " + input.value.trim());
    });
    const stops = document.getElementById("opt-stop").value.split("\n").filter((s) => s.length).length;
    if (stops) bits.push(stops + (stops === 1 ? " stop string" : " stop strings"));
    if (systemPrompt && systemPrompt.value.trim()) bits.push("system prompt");
    settingsSummary.textContent = bits.join(" · ");
  }

  function options() {
    const result = {};
    document.querySelectorAll("[data-option]").forEach((input) => {
      if (input.value.trim() !== "") result[input.dataset.option] = Number(input.value);
    });
    const stops = document.getElementById("opt-stop").value.split("\n").filter((s) => s.length);
    if (stops.length) result.stop = stops;
    return result;
  }

  function send() {
    const content = prompt.value;
    if (!content.trim() || current || asked || !modelSelect) return;
    const frame = {
      type: "chat.send",
      conversation_id: conversationId ? Number(conversationId) : null,
      content: content,
      snapshot_id: Number(modelSelect.value),
      system_prompt: systemPrompt.value,
      options: options(),
    };
    if (!sendFrame(frame)) return;
    asked = { kind: "send", content: content };
    prompt.value = "";
    busy(true);
    stopButton.hidden = true; // nothing to stop until the server accepted it
    status("Sending…");
  }

  function regenerate() {
    if (!conversationId || current || asked) return;
    if (sendFrame({ type: "chat.regenerate", conversation_id: Number(conversationId), options: options() })) {
      asked = { kind: "regenerate", content: "" };
      busy(true);
      stopButton.hidden = true;
    }
  }

  function stop() {
    const target = current || elsewhere;
    if (target) sendFrame({ type: "chat.stop", request_id: target.requestId });
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });
  stopButton.addEventListener("click", stop);
  regenerateButton.addEventListener("click", regenerate);
  document.querySelectorAll("form[data-confirm]").forEach((f) => {
    f.addEventListener("submit", (event) => {
      if (!window.confirm(f.dataset.confirm)) event.preventDefault();
    });
  });

  // --- History from the database ------------------------------------------------------------------------

  // An answer still generating when the page loaded belongs to another (or an earlier) page: its tokens go
  // there, so follow it through the database until it ends.
  function resync() {
    if (!conversationId) return;
    fetch(root.dataset.chatUrl + conversationId + "/messages/", { credentials: "same-origin" })
      .then((r) => (r.ok ? r.json() : null))
      .then((data) => {
        if (!data) return;
        let pending = null;
        data.messages.forEach((m) => {
          let el = list.querySelector('.msg[data-id="' + m.id + '"]');
          if (!el) el = messageElement(m.role, m.id, m.content);
          if (current && el === current.el) return;
          render(el, m.content);
          part(el, "figures").textContent = figures(m.figures);
          if (m.model && part(el, "model")) part(el, "model").textContent = m.model;
          if (m.role === "assistant") setStatus(el, m.status);
          if (m.error) showError(el, m.error);
          if (m.status === "pending" || m.status === "streaming") pending = { requestId: m.request_id };
        });
        clearTimeout(poller);
        elsewhere = pending;
        if (pending) {
          poller = setTimeout(resync, 2000);
        } else {
          status("");
        }
        busy(Boolean(current || asked));
      })
      .catch(() => {
        poller = setTimeout(resync, 4000);
      });
  }

  list.querySelectorAll(".msg").forEach((el) => {
    render(el, part(el, "body").textContent);
  });
  const running = list.querySelector('.msg[data-status="pending"], .msg[data-status="streaming"]');
  if (running) {
    elsewhere = { requestId: running.dataset.requestId };
    status("An answer is still being generated elsewhere; it appears here when it is done.");
    poller = setTimeout(resync, 2000);
  }
  if (settingsPanel) {
    settingsPanel.addEventListener("input", summarizeSettings);
    settingsPanel.addEventListener("change", summarizeSettings);
  }
  summarizeSettings();
  busy(false);
  connect();
  keepScrolled(true);
  if (prompt && !prompt.disabled) prompt.focus();
})();
