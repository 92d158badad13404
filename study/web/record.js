// Recording people (Kim et al. sec. 3.1 and A.1.2): consent, the questionnaire, the scripts read
// aloud while the microphone records (with a level meter and a retake), then a camera photo.
// Each upload is checked by the server's media pipeline (enough speech, a face found); a failed
// check is shown and the participant records again.
"use strict";

function levelMeter(jsPsych) {
  // the plugin draws its page once the recorder has started, after on_load: the bar is looked
  // up on every frame
  const recorder = jsPsych.pluginAPI.getMicrophoneRecorder();
  if (!recorder) return () => {};
  const ctx = new AudioContext();
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 1024;
  ctx.createMediaStreamSource(recorder.stream).connect(analyser);
  const buf = new Float32Array(analyser.fftSize);
  let running = true;
  (function draw() {
    if (!running) return;
    requestAnimationFrame(draw);
    const bar = document.getElementById("level");
    if (!bar) return;
    analyser.getFloatTimeDomainData(buf);
    let sum = 0;
    for (const v of buf) sum += v * v;
    const db = 20 * Math.log10(Math.sqrt(sum / buf.length) + 1e-9);
    bar.style.width = `${Math.max(0, Math.min(100, (db + 60) * (100 / 60)))}%`;
    bar.dataset.db = db.toFixed(1);
  })();
  return () => { running = false; ctx.close(); };
}

function base64Blob(b64, type) {
  const bytes = atob(b64);
  const arr = new Uint8Array(bytes.length);
  for (let i = 0; i < bytes.length; i++) arr[i] = bytes.charCodeAt(i);
  return new Blob([arr], {type});
}

function uploadLoop(jsPsych, state, record, upload, what) {
  // record -> upload -> feedback, until the server accepts a take and the participant goes on
  const feedback = {
    type: jsPsychHtmlButtonResponse,
    stimulus: () => (state.uploadError
      ? `<div class="page"><h2>Please record again</h2><p class="error" id="upload-error">${escapeHtml(state.uploadError)}</p></div>`
      : `<div class="page"><h2>Thank you</h2><p id="upload-ok">Your ${what} was received.</p></div>`),
    choices: () => (state.uploadError ? ["Record again"] : ["Continue"]),
    data: {page: "upload-feedback"},
  };
  return {timeline: [record, upload, feedback], loop_function: () => Boolean(state.uploadError)};
}

(async function main() {
  const jsPsych = initJsPsych({display_element: "study"});
  const study = await api.call("GET", "/api/study");
  const state = await joinStudy("record");
  withdrawLink(state);
  let stopMeter = () => {};

  const scripts = study.scripts.map((text, k) => uploadLoop(jsPsych, state, {
    type: jsPsychHtmlAudioResponse,
    stimulus: `<div class="page"><h2>Read aloud (${k + 1} of ${study.scripts.length})</h2>` +
      `<p class="script">${escapeHtml(text)}</p><div class="meter" title="microphone level"><div id="level"></div></div>` +
      `<p class="hint">Read at your normal pace, then press Done. You can listen and record again.</p></div>`,
    recording_duration: 60000,
    show_done_button: true,
    done_button_label: "Done",
    allow_playback: true,
    record_again_button_label: "Record again",
    accept_button_label: "Use this recording",
    data: {page: "record-voice", script: k},
    on_load: () => { stopMeter = levelMeter(jsPsych); },
    on_finish: (data) => {
      stopMeter();
      state.take = base64Blob(data.response, "audio/webm");
      data.response = null;  // the recording goes to the server only, not into jsPsych's data
    },
  }, {
    type: jsPsychCallFunction,
    async: true,
    func: (done) => {
      api.call("POST", `/api/participants/${state.code}/recordings/voice/${k}`, state.take, {"Content-Type": "audio/webm"})
        .then(() => { state.uploadError = null; })
        .catch((e) => { state.uploadError = e.message; })
        .finally(() => { state.take = null; done(); });
    },
  }, "recording"));

  const photo = uploadLoop(jsPsych, state, {
    type: jsPsychHtmlButtonResponse,
    stimulus: '<div class="page"><h2>A photo of your face</h2><p>Look straight into the camera, with your face inside the frame and evenly lit.</p>' +
      '<video id="camera" autoplay muted playsinline></video></div>',
    choices: ["Take photo"],
    data: {page: "record-face"},
    on_load: () => {
      state.video = document.getElementById("camera");
      state.video.srcObject = jsPsych.pluginAPI.getCameraStream();
    },
    on_finish: () => {
      // the page is already cleared here: the video element is the one kept at on_load
      const video = state.video;
      const canvas = document.createElement("canvas");
      canvas.width = video.videoWidth;
      canvas.height = video.videoHeight;
      canvas.getContext("2d").drawImage(video, 0, 0);
      state.take = base64Blob(canvas.toDataURL("image/jpeg", 0.92).split(",")[1], "image/jpeg");
      state.video = null;
    },
  }, {
    type: jsPsychCallFunction,
    async: true,
    func: (done) => {
      api.call("POST", `/api/participants/${state.code}/recordings/face/0`, state.take, {"Content-Type": "image/jpeg"})
        .then(() => { state.uploadError = null; })
        .catch((e) => { state.uploadError = e.message; })
        .finally(() => { state.take = null; done(); });
    },
  }, "photo");

  jsPsych.run([
    ...consentTrials(jsPsych, study, state),
    ...surveyTrials(jsPsych, study, state),
    {type: jsPsychInitializeMicrophone, button_label: "Use this microphone", data: {page: "microphone"}},
    ...scripts,
    {type: jsPsychInitializeCamera, button_label: "Use this camera", include_audio: false, data: {page: "camera"}},
    photo,
    ...finishTrials(jsPsych, state, []),
  ]);
})();
