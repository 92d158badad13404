// The matching experiments (Kim et al. sec. 3.2): consent, questionnaire, instructions, then
// 16 matching and 4 control tasks in the order the server drew. A recording must be played to
// its end before the answer buttons are enabled; there is no feedback.
"use strict";

(async function main() {
  const jsPsych = initJsPsych({display_element: "study"});
  const study = await api.call("GET", "/api/study");
  const state = await joinStudy("match");
  withdrawLink(state);
  const pending = [];
  const vf = state.direction === "V->F";
  const instructions = vf
    ? "<p>In each task you hear a short recording of a voice and see two faces.</p><p>Play the recording, then choose the face you think has that voice. Play it to the end; the faces can be chosen after that.</p>"
    : "<p>In each task you see one face and two voice recordings.</p><p>Play both recordings, then choose the voice you think belongs to that face. The choice opens once both have been played to the end.</p>";

  let plan = null;
  const trialNode = {
    timeline: [{
      type: jsPsychHtmlButtonResponse,
      stimulus: () => {
        const t = jsPsych.evaluateTimelineVariable("trial");
        const n = jsPsych.evaluateTimelineVariable("n");
        const head = `<p class="progress">Task ${n} of ${plan.trials.length}</p>`;
        if (vf) {
          return `<div class="task">${head}<audio class="stimulus" data-slot="query" controls preload="auto" src="${t.query}"></audio></div>`;
        }
        return `<div class="task">${head}<img class="face" alt="face" src="${t.query}"><div class="voices">` +
          `<p>Voice A <audio class="stimulus" data-slot="0" controls preload="auto" src="${t.options[0]}"></audio></p>` +
          `<p>Voice B <audio class="stimulus" data-slot="1" controls preload="auto" src="${t.options[1]}"></audio></p></div></div>`;
      },
      choices: () => (vf ? jsPsych.evaluateTimelineVariable("trial").options : ["Voice A", "Voice B"]),
      button_html: (choice, i) => (vf
        ? `<button class="jspsych-btn choice" disabled><img class="face" alt="face ${i + 1}" src="${choice}"></button>`
        : `<button class="jspsych-btn choice" disabled>${choice}</button>`),
      data: () => ({page: "task", index: jsPsych.evaluateTimelineVariable("trial").index}),
      on_load: () => {
        const t = jsPsych.evaluateTimelineVariable("trial");
        const audios = [...document.querySelectorAll("audio.stimulus")];
        const heard = new Set();
        for (const a of audios) {
          a.addEventListener("ended", () => {
            heard.add(a.dataset.slot);
            pending.push(api.call("POST", `/api/participants/${state.code}/trials/${t.index}/played`, {slot: a.dataset.slot}));
            if (heard.size === audios.length) {
              Promise.all(pending).then(() => {
                for (const b of document.querySelectorAll("button.choice")) b.disabled = false;
              });
            }
          });
        }
      },
      on_finish: (data) => {
        pending.push(api.call("POST", `/api/participants/${state.code}/trials/${data.index}/answer`,
          {choice: data.response, rt_ms: data.rt}));
      },
    }],
    timeline_variables: [],
  };

  const timeline = [
    ...consentTrials(jsPsych, study, state),
    ...surveyTrials(jsPsych, study, state),
    {
      type: jsPsychCallFunction,
      async: true,
      func: (done) => {
        api.call("GET", `/api/participants/${state.code}/trials`).then((p) => {
          plan = p;
          trialNode.timeline_variables = p.trials.filter((t) => !t.answered).map((t) => ({trial: t, n: t.index + 1}));
          done();
        });
      },
    },
    {
      type: jsPsychInstructions,
      pages: [`<div class="page"><h2>Instructions</h2>${instructions}<p>There are no right answers shown; go with your impression.</p></div>`],
      show_clickable_nav: true,
      button_label_next: "Start",
      data: {page: "instructions"},
    },
    trialNode,
    ...finishTrials(jsPsych, state, pending),
  ];
  jsPsych.run(timeline);
})();
