// The matching experiments (Kim et al. sec. 3.2): consent, questionnaire, an optional sound
// check and headphone check, instructions, then 16 matching and 4 control tasks in the order the server drew. Our
// own player plays each recording from its start at normal speed, with no seeking; the choices
// open once every recording of the task has ended (and the server has checked the time); there
// is no feedback. A reload, or the resume link, goes on from the first unanswered task.
"use strict";

function retryLoads(media, src) {
  // a clip or face that failed to load (the connection dropped) is fetched again, a few times
  let tries = 0;
  media.addEventListener("error", () => {
    if (tries++ < 8) setTimeout(() => { media.src = src; if (media.load) media.load(); }, 1000 * tries);
  });
}

function player(el, slot, src, label, onEnded, others) {
  // a Play button, a progress bar that cannot be dragged, and an <audio> without controls
  const wrap = document.createElement("div");
  wrap.className = "player";
  wrap.innerHTML = `<button type="button" class="jspsych-btn play" data-slot="${slot}" aria-label="Play ${escapeHtml(label)}">&#9654; ${escapeHtml(label)}</button>` +
    '<div class="bar" role="progressbar" aria-valuemin="0" aria-valuemax="100" aria-valuenow="0"><div></div></div>';
  const audio = new Audio();
  // fetched when Play is pressed, so the server's listening clock starts with the playback
  audio.preload = "none";
  audio.src = src;
  audio.className = "stimulus";
  audio.dataset.slot = slot;
  wrap.appendChild(audio);
  const button = wrap.querySelector("button");
  const fill = wrap.querySelector(".bar div");
  let furthest = 0;
  retryLoads(audio, src);
  audio.addEventListener("ratechange", () => { if (audio.playbackRate !== 1) audio.playbackRate = 1; });
  audio.addEventListener("timeupdate", () => {
    if (audio.currentTime > furthest + 0.75) { audio.currentTime = furthest; return; }  // no skipping ahead
    furthest = Math.max(furthest, audio.currentTime);
    const pct = audio.duration ? Math.round(100 * audio.currentTime / audio.duration) : 0;
    fill.style.width = `${pct}%`;
    wrap.querySelector(".bar").setAttribute("aria-valuenow", String(pct));
  });
  audio.addEventListener("ended", () => {
    button.disabled = false;
    button.innerHTML = `&#8635; ${escapeHtml(label)} again`;
    for (const o of others()) o.disabled = false;
    onEnded(slot);
  });
  button.addEventListener("click", () => {
    for (const o of others()) o.disabled = true;  // one recording at a time
    button.disabled = true;
    audio.currentTime = 0;
    furthest = 0;
    audio.playbackRate = 1;
    audio.play().catch((e) => {
      button.disabled = false;
      for (const o of others()) o.disabled = false;
      announce(`The recording could not be played (${e.message}). Press play again.`);
    });
  });
  return wrap;
}

