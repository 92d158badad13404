// Shared by the study's pages: the API (retried through a lost connection), joining or resuming
// with the recruitment platform's ids, the consent and questionnaire screens, every ending
// (its outcome's code and the platform redirect), and the custom screens the pages build on.
"use strict";

const RETRY_MS = [500, 1000, 2000, 4000, 8000, 8000, 8000, 8000, 8000];  // about 48 s in all

function announce(text) {
  // the live region a screen reader reads out (the choices opening, an error, a reconnection)
  const region = document.getElementById("announce");
  if (region) region.textContent = text;
}

function connectionBanner(show) {
  let bar = document.getElementById("connection");
  if (!bar && show) {
    bar = document.createElement("div");
    bar.id = "connection";
    bar.setAttribute("role", "status");
    bar.textContent = "The connection was lost. Retrying; your answers so far are saved.";
    document.body.appendChild(bar);
  }
  if (bar) bar.hidden = !show;
}

const api = {
  async call(method, path, body, headers) {
    // a network failure or a server that is briefly away (502-504) is retried; the server makes
    // each write safe to repeat (the same answer twice is stored once)
    for (let attempt = 0; ; attempt++) {
      let r;
      try {
        const init = {method, headers: {...(headers || {})}};
        if (body instanceof Blob) {
          init.body = body;
        } else if (body !== undefined) {
          init.body = JSON.stringify(body);
          init.headers["Content-Type"] = "application/json";
        }
        r = await fetch(path, init);
      } catch (e) {
        r = null;
      }
      if (r && ![502, 503, 504].includes(r.status)) {
        connectionBanner(false);
        const text = await r.text();
        let data = {};
        try { data = text ? JSON.parse(text) : {}; } catch (e) { data = {detail: text}; }
        if (!r.ok) {
          const err = new Error(detailText(data.detail));
          err.status = r.status;
          throw err;
        }
        return data;
      }
      if (attempt >= RETRY_MS.length) {
        const err = new Error("the study's server cannot be reached");
        err.status = 0;
        throw err;
      }
      connectionBanner(true);
      await new Promise((ok) => setTimeout(ok, RETRY_MS[attempt]));
    }
  },
};

function detailText(detail) {
  // the server's reason in words: FastAPI's checks of a request give a list of {msg} objects
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) return detail.map((d) => (d && d.msg) || String(d)).join("; ");
  return "the server refused the request";
}

function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
}

function client() {
  const coarse = window.matchMedia && window.matchMedia("(pointer: coarse)").matches;
  // the screen's short side (or the window's, where an emulated or split screen reports the host's)
  const short = Math.min(window.screen.width, window.screen.height, window.innerWidth);
  const device = coarse ? (short < 600 ? "phone" : "tablet") : "desktop";
  return {device, screen: `${window.innerWidth}x${window.innerHeight}`, browser: navigator.userAgent.slice(0, 300)};
}

function missingFeatures(role) {
  const missing = [];
  if (!window.fetch || !window.Promise) missing.push("fetch");
  if (!(window.AudioContext || window.webkitAudioContext)) missing.push("Web Audio");
  if (role === "record" && !(navigator.mediaDevices && navigator.mediaDevices.getUserMedia)) missing.push("camera and microphone access");
  if (role === "record" && !window.MediaRecorder) missing.push("recording (MediaRecorder)");
  return missing;
}

// --- endings --------------------------------------------------------------------------------

function endPage(title, text, ending, code) {
  // the last screen of every path: what happened, what to do, the outcome's code and redirect,
  // and (when they took part) the participant's own code for a later withdrawal
  const bar = document.getElementById("withdraw-bar");
  if (bar) bar.remove();
  connectionBanner(false);
  let html = `<div class="page ending" id="ending" data-outcome="${escapeHtml(ending ? ending.outcome : "")}">` +
    `<h2 tabindex="-1">${escapeHtml(title)}</h2>${text}`;
  if (ending && ending.completion_code) {
    html += `<p>Your completion code is</p><p id="completion-code" class="code">${escapeHtml(ending.completion_code)}</p>`;
  }
  if (ending && ending.redirect) {
    html += `<p><a id="redirect" class="button" href="${escapeHtml(ending.redirect)}">Return to the study platform</a></p>`;
  }
  if (code) {
    html += `<p class="hint">Your participant code is <span id="participant-code" class="code small">${escapeHtml(code)}</span>. ` +
      `Keep it: with it you can <a id="withdraw-later" href="/withdraw?code=${encodeURIComponent(code)}">withdraw</a> later, and everything you gave is deleted.</p>`;
  }
  html += "</div>";
  const root = document.getElementById("study");
  root.innerHTML = html;
  root.querySelector("h2").focus();
  announce(title);
}

const SCREENED_OUT = {  // why a participant was screened out, in their words (the server's reasons)
  "took part in the recording": "This study is for people who did not record themselves for it.",
  "failed the sound check": "The sound check did not come through: this study needs you to hear its recordings clearly.",
  "failed the headphone check": "The headphone check did not come through: this study needs headphones.",
};

