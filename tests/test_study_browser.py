"""The study's pages in a real browser: Debian's headless Chromium driven by Selenium, with fake
media devices fed a real speech recording (espeak-ng) and a camera showing a real photo
(matplotlib's grace_hopper.jpg). One participant records themselves end to end; another takes a
whole matching experiment. With FACEVOICE_STUDY_SCREENSHOTS=DIR each page is saved as a PNG
there (docs/images/study holds the ones docs/study.md shows)."""

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

from facevoice.study.analyze import collect
from facevoice.study.config import load_study
from facevoice.study.store import Store
from tests.local_servers import LocalStudy
from tests.media_samples import speech
from tests.study_helpers import http, make_study

pytestmark = pytest.mark.skipif(shutil.which("chromedriver") is None or shutil.which("chromium") is None,
                                reason="needs Debian's chromium and chromium-driver (deploy/setup-debian.sh)")
SHOTS = os.environ.get("FACEVOICE_STUDY_SCREENSHOTS")


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
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    tmp = tmp_path_factory.mktemp("chromium")
    x, sr = speech("Forty four Americans have now taken the presidential oath. The words have been spoken "
                   "during rising tides of prosperity and the still waters of peace.")
    sf.write(tmp / "voice.wav", np.concatenate([x, x]), sr, subtype="PCM_16")
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                 f"--use-file-for-fake-audio-capture={tmp / 'voice.wav'}",
                 f"--use-file-for-fake-video-capture={camera_y4m(tmp / 'camera.y4m')}",
                 "--autoplay-policy=no-user-gesture-required", f"--user-data-dir={tmp / 'profile'}",
                 "--window-size=1100,900"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture
def server(tmp_path, corpus):
    with LocalStudy(make_study(tmp_path / "study", corpus[0])) as s:
        yield s


def wait(driver, css: str, timeout: float = 30.0, text: str | None = None):
    """The first visible element matching css (and holding text), or fail with the page's text."""
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
    console = [e["message"][:300] for e in driver.get_log("browser") if "favicon" not in e["message"]]
    raise AssertionError(f"no {css!r} {text or ''} after {timeout:.0f} s; the page says: {body[:600]}; "
                         f"the console: {console}")


def button(driver, text: str, timeout: float = 30.0):
    return wait(driver, "button", timeout, text)


def shot(driver, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(SHOTS) / f"{name}.png"))


def consent_and_survey(driver, page: str) -> None:
    from selenium.webdriver.support.ui import Select

    shot(driver, f"{page}-consent")
    button(driver, "I agree").click()
    Select(wait(driver, "#q-gender")).select_by_visible_text("female")
    Select(wait(driver, "#q-ethnicity")).select_by_visible_text("Other")
    wait(driver, "#q-age").send_keys("34")
    wait(driver, "#q-first_language").send_keys("English")
    Select(wait(driver, "#q-recorded")).select_by_visible_text("no")
    shot(driver, f"{page}-survey")
    wait(driver, "#jspsych-survey-html-form-next").click()


def test_a_participant_records_themselves_in_the_browser(browser, server):
    browser.get(server.url + "/record")
    consent_and_survey(browser, "record")
    button(browser, "Use this microphone").click()
    for k in range(2):
        wait(browser, ".script")
        loudest, start = -200.0, time.monotonic()
        while time.monotonic() - start < 5.5:  # reading aloud (the fake microphone plays the speech)
            db = float(browser.execute_script("return document.getElementById('level')?.dataset.db || -200"))
            if db > loudest + 3 and k == 0:
                shot(browser, "record-voice")  # the meter at its loudest yet
            loudest = max(loudest, db)
            time.sleep(0.1)
        assert loudest > -40, f"the level meter never moved (loudest {loudest} dBFS): {browser.get_log('browser')}"
        button(browser, "Done").click()
        button(browser, "Use this recording").click()
        ok = wait(browser, "#upload-ok, #upload-error", 60)
        assert ok.get_attribute("id") == "upload-ok", ok.text
        button(browser, "Continue").click()
    button(browser, "Use this camera").click()
    deadline = time.monotonic() + 20
    while browser.execute_script("return document.getElementById('camera')?.videoWidth || 0") == 0:
        assert time.monotonic() < deadline, "the camera never showed a frame"
        time.sleep(0.1)
    time.sleep(0.5)
    shot(browser, "record-face")
    button(browser, "Take photo").click()
    ok = wait(browser, "#upload-ok, #upload-error", 60)
    assert ok.get_attribute("id") == "upload-ok", ok.text
    button(browser, "Continue").click()
    assert wait(browser, "#completion-code").text == "TEST-CODE"
    shot(browser, "record-done")
    store = Store(load_study(server.study_dir).database_url)
    try:
        (p,) = store.participants()
        rows = store.recordings(p.code)
    finally:
        store.close()
    assert p.finished_at and p.survey["age"] == 34
    assert [(r["kind"], r["script"]) for r in rows] == [("face", 0), ("voice", 0), ("voice", 1)]
    assert all(r["seconds"] > 2.0 for r in rows if r["kind"] == "voice")
    for r in rows:
        assert (server.study_dir / "recordings" / r["path"]).stat().st_size > 5000
    width = float(rows[0]["box"].split()[2])
    assert 60 < width < 300  # Grace Hopper's face, found in the camera's still


def test_a_participant_takes_a_whole_matching_experiment_in_the_browser(browser, server):
    from selenium.webdriver.common.by import By

    browser.execute_script("sessionStorage.clear()") if browser.current_url.startswith("http") else None
    browser.get(server.url + "/match")
    consent_and_survey(browser, "match")
    shot(browser, "match-instructions")
    wait(browser, "#jspsych-instructions-next").click()
    answered = 0
    while True:
        el = wait(browser, "audio.stimulus, #completion-code", 60)
        if el.get_attribute("id") == "completion-code":
            break
        assert browser.find_elements(By.CSS_SELECTOR, "button.choice:disabled"), "choices open before listening"
        browser.execute_script("for (const a of document.querySelectorAll('audio.stimulus')) "
                               "{ a.playbackRate = 16; a.play(); }")
        choice = wait(browser, "button.choice", 60)
        if answered == 0:
            shot(browser, "match-task")
        choice.click()
        answered += 1
    assert el.text == "TEST-CODE"
    shot(browser, "match-done")
    token = LocalStudy.ADMIN_TOKEN
    export = http(server.url, "GET", "/api/admin/export", token=token)[1]
    (p,) = export["participants"]
    trials = export["trials"]
    assert len(trials) == answered >= 18
    assert all(t["chosen"] in (0, 1) and t["played"] for t in trials)
    store = Store(load_study(server.study_dir).database_url)
    try:
        data = collect(load_study(server.study_dir), store)
    finally:
        store.close()
    counted = sum(len(by) for by in data["included"].values()) + sum(data["excluded"].values())
    assert counted == 1 and p["finished_at"]