function taskScreen(jsPsych, state, plan) {
  return screenTrial((el, done) => {
    const t = jsPsych.evaluateTimelineVariable("trial");
    const vf = plan.direction === "V->F";
    const slots = vf ? ["query"] : ["0", "1"];
    const heard = new Set();
    el.innerHTML = `<div class="task"><p class="progress" id="progress">Task ${t.index + 1} of ${plan.trials.length}</p>` +
      `<h2 class="sr-only">Task ${t.index + 1}</h2><div class="players"></div><div class="options"></div>` +
      '<p class="hint" id="task-hint">Play the recording to its end; then the choices open.</p></div>';
    const players = el.querySelector(".players");
    const options = el.querySelector(".options");
    const choices = [0, 1].map((i) => {
      const b = document.createElement("button");
      b.type = "button";
      b.className = "jspsych-btn choice";
      b.disabled = true;
      b.dataset.choice = String(i);
      if (vf) {
        b.innerHTML = `<img class="face" alt="Face ${i + 1}" src="${t.options[i]}"><span>Face ${i + 1}</span>`;
        retryLoads(b.querySelector("img"), t.options[i]);
      } else {
        b.textContent = `Voice ${"AB"[i]}`;
      }
      options.appendChild(b);
      return b;
    });
    if (!vf) {
      const img = document.createElement("img");
      img.className = "face query";
      img.alt = "The face";
      img.src = t.query;
      retryLoads(img, t.query);
      players.appendChild(img);
    }
    const buttons = () => [...el.querySelectorAll("button.play")];
    let opened = null;
    const onEnded = (slot) => {
      api.call("POST", `/api/participants/${state.code}/trials/${t.index}/played`, {slot}).then(() => {
        heard.add(slot);
        if (heard.size === slots.length && opened === null) {
          for (const c of choices) c.disabled = false;
          opened = performance.now();
          el.querySelector("#task-hint").textContent = vf ? "Which face has this voice?" : "Which voice belongs to this face?";
          announce(vf ? "The choices are open: which face has this voice?" : "The choices are open: which voice belongs to this face?");
        }
      }).catch((e) => {
        if (e.status === 409) {  // played too fast to be heard: the server counts from when it sent the clip
          announce("Please listen to the whole recording.");
          el.querySelector("#task-hint").textContent = "Please listen to the whole recording, then the choices open.";
        } else {
          failed(e);
        }
      });
    };
    for (const slot of slots) {
      const label = vf ? "Play the voice" : `Play voice ${"AB"[Number(slot)]}`;
      const src = slot === "query" ? t.query : t.options[Number(slot)];
      players.appendChild(player(el, slot, src, label, onEnded, () => buttons().filter((b) => b.dataset.slot !== slot)));
    }
    for (const c of choices) {
      c.addEventListener("click", () => {
        for (const b of el.querySelectorAll("button")) b.disabled = true;
        const rt = Math.round(performance.now() - opened);
        el.querySelector("#task-hint").textContent = "Saving your answer...";
        // the next task opens once this answer is stored (retried through a lost connection)
        api.call("POST", `/api/participants/${state.code}/trials/${t.index}/answer`,
          {choice: Number(c.dataset.choice), rt_ms: rt}).then(done).catch(failed);
      });
    }
    el.querySelector("button.play").focus();
  });
}

function soundCheck(state, study) {
  // beeps to count before the tasks (study.toml [sound_check]); the same beeps may be played
  // again, a wrong count may be retried, and failing every try screens the participant out
  return screenTrial((el, done) => {
    const draw = (message) => {
      const wear = study.headphone_check.enabled ? "Please put on headphones" : "Put on headphones if you have them";
      el.innerHTML = `<div class="page"><h2>Sound check</h2><p>${wear}, set a comfortable volume, and count the beeps.</p>` +
        (message ? `<p class="error" role="alert">${escapeHtml(message)}</p>` : "") +
        '<p><button type="button" id="beeps" class="jspsych-btn">&#9654; Play the beeps</button></p>' +
        '<p><label for="beep-count">How many beeps did you hear?</label><br><input id="beep-count" type="number" inputmode="numeric" min="1" max="20" step="1" disabled></p>' +
        '<p id="beep-problem" class="error" role="alert" hidden></p>' +
        '<p><button type="button" id="beep-answer" class="jspsych-btn" disabled>Continue</button></p></div>';
      const audio = new Audio();
      const play = el.querySelector("#beeps");
      play.addEventListener("click", () => {
        play.disabled = true;
        if (audio.src) {  // the same beeps again: no new draw, no try used
          audio.currentTime = 0;
          audio.play().catch((e) => { play.disabled = false; announce(`${e.message}. Press play again.`); });
          return;
        }
        // a new count is drawn, then its clip fetched whole (a browser fetching it in parts
        // would otherwise be able to hear another draw than the one checked)
        api.call("POST", `/api/participants/${state.code}/sound-check/new`)
          .then(() => fetch(`/api/participants/${state.code}/sound-check.wav`))
          .then((r) => { if (!r.ok) throw new Error("the sound check could not be loaded"); return r.blob(); })
          .then((blob) => { audio.src = URL.createObjectURL(blob); return audio.play(); })
          .catch((e) => { play.disabled = false; announce(`${e.message}. Press play again.`); });
      });
      audio.addEventListener("ended", () => {
        play.disabled = false;
        play.innerHTML = "&#8635; Play the beeps again";
        el.querySelector("#beep-count").disabled = false;
        el.querySelector("#beep-answer").disabled = false;
        el.querySelector("#beep-count").focus();
      });
      el.querySelector("#beep-answer").addEventListener("click", () => {
        const raw = el.querySelector("#beep-count").value.trim();
        const problem = el.querySelector("#beep-problem");
        if (!/^[0-9]{1,2}$/.test(raw) || Number(raw) < 1 || Number(raw) > 20) {  // not a try: a typing slip
          problem.textContent = "Type the number of beeps you heard, in digits (for example 4).";
          problem.hidden = false;
          el.querySelector("#beep-count").focus();
          return;
        }
        el.querySelector("#beep-answer").disabled = true;
        const count = Number(raw);
        api.call("POST", `/api/participants/${state.code}/sound-check`, {count}).then((r) => {
          if (r.passed) done();
          else if (r.tries_left > 0) draw(`That was not the number of beeps. Please listen again (${r.tries_left} more ${r.tries_left === 1 ? "try" : "tries"}).`);
          else showEnding(r, state.code);
        }).catch(failed);
      });
    };
    draw(null);
  });
}

