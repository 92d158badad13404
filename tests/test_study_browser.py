"""The study's pages in a real browser, at a desktop's 1280x800 and a phone's 390x844: Debian's
headless Chromium driven by Selenium, with fake media devices fed a real speech recording
(espeak-ng) and a camera showing a real photo (matplotlib's grace_hopper.jpg).

Every path a participant can take is walked: recording oneself, a whole matching experiment
with a reload in the middle and a dropped connection, a reload after finishing, a second try
with the same Prolific id, withdrawing later with the participant code, declining consent, a
blocked microphone, a browser without recording, a device the study does not take, and the
sound check. Each screen must fit the width (no sideways scroll), and each test fails on any
error in Chromium's console that it did not cause on purpose. With
FACEVOICE_STUDY_SCREENSHOTS=DIR every screen is saved there as SIZE-NAME.png (256 colours)
(docs/images/study holds the ones docs/study.md shows)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from matplotlib import cbook
from PIL import Image

from devtools.local_servers import LocalStudy
from devtools.media_samples import speech
from devtools.study_helpers import PROLIFIC, http, make_study
from facevoice.study.config import load_study
from facevoice.study.store import Store

pytestmark = pytest.mark.skipif(shutil.which("chromedriver") is None or shutil.which("chromium") is None,
                                reason="needs Debian's chromium and chromium-driver (deploy/setup-debian.sh)")
SHOTS = os.environ.get("FACEVOICE_STUDY_SCREENSHOTS")
TOKEN = LocalStudy.ADMIN_TOKEN
SIZES = {"desktop": (1280, 800), "phone": (390, 844)}
PHONE_UA = ("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0 "
            "Mobile Safari/537.36")


def camera_y4m(path: Path, frames: int = 5) -> Path:
    """A Y4M video (what Chromium's fake camera reads) of Grace Hopper on a grey 640x480 frame."""
    hopper = Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
    canvas = Image.new("RGB", (640, 480), (120, 120, 120))
    canvas.paste(hopper.resize((384, 450)), (128, 15))
    y, cb, cr = (np.asarray(c) for c in canvas.convert("YCbCr").split())
    frame = b"FRAME\n" + y.tobytes() + cb[::2, ::2].tobytes() + cr[::2, ::2].tobytes()
    path.write_bytes(b"YUV4MPEG2 W640 H480 F10:1 Ip A1:1 C420jpeg\n" + frame * frames)
    return path


@pytest.fixture(scope="module")
def media_files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("chromium-media")
    x, sr = speech("Forty four Americans have now taken the presidential oath. The words have been spoken "
                   "during rising tides of prosperity and the still waters of peace.")
    sf.write(tmp / "voice.wav", np.concatenate([x, x]), sr, subtype="PCM_16")
    return tmp / "voice.wav", camera_y4m(tmp / "camera.y4m")


def chromium(profile: Path, size: str, media_files, fake_ui: bool = True):
    """A headless Chromium at `size`: the desktop's window, or a phone's emulated screen and touch.
    Without `fake_ui` every camera and microphone request is denied, as a participant may."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    voice, camera = media_files
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    flags = ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={voice}",
             f"--use-file-for-fake-video-capture={camera}", "--autoplay-policy=no-user-gesture-required",
             f"--user-data-dir={profile}"]
    if fake_ui:
        flags.append("--use-fake-ui-for-media-stream")
    w, h = SIZES[size]
    if size == "phone":
        opts.add_experimental_option("mobileEmulation", {
            "deviceMetrics": {"width": w, "height": h, "pixelRatio": 2.0, "touch": True}, "userAgent": PHONE_UA})
    else:
        flags.append(f"--window-size={w},{h + 200}")
    for flag in flags:
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    driver.set_page_load_timeout(60)
    if size == "desktop":  # the page's own viewport exactly (the window's includes its frame)
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                               {"width": w, "height": h, "deviceScaleFactor": 1, "mobile": False})
    driver.size_name = size
    return driver


@pytest.fixture(scope="module", params=list(SIZES))
def browser(request, tmp_path_factory, media_files):
    driver = chromium(tmp_path_factory.mktemp("profile"), request.param, media_files)
    yield driver
    driver.quit()


@pytest.fixture
def console(browser):
    """Fails the test on an error in the console it did not allow (console.allow(substring))."""
    browser.get_log("browser")  # what earlier tests left

    class Console:
        def __init__(self):
            self.allowed: list[str] = []

        def allow(self, text: str) -> None:
            self.allowed.append(text)

    c = Console()
    yield c
    check_console(browser, c.allowed)


def check_console(driver, allowed=()) -> None:
    errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"
              and not any(a in e["message"] for a in allowed)]
    assert not errors, f"errors in the console: {errors}"


@pytest.fixture
def server(request, tmp_path, corpus):
    """A study on Prolific with 1 s clips and the listening check; it runs the recording task for
    the recording tests, the matching one for the rest (a study on a platform runs one)."""
    role = "record" if "record" in request.node.name or "microphone" in request.node.name else "match"
    study = make_study(tmp_path / "study", corpus[0], PROLIFIC, clip_seconds=1.0, enforce=True, roles=(role,))
    with LocalStudy(study) as s:
        yield s


def wait(driver, css: str, timeout: float = 30.0, text: str | None = None):
    """The first visible, enabled element matching css (and holding text), or fail with the page's text."""
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for el in driver.find_elements(By.CSS_SELECTOR, css):
            try:
                if el.is_displayed() and el.is_enabled() and (text is None or text in el.text):
                    return el
            except Exception:  # the page re-rendered under us
                pass
        time.sleep(0.1)
    body = driver.find_element(By.TAG_NAME, "body").text
    console = [e["message"][:300] for e in driver.get_log("browser")]
    raise AssertionError(f"no {css!r} {text or ''} after {timeout:.0f} s; the page says: {body[:600]}; "
                         f"the console: {console}")


def button(driver, text: str, timeout: float = 30.0):
    return wait(driver, "button", timeout, text)


def shot(driver, name: str) -> None:
    """Every screen the tests see must fit the width; with SHOTS set it is saved too."""
    wide = driver.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
    assert wide[0] <= wide[1] + 1, f"{name} at {driver.size_name}: {wide[0]} px wide in a {wide[1]} px window"
    if SHOTS:
        import io

        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        png = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
        png.quantize(256).save(Path(SHOTS) / f"{driver.size_name}-{name}.png", optimize=True)


def fresh(driver, url: str) -> None:
    """Open url as a new participant of this browser (the tab's saved code forgotten)."""
    driver.get(url.split("?")[0].rsplit("/", 1)[0] + "/api/study")
    driver.execute_script("sessionStorage.clear()")
    driver.get(url)


def consent_and_survey(driver, page: str, recorded: str = "no") -> None:
    from selenium.webdriver.support.ui import Select

    wait(driver, "#agree")
    shot(driver, f"{page}-consent")
    # nothing of theirs is kept before consent: no withdrawal yet ("I do not agree" is the way out)
    assert not driver.find_elements("css selector", "#withdraw-bar")
    button(driver, "I agree").click()
    wait(driver, "#withdraw", 30)
    Select(wait(driver, "#q-gender")).select_by_visible_text("female")
    Select(wait(driver, "#q-ethnicity")).select_by_visible_text("Other")
    wait(driver, "#q-age").send_keys("34")
    wait(driver, "#q-first_language").send_keys("English")
    Select(wait(driver, "#q-recorded")).select_by_visible_text(recorded)
    shot(driver, f"{page}-survey")
    wait(driver, "#jspsych-survey-html-form-next").click()


def export(server, code: str | None = None) -> dict:
    return http(server.url, "GET", "/api/admin/export" + (f"?code={code}" if code else ""), token=TOKEN)[1]


def test_a_participant_records_themselves(browser, console, server):
    fresh(browser, server.url + "/record?PROLIFIC_PID=rec-" + browser.size_name)
    consent_and_survey(browser, "record")
    shot(browser, "record-microphone")
    button(browser, "Use the microphone").click()
    for k in range(2):
        wait(browser, "h2", 60, f"Read aloud ({k + 1} of 2)")
        start = wait(browser, "#rec-start")
        if k == 0:
            shot(browser, "record-voice")
        start.click()
        wait(browser, "#rec-dot")
        loudest, began = -200.0, time.monotonic()
        while time.monotonic() - began < 4.0:  # reading aloud (the fake microphone plays the speech)
            loudest = max(loudest, float(browser.execute_script(
                "return document.getElementById('level')?.dataset.db || -200")))
            time.sleep(0.1)
        assert loudest > -40, f"the level meter never moved (loudest {loudest} dBFS)"
        assert wait(browser, "#rec-timer").text.startswith("0:0") and wait(browser, "#rec-timer").text != "0:00"
        if k == 0:
            shot(browser, "record-recording")
        wait(browser, "#rec-stop").click()
        wait(browser, "#rec-use")
        if k == 0:
            shot(browser, "record-review")
        wait(browser, "#rec-use").click()
    shot(browser, "record-camera")
    button(browser, "Use the camera").click()
    deadline = time.monotonic() + 20
    while browser.execute_script("return document.getElementById('camera')?.videoWidth || 0") == 0:
        assert time.monotonic() < deadline, "the camera never showed a frame"
        time.sleep(0.1)
    time.sleep(0.5)
    shot(browser, "record-photo")
    button(browser, "Take photo").click()
    wait(browser, "#photo-preview")
    shot(browser, "record-photo-preview")
    button(browser, "Retake").click()  # a retake shows the camera again
    button(browser, "Take photo").click()
    button(browser, "Use this photo").click()
    assert wait(browser, "#completion-code", 60).text == "DONE-1"
    assert "cc=DONE-1" in wait(browser, "#redirect").get_attribute("href")
    code = wait(browser, "#participant-code").text
    shot(browser, "record-done")
    assert not browser.find_elements("css selector", "#withdraw-bar")  # nothing left to withdraw from there
    store = Store(load_study(server.study_dir).database_url)
    try:
        p = store.participant(code)
        rows = store.recordings(code)
    finally:
        store.close()
    assert p.finished_at and p.survey["age"] == 34 and p.platform_id == "rec-" + browser.size_name
    assert p.client["device"] == browser.size_name
    assert [(r["kind"], r["script"]) for r in rows] == [("face", 0), ("voice", 0), ("voice", 1)]
    assert all(r["seconds"] > 1.0 for r in rows if r["kind"] == "voice")
    width = float(rows[0]["box"].split()[2])
    assert 60 < width < 300  # Grace Hopper's face, found in the camera's still
    # a reload after finishing shows the same ending
    browser.refresh()
    assert wait(browser, "#completion-code").text == "DONE-1"


def play_task(driver, cheat: bool = False, keyboard: bool = False) -> None:
    """Plays the task's recording(s) with our player, one after the other, to their ends (with
    `keyboard`, by Enter on the focused button, not a click)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    n = len(driver.find_elements(By.CSS_SELECTOR, "button.play"))
    for k in range(n):
        play = wait(driver, f"button.play[data-slot='{'query' if n == 1 else k}']")
        if cheat:  # speeding up is undone; an "ended" forged as playback starts is refused by the server's clock
            driver.execute_script("arguments[0].click(); const a = document.querySelector('audio.stimulus');"
                                  "a.playbackRate = 16; a.dispatchEvent(new Event('ended'));", play)
            wait(driver, "#task-hint", 10, "listen to the whole recording")
            assert driver.execute_script("return document.querySelector('audio.stimulus').playbackRate") == 1
        elif keyboard:
            play.send_keys(Keys.ENTER)
        else:
            play.click()
        if k + 1 < n:
            wait(driver, f"button.play[data-slot='{k + 1}']", 30)


def test_a_whole_matching_experiment_with_a_reload_and_a_dropped_connection(browser, console, server):
    pid = "match-" + browser.size_name
    fresh(browser, f"{server.url}/match?PROLIFIC_PID={pid}&STUDY_ID=s1&SESSION_ID=x1")
    consent_and_survey(browser, "match")
    wait(browser, "#start")
    shot(browser, "match-instructions")
    wait(browser, "#start").click()
    answered = 0
    console.allow("/played - Failed to load resource: the server responded with a status of 409")  # the forged "ended"
    console.allow("ERR_BLOCKED_BY_CLIENT")  # the answer sent while the connection is down
    # the repeat take's join
    console.allow("/api/participants - Failed to load resource: the server responded with a status of 409")
    while True:
        el = wait(browser, "button.play, #ending", 60)
        if el.get_attribute("id") == "ending":
            break
        assert all(not c.is_enabled() for c in browser.find_elements("css selector", "button.choice")), \
            "the choices are open before listening"
        if answered == 0:
            shot(browser, "match-task")
        play_task(browser, cheat=answered == 0, keyboard=answered == 1)
        choice = wait(browser, "button.choice", 30)
        assert "open" in browser.find_element("id", "announce").text  # announced to screen readers
        if answered == 0:
            shot(browser, "match-task-open")
        if answered == 5:  # the connection drops as the answer is sent, and comes back
            browser.execute_cdp_cmd("Network.enable", {})
            browser.execute_cdp_cmd("Network.setBlockedURLs", {"urls": ["*/answer"]})
            choice.click()
            wait(browser, "#connection", 10)
            shot(browser, "match-connection-lost")
            browser.execute_cdp_cmd("Network.setBlockedURLs", {"urls": []})
        elif answered == 1:  # the keyboard alone: Enter on the focused choice
            from selenium.webdriver.common.keys import Keys

            choice.send_keys(Keys.ENTER)
        else:
            choice.click()
        answered += 1
        if answered == 3:  # a reload mid-experiment goes on from the next task
            browser.refresh()
            wait(browser, "#start", 30, "Go on")
            shot(browser, "match-welcome-back")
            assert "3 of" in browser.find_element("css selector", ".page").text
            wait(browser, "#start").click()
    assert wait(browser, "#completion-code").text in ("DONE-1", "CHECKS-2")
    code = wait(browser, "#participant-code").text
    shot(browser, "match-done")
    data = export(server, code)
    (p,) = data["participants"]
    assert p["platform_ids"] == {"PROLIFIC_PID": pid, "STUDY_ID": "s1", "SESSION_ID": "x1"}
    trials = data["trials"]
    assert len(trials) >= 18 and answered == len(trials)  # every task once: none lost, none doubled
    assert all(t["chosen"] in (0, 1) and t["played_at"] - t["served_at"] >= 0.7 for t in trials)
    assert all(0 <= t["rt_ms"] < 60_000 for t in trials)  # from the choices opening
    # a reload after finishing: the same code again
    browser.refresh()
    assert wait(browser, "#completion-code").text in ("DONE-1", "CHECKS-2")
    shot(browser, "match-done-reloaded")
    # the same Prolific link in a new tab (the first one closed): the same ending and code again
    fresh(browser, f"{server.url}/match?PROLIFIC_PID={pid}&STUDY_ID=s1&SESSION_ID=x1")
    assert wait(browser, "#completion-code", 30).text in ("DONE-1", "CHECKS-2")
    assert wait(browser, "#participant-code").text == code
    # the same Prolific id from another session: told it has taken part
    fresh(browser, f"{server.url}/match?PROLIFIC_PID={pid}&STUDY_ID=s1&SESSION_ID=x2")
    wait(browser, "#ending", 30, "taken part already")
    shot(browser, "match-taken-part")
    # withdrawal later, with the participant code
    browser.get(server.url + "/withdraw")
    shot(browser, "withdraw")
    wait(browser, "#withdraw-code").send_keys(code)
    wait(browser, "#withdraw-submit").click()
    wait(browser, "#ending", 30, "withdrawn")
    shot(browser, "withdrawn")
    assert export(server, code)["participants"] == []


def test_declining_consent_ends_with_its_code(browser, console, server):
    fresh(browser, server.url + "/match?PROLIFIC_PID=decline-" + browser.size_name)
    button(browser, "I do not agree").click()
    assert wait(browser, "#completion-code").text == "NOCONSENT-4"
    assert "cc=NOCONSENT-4" in wait(browser, "#redirect").get_attribute("href")
    shot(browser, "declined")
    assert export(server)["participants"] == []  # nothing is kept
    # the preview link joins as a pilot, in a tab that had a real participant's code saved
    from facevoice.study.app import pilot_token

    fresh(browser, server.url + "/match")
    wait(browser, "#agree")
    browser.get(server.url + f"/match?pilot={pilot_token(TOKEN)}")
    wait(browser, "#agree")
    sources = sorted(p["source"] for p in export(server)["participants"])
    assert sources == ["participant", "pilot"], sources


def test_a_blocked_microphone_and_a_browser_without_recording(browser, tmp_path, server, media_files):
    denied = chromium(tmp_path / "denied", browser.size_name, media_files, fake_ui=False)
    denied.size_name = browser.size_name
    try:
        denied.get(server.url + "/record?PROLIFIC_PID=blocked-" + browser.size_name)
        consent_and_survey(denied, "blocked")
        button(denied, "Use the microphone").click()
        wait(denied, "#device-problem", 30, "blocked")
        shot(denied, "microphone-blocked")
        button(denied, "Try again").click()  # still blocked: the same page, no dead end
        wait(denied, "#device-problem", 30, "blocked")
        button(denied, "I cannot use a microphone").click()
        assert wait(denied, "#completion-code").text == "NODEVICE-5"
        shot(denied, "no-device")
        check_console(denied)
        # a browser that cannot record is told so before anything is asked
        script = denied.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument",
                                        {"source": "delete window.MediaRecorder;"})
        denied.execute_script("sessionStorage.clear()")
        denied.get(server.url + "/record")
        wait(denied, "#ending", 30, "cannot run the study")
        assert wait(denied, "#completion-code").text == "NODEVICE-5"
        shot(denied, "unsupported-browser")
        denied.execute_cdp_cmd("Page.removeScriptToEvaluateOnNewDocument", {"identifier": script["identifier"]})
        check_console(denied)
    finally:
        denied.quit()
    assert export(server)["participants"] == []


def test_a_device_the_study_does_not_take(browser, console, tmp_path, corpus):
    other = "desktop" if browser.size_name == "phone" else "phone"
    extra = PROLIFIC + f'[devices]\nallowed = ["{other}"]\n'
    with LocalStudy(make_study(tmp_path / "policy", corpus[0], extra, roles=("match",))) as s:
        fresh(browser, s.url + "/match")
        wait(browser, "#ending", 30, "cannot be taken on this device")
        assert wait(browser, "#completion-code").text == "NODEVICE-5"
        shot(browser, "device-blocked")
        assert export(s)["participants"] == []


def test_the_sound_check(browser, console, tmp_path, corpus):
    extra = PROLIFIC + "[sound_check]\nenabled = true\n"
    with LocalStudy(make_study(tmp_path / "sound", corpus[0], extra, roles=("match",))) as s:
        fresh(browser, s.url + "/match")
        consent_and_survey(browser, "sound")
        play = wait(browser, "#beeps")
        shot(browser, "sound-check")
        for attempt in range(2):
            play.click()
            wait(browser, "#beep-count", 20)
            (p,) = export(s)["participants"]
            beeps = p["sound_check"]["beeps"]
            count = wait(browser, "#beep-count")
            if attempt == 0:  # a number out of range is a typing slip, not a try; the same beeps play again
                count.send_keys("25")
                wait(browser, "#beep-answer").click()
                wait(browser, "#beep-problem", 10, "in digits")
                assert export(s)["participants"][0]["sound_check"].get("tries", 0) == 0
                wait(browser, "#beeps", 10, "again").click()
                wait(browser, "#beeps", 20, "again")  # played to its end again
                assert export(s)["participants"][0]["sound_check"]["beeps"] == beeps  # no new draw
            count = wait(browser, "#beep-count")
            count.clear()
            count.send_keys(str(beeps + 1 if attempt == 0 else beeps))  # wrong first, then right
            wait(browser, "#beep-answer").click()
            if attempt == 0:
                wait(browser, ".error", 20, "listen again")
                shot(browser, "sound-check-again")
                play = wait(browser, "#beeps")
        wait(browser, "#start", 30)
        (p,) = export(s)["participants"]
        assert p["sound_check"]["passed"] and p["sound_check"]["tries"] == 2


def test_the_headphone_check(browser, console, tmp_path, corpus):
    extra = PROLIFIC + "[headphone_check]\nenabled = true\ntrials = 2\nmin_correct = 2\n"
    with LocalStudy(make_study(tmp_path / "headphones", corpus[0], extra, roles=("match",))) as s:
        for passing in (True, False):
            fresh(browser, s.url + "/match")
            consent_and_survey(browser, "headphones")
            for k in range(2):
                play = wait(browser, "#hp-play")
                if k == 0 and passing:
                    shot(browser, "headphone-check")
                assert not any(b.is_enabled() for b in browser.find_elements("css selector", "button.interval"))
                play.click()
                wait(browser, "#hp-progress", 20, f"Trial {k + 1} of 2")
                wait(browser, "button.interval", 30)  # the three noises have played
                if k == 0 and passing:
                    shot(browser, "headphone-check-open")
                (hp,) = [h for h in (p["sound_check"]["headphones"] for p in export(s)["participants"])
                         if len(h["targets"]) > len(h["answers"])]  # the one taking the check now
                target = hp["targets"][-1]
                answer = target if passing or k == 0 else target % 3 + 1
                wait(browser, f"button.interval[data-interval='{answer}']").click()
            if passing:
                wait(browser, "#start", 30)
            else:
                assert wait(browser, "#completion-code", 30).text == "SCREEN-3"
                shot(browser, "headphone-check-failed")
        stored = sorted((p["sound_check"]["headphones"]["passed"], p["excluded"]) for p in export(s)["participants"])
        assert stored == [(False, "failed the headphone check"), (True, None)]


def test_a_participant_films_their_reading(browser, console, tmp_path, corpus):
    import av

    study = make_study(tmp_path / "filmed", corpus[0], PROLIFIC, roles=("record",), video=True, upload_bytes=8_000_000)
    with LocalStudy(study) as s:
        fresh(browser, s.url + "/record")
        consent_and_survey(browser, "filmed")
        button(browser, "Use the camera and microphone").click()
        for k in range(2):
            wait(browser, "h2", 60, f"Read aloud ({k + 1} of 2)")
            deadline = time.monotonic() + 20
            while browser.execute_script("return document.getElementById('rec-preview')?.videoWidth || 0") == 0:
                assert time.monotonic() < deadline, "the camera's picture never showed while reading"
                time.sleep(0.1)
            wait(browser, "#rec-start").click()
            wait(browser, "#rec-dot")
            time.sleep(3.5)
            if k == 0:
                shot(browser, "record-filmed")
            wait(browser, "#rec-stop").click()
            wait(browser, "video#rec-playback")
            if k == 0:
                shot(browser, "record-filmed-review")
            wait(browser, "#rec-use").click()
        button(browser, "Take photo", 60).click()  # the same camera: not asked for again
        button(browser, "Use this photo").click()
        code = wait(browser, "#participant-code", 60).text
        assert wait(browser, "#completion-code").text == "DONE-1"
        rows = export(s, code)["recordings"]
        assert sorted((r["kind"], r["script"]) for r in rows) == [("face", 0), ("video", 0), ("video", 1),
                                                                  ("voice", 0), ("voice", 1)]
        film = s.study_dir / "recordings" / next(r["path"] for r in rows if r["kind"] == "video")
        with av.open(str(film)) as c:
            frame = next(c.decode(video=0))
        assert (frame.width, frame.height) == (640, 480)
