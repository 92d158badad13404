// Shared by the study's pages: the API, the consent and questionnaire trials, withdrawal.
"use strict";

const api = {
  async call(method, path, body, headers) {
    const init = {method, headers: headers || {}, keepalive: method !== "GET" && !(body instanceof Blob)};
    if (body instanceof Blob) {
      init.body = body;
    } else if (body !== undefined) {
      init.body = JSON.stringify(body);
      init.headers["Content-Type"] = "application/json";
    }
    const r = await fetch(path, init);
    const text = await r.text();
    let data = {};
    try { data = text ? JSON.parse(text) : {}; } catch (e) { data = {detail: text}; }
    if (!r.ok) {
      const err = new Error(typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail));
      err.status = r.status;
      throw err;
    }
    return data;
  },
};

function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
}

// A participant of this tab: the code lives in sessionStorage only, so a reload continues
// and closing the tab forgets it.
async function joinStudy(role) {
  const key = "facevoice-study-" + role;
  const saved = sessionStorage.getItem(key);
  if (saved) return JSON.parse(saved);
  // the preview link (/match?pilot=TOKEN, printed by `facevoice study serve`) joins as a pilot,
  // whose answers the analysis leaves out unless asked
  const pilot = new URLSearchParams(window.location.search).get("pilot");
  const body = pilot ? {role, source: "pilot", pilot_token: pilot} : {role};
  const p = await api.call("POST", "/api/participants", body);
  sessionStorage.setItem(key, JSON.stringify(p));
  return p;
}

function withdrawLink(state) {
  const bar = document.createElement("div");
  bar.id = "withdraw-bar";
  bar.innerHTML = '<button id="withdraw" type="button">Withdraw and delete my data</button>';
  document.body.appendChild(bar);
  document.getElementById("withdraw").onclick = async () => {
    if (!confirm("Withdraw from the study? Everything you gave is deleted.")) return;
    await api.call("DELETE", `/api/participants/${state.code}`);
    sessionStorage.clear();
    document.body.innerHTML = '<div class="message"><h2>You have withdrawn.</h2><p>Your data has been deleted. You can close this tab.</p></div>';
  };
}

function consentTrials(jsPsych, study, state) {
  return [{
    type: jsPsychHtmlButtonResponse,
    stimulus: `<div class="page"><h1>${escapeHtml(study.title)}</h1><h2>Consent</h2>${study.consent}</div>`,
    choices: ["I agree", "I do not agree"],
    data: {page: "consent"},
    on_finish: (data) => { state.agreed = data.response === 0; },
  }, {
    type: jsPsychCallFunction,
    async: true,
    func: (done) => {
      if (!state.agreed) {
        api.call("DELETE", `/api/participants/${state.code}`).finally(() => {
          sessionStorage.clear();
          jsPsych.abortExperiment('<div class="message"><h2>Thank you.</h2><p>Without consent nothing is recorded. You can close this tab.</p></div>');
        });
        return;
      }
      api.call("POST", `/api/participants/${state.code}/consent`, {agree: true})
        .catch((e) => { if (e.status !== 409) throw e; }).then(() => done());
    },
  }];
}

function surveyHtml(study, error) {
  const rows = study.survey.map((q) => {
    const id = `q-${q.name}`;
    let input;
    if (q.options) {
      input = `<select id="${id}" name="${escapeHtml(q.name)}" required><option value="">choose</option>` +
        q.options.map((o) => `<option>${escapeHtml(o)}</option>`).join("") + "</select>";
    } else if (q.type === "number") {
      input = `<input id="${id}" name="${escapeHtml(q.name)}" type="number" min="${q.min ?? ""}" max="${q.max ?? ""}" required>`;
    } else {
      input = `<input id="${id}" name="${escapeHtml(q.name)}" type="text" maxlength="200" required>`;
    }
    return `<p><label for="${id}">${escapeHtml(q.label)}</label><br>${input}</p>`;
  }).join("");
  return `<div class="page"><h2>About you</h2>${error ? `<p class="error">${escapeHtml(error)}</p>` : ""}${rows}</div>`;
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
  return [{
    type: jsPsychCallFunction,
    async: true,
    func: (done) => {
      Promise.all(pending || []).then(() => api.call("POST", `/api/participants/${state.code}/finish`))
        .then((r) => { state.completion = r.completion_code; })
        .catch((e) => { state.finishError = e.message; })
        .finally(() => done());
    },
  }, {
    type: jsPsychHtmlButtonResponse,
    stimulus: () => state.completion
      ? `<div class="page"><h2>Thank you!</h2><p>Your completion code is</p><p id="completion-code" class="code">${escapeHtml(state.completion)}</p></div>`
      : `<div class="page"><h2>Something went wrong</h2><p class="error">${escapeHtml(state.finishError || "")}</p></div>`,
    choices: [],
    data: {page: "done"},
  }];
}