function headphoneCheck(state, study) {
  // Milne et al. 2021's Huggins-pitch test (study.toml [headphone_check]): in each trial three
  // noises play, one holding a faint tone that only headphones carry; no answer is told right or
  // wrong, and fewer than min_correct right screens the participant out
  return screenTrial((el, done) => {
    const draw = () => {
      el.innerHTML = '<div class="page"><h2>Headphone check</h2><p>Please wear headphones. You will hear three noises; one of them has a faint tone inside it.</p>' +
        `<p id="hp-progress" class="progress">Trial ${at.trial} of ${at.of}</p>` +
        '<p><button type="button" id="hp-play" class="jspsych-btn">&#9654; Play the three noises</button></p>' +
        '<fieldset class="intervals"><legend>Which noise had the faint tone?</legend>' +
        [1, 2, 3].map((k) => `<button type="button" class="jspsych-btn interval" data-interval="${k}" disabled>Noise ${k}</button>`).join(" ") +
        "</fieldset></div>";
      const play = el.querySelector("#hp-play");
      const intervals = [...el.querySelectorAll("button.interval")];
      const audio = new Audio();
      audio.addEventListener("timeupdate", () => {
        // the playing noise is lit: each lasts 1 s, with 0.5 s between them
        const k = Math.floor(audio.currentTime / 1.5);
        intervals.forEach((b, i) => b.classList.toggle("playing", i === k && audio.currentTime - 1.5 * k < 1.0));
      });
      audio.addEventListener("ended", () => {
        intervals.forEach((b) => { b.classList.remove("playing"); b.disabled = false; });
        play.disabled = false;
        play.innerHTML = "&#8635; Play them again";
        announce("Which noise had the faint tone: 1, 2 or 3?");
        intervals[0].focus();
      });
      play.addEventListener("click", () => {
        play.disabled = true;
        intervals.forEach((b) => { b.disabled = true; });
        const again = audio.src !== "";
        // a new trial is drawn only for its first playing; "again" replays the same noises
        (again ? Promise.resolve(null) : api.call("POST", `/api/participants/${state.code}/headphone-check/new`).then(() => {
          return fetch(`/api/participants/${state.code}/headphone-check.wav`)
            .then((res) => { if (!res.ok) throw new Error("the headphone check could not be loaded"); return res.blob(); })
            .then((blob) => { audio.src = URL.createObjectURL(blob); });
        })).then(() => { audio.currentTime = 0; return audio.play(); })
          .catch((e) => { play.disabled = false; announce(`${e.message}. Press play again.`); });
      });
      for (const b of intervals) {
        b.addEventListener("click", () => {
          intervals.forEach((x) => { x.disabled = true; });
          play.disabled = true;
          api.call("POST", `/api/participants/${state.code}/headphone-check`, {interval: Number(b.dataset.interval)}).then((r) => {
            if (r.trials_left > 0) {
              at.trial = at.of - r.trials_left + 1;
              draw();
              announce(`Trial ${at.trial} of ${at.of}: press play for the next three noises.`);
            } else if (r.passed) {
              done();
            } else {
              showEnding(r, state.code);
            }
          }).catch(failed);
        });
      }
      el.querySelector("h2").setAttribute("tabindex", "-1");
      el.querySelector("h2").focus();
    };
    const at = {trial: 1, of: study.headphone_check.trials};
    api.call("GET", `/api/participants/${state.code}/headphone-check`)
      .then((r) => { Object.assign(at, r); draw(); }).catch(failed);  // a reload goes on from its trial
  });
}