function showEnding(ending, code) {
  const texts = {
    completed: ["Thank you!", "<p>You have finished the study.</p>"],
    failed_checks: ["Thank you", "<p>You have finished. Some of the check tasks were not answered as expected, so your answers cannot be used.</p>"],
    screened_out: ["Thank you for your time", `<p>${escapeHtml(SCREENED_OUT[ending.reason] || "This study is not for you.")} Nothing more is asked of you.</p>`],
    declined: ["Thank you", "<p>Without consent nothing is recorded. You can close this tab.</p>"],
    no_device: ["This device cannot be used", "<p>The study needs what this browser or device does not give.</p>"],
  };
  const [title, text] = texts[ending.outcome] || texts.completed;
  endPage(title, text, ending, code);
}

async function leave(outcome, why, code) {
  // no consent or no usable device: the join (if any) is deleted, the page gets the outcome's code
  const ending = await api.call("POST", "/api/leave", code ? {outcome, code} : {outcome});
  sessionStorage.clear();
  const [title, text] = why;
  endPage(title, text, ending, null);
}

// --- joining ----------------------------------------------------------------------------------

function savedKey(role, pilot) {
  return `facevoice-study-${role}${pilot ? "-pilot" : ""}`;
}

async function joinStudy(role, study) {
  // -> the participant's state (see GET /api/participants/{code}), or null when the page ended.
  // Resumes, in this order: the resume link (?resume=CODE), this tab's saved code, the platform
  // id's unfinished participation (the server finds it); otherwise joins.
  const params = new URLSearchParams(window.location.search);
  const pilot = params.get("pilot");
  const missing = missingFeatures(role);
  if (missing.length) {
    await leave("no_device", ["This browser cannot run the study",
      `<p>It lacks ${escapeHtml(missing.join(", "))}. Please open the study link in a current Chrome, Firefox, Edge or Safari.</p>`]);
    return null;
  }
  const info = client();
  if (!study.devices.includes(info.device)) {
    await leave("no_device", ["This study cannot be taken on this device",
      `<p>It is made for a ${escapeHtml(study.devices.join(" or "))}, and this looks like a ${info.device}. Please open the study link there.</p>`]);
    return null;
  }
  const key = savedKey(role, pilot);
  for (const code of [params.get("resume"), sessionStorage.getItem(key)]) {
    if (!code) continue;
    try {
      const state = await api.call("GET", `/api/participants/${encodeURIComponent(code)}`);
      if (state.role === role) {
        sessionStorage.setItem(key, state.code);
        return state;
      }
    } catch (e) {
      if (e.status !== 404) throw e;  // a withdrawn or unknown code: join anew
    }
    sessionStorage.removeItem(key);
  }
  const ids = {};
  for (const name of study.platform.params) {
    const v = params.get(name);
    if (v) ids[name] = v;
  }
  const body = {role, platform_ids: ids, client: info};
  if (pilot) Object.assign(body, {source: "pilot", pilot_token: pilot});
  let joined;
  try {
    joined = await api.call("POST", "/api/participants", body);
  } catch (e) {
    let why = {409: "You have taken part already", 429: "Too many people are starting from here", 403: "This link cannot start the study",
      503: "The study is not open yet", 400: "This link is not complete"}[e.status] || "The study could not start";
    if (e.status === 409 && e.message.includes("another session")) why = "Your participation is open in another session";
    const retry = [429, 503, 0].includes(e.status)
      ? '<p><button type="button" id="retry-join" class="jspsych-btn">Try again</button></p>' : "";
    endPage(why, `<p class="error">${escapeHtml(e.message)}</p>${retry}<p>If you think this is wrong, contact the researcher named in the study's description.</p>`, null, null);
    const again = document.getElementById("retry-join");
    if (again) again.addEventListener("click", () => window.location.reload());
    return null;
  }
  sessionStorage.setItem(key, joined.code);
  return api.call("GET", `/api/participants/${joined.code}`);
}

function withdrawLink(state, study) {
  // shown once consent is given (before it nothing of the participant is kept: "I do not agree" leaves)
  if (document.getElementById("withdraw-bar")) return;
  const platform = {prolific: "Prolific", mturk: "MTurk"}[study.platform.name];
  const back = platform ? `<p>To end on ${platform}, return your submission there: there is no completion code for a withdrawal.</p>` : "";
  const bar = document.createElement("div");
  bar.id = "withdraw-bar";
  bar.innerHTML = '<button id="withdraw" type="button">Withdraw and delete my data</button>';
  document.body.appendChild(bar);
  document.getElementById("withdraw").addEventListener("click", () => {
    if (!confirm("Withdraw from the study? Everything you gave is deleted.")) return;
    api.call("DELETE", `/api/participants/${state.code}`).then(() => {
      sessionStorage.clear();
      endPage("You have withdrawn", `<p>Your data has been deleted.</p>${back}<p>You can close this tab.</p>`, null, null);
    }).catch((e) => endPage("The withdrawal did not go through", `<p class="error">${escapeHtml(e.message)}</p>` +
      `<p>Your participant code is <span class="code small">${escapeHtml(state.code)}</span>: withdraw with it on <a href="/withdraw?code=${encodeURIComponent(state.code)}">the withdrawal page</a>, or write to the contact in the consent.</p>`, null, null));
  });
}

