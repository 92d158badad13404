// Recording people (Kim et al. sec. 3.1 and A.1.2): consent, the questionnaire, then each script
// read aloud (start and stop, a recording dot and timer, a level meter, listen back, retake) and
// a camera photo (preview, retake). With study.toml's [recording] video, each script is filmed
// (Kim et al. 3.1), with the camera's picture shown while recording and in the take played back. Each take is checked by the server's media pipeline (enough
// speech, a face found); a failed check is shown and the participant records again. A blocked
// or missing microphone or camera ends on a page that says how to allow it, or how to leave.
"use strict";

function deviceName(kind, filmed) {
  return kind === "audio" ? (filmed ? "camera and microphone" : "microphone") : "camera";
}

function mediaProblem(what, e) {
  if (e && (e.name === "NotAllowedError" || e.name === "SecurityError")) {
    return [`The ${what} is blocked`, `<p>The browser did not let the study use your ${what}.</p>` +
      `<p>To allow it: click the camera or lock icon at the left of the address bar, set the ${what} to <em>Allow</em>, then press <em>Try again</em>.</p>`];
  }
  if (e && (e.name === "NotFoundError" || e.name === "OverconstrainedError")) {
    return [`No ${what} was found`, `<p>This device has no ${what} the browser can use. Connect one and press <em>Try again</em>, or leave the study.</p>`];
  }
  return [`The ${what} cannot be used`, `<p>${escapeHtml((e && e.message) || "It is in use by another program, or failed.")}</p>`];
}

function askDevice(state, kind, media, filmed) {
  // getUserMedia behind a button; on a refusal the page explains and offers a retry, or leaving
  // with the "no device" outcome (its code and redirect). Filmed readings ask for both at once.
  return screenTrial((el, done) => {
    const what = deviceName(kind, filmed);
    const camera = {width: 640, height: 480};
    const draw = (problem) => {
      el.innerHTML = problem
        ? `<div class="page"><h2 id="device-problem">${problem[0]}</h2>${problem[1]}<p><button type="button" id="device-retry" class="jspsych-btn">Try again</button> ` +
          `<button type="button" id="device-leave" class="jspsych-btn">I cannot use a ${what}</button></p></div>`
        : `<div class="page"><h2>Your ${what}</h2><p>The next step records ${kind === "audio" ? (filmed ? "a video of you reading aloud" : "your voice") : "one photo of your face"}. Your browser will ask to use the ${what}.</p>` +
          `<p><button type="button" id="device-allow" class="jspsych-btn">Use the ${what}</button></p></div>`;
      const go = () => {
        navigator.mediaDevices.getUserMedia(kind === "audio" ? {audio: true, video: filmed ? camera : false} : {video: camera, audio: false})
          .then((stream) => {
            media[kind] = stream;
            if (filmed) media.video = stream;  // the photo is taken from the same camera
            done();
          })
          .catch((e) => draw(mediaProblem(what, e)));
      };
      for (const id of ["#device-allow", "#device-retry"]) {
        const b = el.querySelector(id);
        if (b) b.addEventListener("click", go);
      }
      const out = el.querySelector("#device-leave");
      if (out) {
        out.addEventListener("click", () => {
          for (const s of Object.values(media)) s.getTracks().forEach((tr) => tr.stop());
          leave("no_device", [`Without a ${what} the study cannot go on`, "<p>Thank you for your time; nothing you gave is kept.</p>"], state.code).catch(failed);
        });
      }
      const focus = el.querySelector("h2");
      if (focus) { focus.setAttribute("tabindex", "-1"); focus.focus(); }
    };
    draw(null);
  });
}