(async function main() {
  const study = await api.call("GET", "/api/study");
  const state = await joinStudy("match", study);
  if (!state) return;
  if (state.stage === "finished") {
    showEnding(state, state.code);  // a reload after finishing: the same code again
    return;
  }
  const jsPsych = initJsPsych({display_element: "study"});
  if (state.stage !== "consent") withdrawLink(state, study);
  const todo = stagesFrom(state.stage, ["consent", "survey", "sound_check", "headphone_check", "tasks"]);
  const vf = state.direction === "V->F";
  const instructions = vf
    ? "<p>In each task you hear a short recording of a voice and see two faces.</p><p>Play the recording to its end, then choose the face you think has that voice.</p>"
    : "<p>In each task you see one face and can play two voice recordings.</p><p>Play both to their end, then choose the voice you think belongs to that face.</p>";
  const plan = {trials: []};
  const tasks = {timeline: [taskScreen(jsPsych, state, plan)], timeline_variables: []};
  const timeline = [];
  if (todo.has("consent")) timeline.push(...consentTrials(jsPsych, study, state));
  if (todo.has("survey")) timeline.push(...surveyTrials(jsPsych, study, state));
  if (study.sound_check.enabled && todo.has("sound_check")) timeline.push(soundCheck(state, study));
  if (study.headphone_check.enabled && todo.has("headphone_check")) timeline.push(headphoneCheck(state, study));
  timeline.push(screenTrial((el, done) => {
    api.call("GET", `/api/participants/${state.code}/trials`).then((p) => {
      Object.assign(plan, p);
      const left = plan.trials.filter((t) => !t.answered);
      tasks.timeline_variables = left.map((t) => ({trial: t}));
      const resumed = left.length < plan.trials.length;
      el.innerHTML = `<div class="page"><h2>${resumed ? "Welcome back" : "Instructions"}</h2>${instructions}` +
        `<p>There are ${plan.trials.length} tasks. An answer cannot be changed once given, and no answer is shown as right or wrong: go with your impression.</p>${resumed ? `<p>${plan.trials.length - left.length} of ${plan.trials.length} tasks are done; you go on from the next.</p>` : ""}` +
        `<p class="hint">If you have to stop, this link brings you back to where you were: <a class="code small" id="resume-link" href="${escapeHtml(`/match?resume=${state.code}`)}">${escapeHtml(`${location.origin}/match?resume=${state.code}`)}</a></p>` +
        `<p><button type="button" id="start" class="jspsych-btn">${resumed ? "Go on" : "Start"}</button></p></div>`;
      el.querySelector("#start").addEventListener("click", () => { el.querySelector("#start").disabled = true; done(); });
      el.querySelector("#start").focus();
    }).catch(failed);
  }));
  timeline.push(tasks, ...finishTrials(jsPsych, state, []));
  jsPsych.run(timeline);
})().catch(failed);