// --- screens ----------------------------------------------------------------------------------

function screenTrial(render) {
  // a jsPsych trial that draws its own screen: render(el, done) fills the display and calls
  // done() when the participant is through (or never, when the page ended)
  return {
    type: jsPsychCallFunction,
    async: true,
    func: (finish) => {
      const el = document.getElementById("study").querySelector(".jspsych-content") || document.getElementById("study");
      let called = false;
      const done = () => { if (!called) { called = true; finish(); } };  // a double click ends one screen only
      announce("");  // the last screen's announcement is not this one's
      render(el, done);
      const heading = el.querySelector("h1, h2");
      if (heading) { heading.setAttribute("tabindex", "-1"); heading.focus(); }
    },
  };
}

function failed(e) {
  endPage("Something went wrong", `<p class="error">${escapeHtml(e.message)}</p><p>Your answers so far are saved. Reload this page to go on from where you were.</p>`, null, null);
}

function consentTrials(jsPsych, study, state) {
  return [screenTrial((el, done) => {
    el.innerHTML = `<div class="page"><h1>${escapeHtml(study.title)}</h1><h2>Consent</h2>${study.consent}` +
      `<p class="hint">You can withdraw at any time, on <a href="/withdraw">${escapeHtml(location.origin)}/withdraw</a>, with the participant code you are given. Consent version ${escapeHtml(study.consent_version || "-")}</p>` +
      '<p class="choices"><button id="agree" class="jspsych-btn" type="button">I agree</button> ' +
      '<button id="disagree" class="jspsych-btn" type="button">I do not agree</button></p></div>';
    const off = () => { for (const b of el.querySelectorAll("button")) b.disabled = true; };
    el.querySelector("#agree").addEventListener("click", () => {
      off();
      api.call("POST", `/api/participants/${state.code}/consent`, {agree: true})
        .catch((e) => { if (e.status !== 409) throw e; })
        .then(() => { withdrawLink(state, study); done(); }).catch(failed);
    });
    el.querySelector("#disagree").addEventListener("click", () => {
      off();
      api.call("POST", `/api/participants/${state.code}/consent`, {agree: false})
        // a retry whose first reply was lost finds the join already deleted: the same ending
        .catch((e) => { if (e.status === 404) return api.call("POST", "/api/leave", {outcome: "declined"}); throw e; })
        .then((ending) => {
          sessionStorage.clear();
          showEnding(ending, null);  // the timeline stops here: this screen never calls done
        }).catch(failed);
    });
  })];
}

function surveyHtml(study, error) {
  const rows = study.survey.map((q) => {
    const id = `q-${q.name}`;
    let input;
    if (q.options) {
      input = `<select id="${id}" name="${escapeHtml(q.name)}" required><option value="">choose</option>` +
        q.options.map((o) => `<option>${escapeHtml(o)}</option>`).join("") + "</select>";
    } else if (q.type === "number") {
      input = `<input id="${id}" name="${escapeHtml(q.name)}" type="number" inputmode="numeric" min="${q.min ?? ""}" max="${q.max ?? ""}" required>`;
    } else {
      input = `<input id="${id}" name="${escapeHtml(q.name)}" type="text" maxlength="200" required>`;
    }
    return `<p><label for="${id}">${escapeHtml(q.label)}</label><br>${input}</p>`;
  }).join("");
  return `<div class="page"><h2>About you</h2>${error ? `<p class="error" role="alert">${escapeHtml(error)}</p>` : ""}${rows}</div>`;
}

function surveyTrials(jsPsych, study, state) {
  const ask = {
    type: jsPsychSurveyHtmlForm,
    html: () => surveyHtml(study, state.surveyError),
    button_label: "Continue",
    data: {page: "survey"},
    on_finish: (data) => { state.answers = data.response; },
  };
  const send = {
    type: jsPsychCallFunction,
    async: true,
    func: (done) => {
      const answers = {};
      for (const q of study.survey) {
        const v = state.answers[q.name];
        answers[q.name] = q.type === "number" ? Number(v) : v;
      }
      api.call("POST", `/api/participants/${state.code}/survey`, {answers})
        .then(() => { state.surveyError = null; })
        .catch((e) => { state.surveyError = e.status === 409 ? null : e.message; })
        .finally(() => done());
    },
  };
  return [{timeline: [ask, send], loop_function: () => Boolean(state.surveyError)}];
}

function finishTrials(jsPsych, state, pending) {
  return [screenTrial(() => {
    Promise.all(pending || []).then(() => api.call("POST", `/api/participants/${state.code}/finish`))
      .then((ending) => showEnding(ending, state.code))
      .catch(failed);
  })];
}

function stagesFrom(stage, order) {
  // the stages still to go: a reload or the resume link starts where the participant was
  const at = order.indexOf(stage);
  return new Set(order.slice(at < 0 ? 0 : at));
}