function levelMeter(stream, bar) {
  const ctx = new (window.AudioContext || window.webkitAudioContext)();
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 1024;
  ctx.createMediaStreamSource(stream).connect(analyser);
  const buf = new Float32Array(analyser.fftSize);
  let running = true;
  (function draw() {
    if (!running) return;
    requestAnimationFrame(draw);
    analyser.getFloatTimeDomainData(buf);
    let sum = 0;
    for (const v of buf) sum += v * v;
    const db = 20 * Math.log10(Math.sqrt(sum / buf.length) + 1e-9);
    bar.style.width = `${Math.max(0, Math.min(100, (db + 60) * (100 / 60)))}%`;
    bar.dataset.db = db.toFixed(1);
  })();
  return () => { running = false; ctx.close(); };
}

function clock(seconds) {
  return `${Math.floor(seconds / 60)}:${String(Math.floor(seconds % 60)).padStart(2, "0")}`;
}

function upload(state, kind, k, blob) {
  return api.call("POST", `/api/participants/${state.code}/recordings/${kind}/${k}`, blob, {"Content-Type": blob.type});
}

function voiceScreen(state, study, media, k) {
  return screenTrial((el, done) => {
    const n = study.scripts.length;
    const player = study.video ? "video" : "audio";
    el.innerHTML = `<div class="page"><h2>Read aloud (${k + 1} of ${n})</h2><p class="script">${escapeHtml(study.scripts[k])}</p>` +
      (study.video ? '<video id="rec-preview" autoplay muted playsinline></video>' : "") +
      '<div class="meter" title="microphone level"><div id="level"></div></div>' +
      '<p class="recorder"><span id="rec-dot" class="dot" hidden></span> <span id="rec-timer" aria-live="off">0:00</span></p>' +
      '<p><button type="button" id="rec-start" class="jspsych-btn">&#9679; Start recording</button> <button type="button" id="rec-stop" class="jspsych-btn" hidden>&#9632; Stop</button></p>' +
      `<div id="rec-review" hidden><p>Listen back: <${player} id="rec-playback" controls playsinline></${player}></p>` +
      '<p><button type="button" id="rec-use" class="jspsych-btn">Use this recording</button> <button type="button" id="rec-again" class="jspsych-btn">Record again</button></p></div>' +
      `<p id="rec-status" role="status"></p><p class="hint">Press start, read the text at your normal pace, then press stop. Each text needs at least ${study.min_speech_seconds} s of speech.</p></div>`;
    const $ = (id) => el.querySelector(id);
    const stopMeter = levelMeter(media.audio, $("#level"));
    if (study.video) $("#rec-preview").srcObject = media.audio;
    let recorder = null, chunks = [], take = null, timer = null, started = 0;
    $("#rec-start").addEventListener("click", () => {
      chunks = [];
      take = null;
      recorder = new MediaRecorder(media.audio);
      recorder.addEventListener("dataavailable", (e) => { if (e.data.size) chunks.push(e.data); });
      recorder.addEventListener("stop", () => {
        take = new Blob(chunks, {type: (recorder.mimeType || `${player}/webm`).split(";")[0]});
        $("#rec-playback").src = URL.createObjectURL(take);
        $("#rec-review").hidden = false;
        $("#rec-use").focus();
      });
      recorder.start();
      started = performance.now();
      timer = setInterval(() => { $("#rec-timer").textContent = clock((performance.now() - started) / 1000); }, 250);
      $("#rec-dot").hidden = false;
      $("#rec-start").hidden = true;
      $("#rec-stop").hidden = false;
      $("#rec-review").hidden = true;
      $("#rec-status").textContent = "Recording";
      $("#rec-stop").focus();
    });
    $("#rec-stop").addEventListener("click", () => {
      if (!recorder || recorder.state !== "recording") return;
      clearInterval(timer);
      recorder.stop();
      $("#rec-dot").hidden = true;
      $("#rec-stop").hidden = true;
      $("#rec-start").hidden = false;
      $("#rec-start").innerHTML = "&#9679; Record again";
      $("#rec-status").textContent = "Recorded. Listen back, then use it or record again.";
    });
    $("#rec-again").addEventListener("click", () => $("#rec-start").click());
    const busy = (on) => { for (const id of ["#rec-use", "#rec-again", "#rec-start"]) $(id).disabled = on; };
    $("#rec-use").addEventListener("click", () => {
      busy(true);
      $("#rec-status").textContent = "Checking the recording...";
      upload(state, "voice", k, take).then(() => {
        stopMeter();
        done();
      }).catch((e) => {
        busy(false);
        $("#rec-status").innerHTML = `<span class="error" id="upload-error">${escapeHtml(e.message)}</span> Please record again.`;
        announce(`Please record again: ${e.message}`);
      });
    });
  });
}

function photoScreen(state, media) {
  return screenTrial((el, done) => {
    el.innerHTML = '<div class="page"><h2>A photo of your face</h2><p>Look straight into the camera, with your face inside the frame and evenly lit.</p>' +
      '<video id="camera" autoplay muted playsinline></video><img id="photo-preview" alt="Your photo" hidden>' +
      '<p><button type="button" id="photo-take" class="jspsych-btn">Take photo</button> <button type="button" id="photo-use" class="jspsych-btn" hidden>Use this photo</button> ' +
      '<button type="button" id="photo-retake" class="jspsych-btn" hidden>Retake</button></p><p id="photo-status" role="status"></p></div>';
    const $ = (id) => el.querySelector(id);
    const video = $("#camera");
    video.srcObject = media.video;
    let take = null;
    const showing = (preview) => {
      video.hidden = preview;
      $("#photo-preview").hidden = !preview;
      $("#photo-take").hidden = preview;
      $("#photo-use").hidden = !preview;
      $("#photo-retake").hidden = !preview;
    };
    $("#photo-take").addEventListener("click", () => {
      if (!video.videoWidth) { $("#photo-status").textContent = "The camera has not started yet; try again in a moment."; return; }
      const canvas = document.createElement("canvas");
      canvas.width = video.videoWidth;
      canvas.height = video.videoHeight;
      canvas.getContext("2d").drawImage(video, 0, 0);
      canvas.toBlob((blob) => {
        take = blob;
        $("#photo-preview").src = URL.createObjectURL(blob);
        showing(true);
        $("#photo-status").textContent = "Is this photo all right?";
        $("#photo-use").focus();
      }, "image/jpeg", 0.92);
    });
    $("#photo-retake").addEventListener("click", () => { showing(false); $("#photo-status").textContent = ""; });
    $("#photo-use").addEventListener("click", () => {
      $("#photo-use").disabled = true;
      $("#photo-status").textContent = "Checking the photo...";
      upload(state, "face", 0, take).then(() => {
        for (const s of Object.values(media)) s.getTracks().forEach((tr) => tr.stop());
        done();
      }).catch((e) => {
        $("#photo-use").disabled = false;
        showing(false);
        $("#photo-status").innerHTML = `<span class="error" id="upload-error">${escapeHtml(e.message)}</span> Please take another photo.`;
        announce(`Please take another photo: ${e.message}`);
      });
    });
  });
}

(async function main() {
  const study = await api.call("GET", "/api/study");
  const state = await joinStudy("record", study);
  if (!state) return;
  if (state.stage === "finished") {
    showEnding(state, state.code);
    return;
  }
  const jsPsych = initJsPsych({display_element: "study"});
  if (state.stage !== "consent") withdrawLink(state, study);
  const todo = stagesFrom(state.stage, ["consent", "survey", "tasks"]);
  const media = {};
  const timeline = [];
  if (todo.has("consent")) timeline.push(...consentTrials(jsPsych, study, state));
  if (todo.has("survey")) timeline.push(...surveyTrials(jsPsych, study, state));
  timeline.push(askDevice(state, "audio", media, study.video), ...study.scripts.map((_, k) => voiceScreen(state, study, media, k)));
  if (!study.video) timeline.push(askDevice(state, "video", media, false));
  timeline.push(photoScreen(state, media), ...finishTrials(jsPsych, state, []));
  jsPsych.run(timeline);
})().catch(failed);
