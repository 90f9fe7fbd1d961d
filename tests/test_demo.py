"""The demo page (issue 21): the engine behind both tabs, the clip checks, the live window and its seam, the page
through gradio_client (as a script calls a Space), the exported Space run in a fresh process, and the page in a real
browser: headless Chromium driven by selenium, with Chromium's fake camera and microphone for the Live tab.

gradio, selenium, chromium and chromedriver are optional: tests that need one skip, naming what is missing
(``pip install "affectverse[demo,dev]"``, ``apt-get install chromium chromium-driver``).
``AFFECTVERSE_SCREENSHOTS=docs`` makes the browser tests write docs/demo_clip.png and docs/demo_live.png;
``AFFECTVERSE_DEMO_MODEL=outputs/affectverse-tiny`` runs the page on that folder (the README's screenshots: the
tiny model ``python train.py`` writes) instead of a random tiny one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from fractions import Fraction
from importlib.util import find_spec
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import av
import numpy as np
import pytest
import yaml

from affectverse import cli, demo, hub
from affectverse.default.clips import generate_clips, write_bad_media
from affectverse.inference.engine import MODALITIES, Engine, Setting, load_model
from affectverse.inference.live import LiveSession
from media_affectverse import probe
from tests.helpers import save_tiny_model

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["happy", "sad", "angry", "neutral"]
TOKENS = 16  # new tokens per answer: the trained tiny model's whole sentence
MAX_SECONDS = 4.0  # the test page's limit: the generated 3 s clips pass, the 5 s one does not
SUBTITLE = "I can't believe it."


def gradio_or_skip():
    if demo.gradio_missing():
        pytest.skip(demo.gradio_missing())


def browser_missing() -> list[str]:
    """What the browser tests need and this machine lacks."""
    missing = [] if find_spec("selenium") else ['selenium (pip install "affectverse[dev]")']
    if not any(shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")):
        missing.append("chromium (apt-get install chromium)")
    if not shutil.which("chromedriver"):
        missing.append("chromedriver (apt-get install chromium-driver)")
    return missing


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ============================================================================================ fixtures
@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    """AFFECTVERSE_DEMO_MODEL, or a random tiny model saved with its processor."""
    if os.environ.get("AFFECTVERSE_DEMO_MODEL"):
        return Path(os.environ["AFFECTVERSE_DEMO_MODEL"])  # as given: the page shows its name
    folder = tmp_path_factory.mktemp("tiny")
    save_tiny_model(folder)
    return folder


@pytest.fixture(scope="module")
def loaded(model_folder):
    """(model, processor) loaded as the page loads them."""
    return load_model(str(model_folder), "cpu", "float32")


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    """Two generated 3 s clips, a 5 s one (too long for the test page) and write_bad_media's files."""
    root = tmp_path_factory.mktemp("media")
    generate_clips(root / "clips", n_clips=2, seed=1)
    generate_clips(root / "long", n_clips=1, seconds=5.0)
    clips = sorted((root / "clips" / "video").glob("*.mp4"))
    return {"clip": clips[0], "clip2": clips[1], "long": root / "long" / "video" / "clip_00000.mp4",
            **write_bad_media(root / "bad")}


def engine_result(loaded, path, labels, modality="avt", subtitle=SUBTITLE) -> dict:
    """What ``affectverse predict --labels`` gives for one clip: the reference for the page's numbers."""
    model, processor = loaded
    row = {"name": Path(path).name, "video": str(path), "audio": "", "subtitle": subtitle}
    return Engine(model, processor, TOKENS, 1, 0, labels=labels).predict(Setting(MODALITIES[modality]), [row])[0]


@pytest.fixture(scope="module")
def server(model_folder):
    """The page of ``model_folder`` served on a free port: its URL."""
    gradio_or_skip()
    page = demo.build_demo(str(model_folder), max_seconds=MAX_SECONDS, max_new_tokens=TOKENS, device="cpu")
    port = free_port()
    demo.launch(page, "127.0.0.1", port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    page.close()


# ============================================================================================ the engine behind the page
def test_demo_without_gradio_says_how_to_install_it(tmp_path, caplog):
    with mock.patch.object(demo, "gradio_missing", return_value='gradio is not installed: pip install "x"'), \
            mock.patch.object(demo, "load_model", side_effect=AssertionError("no model before the check")):
        assert cli.main(["demo", str(tmp_path)]) == 2
    assert 'affectverse demo: gradio is not installed: pip install "x"' in caplog.text


def test_trained_labels_come_from_the_run_folder(tmp_path):
    assert demo.trained_labels(str(tmp_path)) is None and demo.trained_labels("someone/on-the-hub") is None
    (tmp_path / "run_args.json").write_text(json.dumps({"data": {"label_set": "calm, tense"}}))
    assert demo.trained_labels(str(tmp_path)) == ["calm", "tense"]
    (tmp_path / "results.json").write_text(json.dumps({"generation": {"label_set": ["angry", "happy"]}}))
    assert demo.trained_labels(str(tmp_path)) == ["angry", "happy"]


def test_check_clip_names_what_is_wrong(media, tmp_path):
    for case in ("corrupt", "empty", "missing", "truncated", "good_wav"):
        with pytest.raises(demo.ClipProblem, match=rf"^{media[case].name} is not a video this demo can read \(.+\)"):
            demo.check_clip(str(media[case]), MAX_SECONDS, tmp_path)
    with pytest.raises(demo.ClipProblem, match=r"clip_00000.mp4 lasts 5.0 s; this demo reads clips of at most 4 s"):
        demo.check_clip(str(media["long"]), MAX_SECONDS, tmp_path)
    with pytest.raises(demo.ClipProblem, match="Upload or record a clip first"):
        demo.check_clip(None, MAX_SECONDS, tmp_path)
    path, info = demo.check_clip(str(media["no_audio"]), MAX_SECONDS, tmp_path)
    assert path == str(media["no_audio"]) and info.audio_duration is None  # allowed: read from the video alone
    assert demo.check_clip(str(media["clip"]), MAX_SECONDS, tmp_path)[1].audio_duration == pytest.approx(3, abs=0.1)
    with pytest.raises(demo.ClipProblem, match="distinct labels"):
        demo.page_labels("happy, happy")


def test_a_browser_recording_is_reencoded_at_a_constant_rate(tmp_path):
    """MediaRecorder's webm has no frame count; the page re-encodes it (frames at irregular times, opus sound)."""
    times = np.cumsum([0.0] + [0.03, 0.05, 0.02, 0.1] * 10)  # 40 frames over 2.0 s, variable frame rate
    webm = tmp_path / "recording.webm"
    with av.open(str(webm), "w") as container:
        video = container.add_stream("libvpx", rate=1000)
        video.width, video.height, video.pix_fmt, video.time_base = 64, 48, "yuv420p", Fraction(1, 1000)
        sound = container.add_stream("libopus", rate=48000, layout="mono")
        for i, t in enumerate(times):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 6 * i, np.uint8), format="rgb24")
            frame.pts, frame.time_base = round(t * 1000), Fraction(1, 1000)
            container.mux(video.encode(frame))
        container.mux(video.encode())
        chunk = av.AudioFrame.from_ndarray(np.zeros((1, 96000), np.float32), format="fltp", layout="mono")
        chunk.sample_rate, chunk.pts = 48000, 0
        container.mux(sound.encode(chunk))
        container.mux(sound.encode())
    out = demo.transcode(webm, tmp_path / "recording.mp4", MAX_SECONDS)
    info = probe(str(out), "av")
    assert info.fps == demo.RECORD_FPS and info.n_frames == round(times[-1] * demo.RECORD_FPS) + 1
    assert info.audio_duration == pytest.approx(2.0, abs=0.1)
    with av.open(str(out)) as container:  # each frame is the latest one recorded by its tick
        greys = [int(f.to_ndarray(format="rgb24")[0, 0, 0]) for f in container.decode(video=0)]
    expected = [6 * int(np.searchsorted(times, k / demo.RECORD_FPS + 1e-6, side="right") - 1) for k in range(len(greys))]
    assert np.abs(np.array(greys) - expected).max() <= 8  # lossy codecs
    with pytest.raises(demo.ClipProblem, match="lasts more than"):
        demo.transcode(webm, tmp_path / "short.mp4", 1.0)


def test_read_clip_is_the_engine_of_predict_at_every_ratio(loaded, media):
    model, processor = loaded
    reading = demo.read_clip(model, processor, str(media["clip"]), SUBTITLE, LABELS, ratios="0.5",
                             max_new_tokens=TOKENS)
    assert [r["keep_ratio"] for r in reading["curve"]] == [0.5, 1.0] and reading["modality"] == "avt"
    full, reference = reading["full"], engine_result(loaded, media["clip"], LABELS)
    assert full["answer"] == reference["answer"] and list(full["label_scores"]) == LABELS
    assert full["label_scores"] == pytest.approx(reference["label_scores"], abs=1e-4)
    attention = full["belief_attention"]  # Figure 3's weights: a row per belief token, video memory first
    weights = np.array(attention["weights"])
    assert weights.shape[0] == 2 * model.config.num_belief_queries
    assert weights.shape[1] == 2 * model.config.rollout_steps * model.config.future_queries
    assert np.allclose(weights.sum(1), 1, atol=1e-3)
    video_share = weights[:, : weights.shape[1] // 2].sum() / weights.sum()
    assert video_share == pytest.approx(attention["video"], abs=1e-3)
    silent = demo.read_clip(model, processor, str(media["no_audio"]), "", LABELS, ratios="1", max_new_tokens=TOKENS)
    assert silent["modality"] == "vt" and [r["keep_ratio"] for r in silent["curve"]] == [1.0]
    assert silent["full"]["label_scores"] == pytest.approx(
        engine_result(loaded, media["no_audio"], LABELS, "vt", "")["label_scores"], abs=1e-4)
    assert np.array(silent["full"]["belief_attention"]["weights"]).shape[0] == model.config.num_belief_queries


class Clock:
    """time.monotonic for a LiveStream that started at 100 s."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now

    def stream(self) -> demo.LiveStream:
        stream = demo.LiveStream()
        stream.start = 100.0
        return stream


def grey(t: float) -> int:
    """The grey level of the frame :func:`fill` sends at stream time ``t``."""
    return round(10 * t)


def sine(rate: int, seconds: float) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.3 * 32767 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)


def fill(stream: demo.LiveStream, clock: Clock, seconds: float, frames=True, audio=True, rate: int = 16000,
         start: float = 0.0):
    """Stream ``seconds`` from ``start`` on as the browser does: every 0.5 s a 49 x 65 grey frame (grey(t)) and the
    last 0.5 s of a 440 Hz sine, int16 at ``rate``."""
    for k in range(round(seconds / demo.STREAM_EVERY)):
        clock.now = 100.0 + start + (k + 1) * demo.STREAM_EVERY
        if frames:
            stream.add_frame(np.full((49, 65, 3), grey(start + (k + 1) * demo.STREAM_EVERY), np.uint8))
        if audio:
            stream.add_audio(rate, sine(rate, demo.STREAM_EVERY))


def stand_in_session(fps=3.0, size=32):
    """What LiveStream reads of its session: the processor's fps and frame size, the sampling rate."""
    return SimpleNamespace(processor=SimpleNamespace(fps=fps, frame_size=size), layout=SimpleNamespace(sr=16000))


def test_the_live_stream_samples_frames_on_the_session_clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(demo.time, "monotonic", clock)
    stream = clock.stream()
    stream.session = stand_in_session()
    assert stream.take_frames() is None and stream.modality is None
    fill(stream, clock, 2.0, audio=False)  # frames at 0.5, 1.0, 1.5, 2.0 s
    frames = stream.take_frames()
    # slots at k/3 s up to the newest arrival; each shows the newest frame arrived by then (the first before it)
    expected = [grey(max(0.5, int(k / 3 / 0.5) * 0.5)) for k in range(7)]
    assert frames.shape == (7, 32, 32, 3) and [int(f[0, 0, 0]) for f in frames] == expected
    assert stream.modality == "vt" and stream.take_frames() is None  # nothing new: no slot
    fill(stream, clock, 1.0, audio=False, start=2.0)
    assert [int(f[0, 0, 0]) for f in stream.take_frames()] == [grey(2.0), grey(2.5), grey(3.0)]  # 7/3, 8/3, 3 s


def test_the_live_stream_resamples_the_microphone_in_step_with_the_frames(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(demo.time, "monotonic", clock)
    stream = clock.stream()
    stream.session = stand_in_session()
    fill(stream, clock, 0.5, audio=False)  # the camera starts first; the microphone's first chunk ends at 1.0 s
    fill(stream, clock, 2.0, frames=False, rate=48000, start=0.5)
    audio = stream.take_audio()
    assert stream.modality == "avt" and audio.dtype == np.float32
    assert not audio[:7900].any()  # 0.5 s of silence: the microphone's first sample is at 0.5 s of stream
    assert len(audio) == pytest.approx(2.5 * 16000, abs=32)  # swresample holds back a few samples
    spectrum = np.abs(np.fft.rfft(audio[8000:]))
    assert np.argmax(spectrum) / len(audio[8000:]) * 16000 == pytest.approx(440, abs=2)  # at 16 kHz, in tune
    assert np.abs(audio).max() == pytest.approx(0.3, abs=0.01) and stream.take_audio() is None


def test_live_readings_are_the_live_session_s_on_the_sampled_stream(loaded, monkeypatch):
    """The Live tab's path: the stream's media, sampled on the session's clock, through LiveSession.push; a reading
    of the newest completed 2 s chunk, for whichever of webcam and microphone the stream has."""
    clock = Clock()
    monkeypatch.setattr(demo.time, "monotonic", clock)
    model, processor = loaded
    for frames, audio, modality in ((True, True, "avt"), (True, False, "vt"), (False, True, "at")):
        clock.now = 100.0
        stream = clock.stream()
        fill(stream, clock, 1.5, frames, audio)
        assert demo.live_readings(model, processor, stream, LABELS, TOKENS) == []  # less than a chunk
        fill(stream, clock, 3.0, frames, audio, start=1.5)
        readings = demo.live_readings(model, processor, stream, LABELS, TOKENS)
        # two chunks completed since the last look: one reading, the newest chunk's (the page catches up)
        assert stream.key == (modality, tuple(LABELS)) and [r["seconds"] for r in readings] == [4.0]
        # the reference: a session of its own pushed the frames and samples the stream should have given it
        session = LiveSession(model, processor, LABELS, modality, window_seconds=demo.LIVE_WINDOW,
                              max_new_tokens=TOKENS)
        fps, size = session.processor.fps, session.processor.frame_size
        slots = [np.full((size, size, 3), grey(max(0.5, int(k / fps / 0.5) * 0.5)), np.uint8)
                 for k in range(int(4.5 * fps) + 1)]
        samples = np.concatenate([sine(16000, 0.5)] * 9).astype(np.float32) / 32767
        reference = session.push(frames=np.stack(slots) if frames else None, audio=samples if audio else None)
        assert [r.seconds for r in reference] == [2.0, 4.0]
        assert readings[0]["answer"] == reference[-1].answer
        assert readings[0]["label_scores"] == pytest.approx(reference[-1].label_scores, abs=1e-5)
    first = stream.session
    clock.now += 1.0
    fill(stream, clock, 2.0, frames=False, start=clock.now - 100.0)
    assert demo.live_readings(model, processor, stream, ["happy", "sad"], TOKENS) == []  # a new label set: a new
    assert stream.session is not first and stream.offset == pytest.approx(clock.now - 100.0)  # session from now on
    stream.session = None  # what the Live tab does after a failed reading: the next session starts from now too
    clock.now += 3.0
    fill(stream, clock, 2.0, frames=False, start=clock.now - 100.0)
    assert demo.live_readings(model, processor, stream, ["happy", "sad"], TOKENS) == []
    assert stream.offset == pytest.approx(clock.now - 100.0)


# ============================================================================================ gradio_client
def test_a_script_reads_clips_through_gradio_client(server, loaded, media):
    """How a script calls a Space: the answer and label scores are predict's; bad files get the page's message."""
    from gradio_client import Client, handle_file

    client = Client(server, verbose=False)
    assert set(client.view_api(return_format="dict", print_info=False)["named_endpoints"]) == {"/read_clip"}
    answer, scores, curve, attention, status = client.predict(handle_file(str(media["clip"])), SUBTITLE,
                                                              ",".join(LABELS), api_name="/read_clip")
    reference = engine_result(loaded, media["clip"], LABELS)
    assert answer == reference["answer"] and scores["label"] == reference["label"]
    assert {c["label"]: c["confidence"] for c in scores["confidences"]} == pytest.approx(
        reference["label_scores"], abs=1e-4)
    observed = sorted({row[0] for row in curve["data"]})
    assert observed == pytest.approx([0.1 * i for i in range(1, 11)]) and len(curve["data"]) == 10 * len(LABELS)
    assert attention["type"] == "matplotlib" and attention["plot"].startswith("data:image/")
    assert status.startswith(f"Read **{media['clip'].name}** (3.0 s, video and audio) at 10 observation ratios")
    silent = client.predict(handle_file(str(media["no_audio"])), "", ",".join(LABELS), api_name="/read_clip")
    assert "no audio track" in silent[-1]
    for case, message in (("corrupt", "corrupt.mp4 is not a video this demo can read"),
                          ("long", "clip_00000.mp4 lasts 5.0 s; this demo reads clips of at most 4 s")):
        with pytest.raises(Exception, match=re.escape(message)):
            client.predict(handle_file(str(media[case])), "", ",".join(LABELS), api_name="/read_clip")
    with pytest.raises(Exception, match="distinct labels"):
        client.predict(handle_file(str(media["clip"])), "", "happy,happy", api_name="/read_clip")


# ============================================================================================ the Space
@pytest.fixture(scope="module")
def space_export(model_folder, tmp_path_factory):
    """`affectverse export --space` of the model, the model id being the exported folder itself (as a Hub id)."""
    out = tmp_path_factory.mktemp("space") / "hub"
    assert cli.main(["export", str(model_folder), str(out), "--repo-id", str(out), "--space", "me/affectverse-demo",
                     "--space-requirement", "affectverse[demo] @ git+https://example.org/affectverse"]) == 0
    return out


def test_export_space_writes_app_requirements_and_metadata(space_export, model_folder, tmp_path):
    space = space_export / "space"
    assert sorted(p.name for p in space.iterdir()) == ["README.md", "app.py", "requirements.txt"]
    meta = yaml.safe_load(re.match(r"---\n(.*?)\n---\n", (space / "README.md").read_text(), re.DOTALL).group(1))
    gradio = hub.metadata.version("gradio") if not demo.gradio_missing() else hub.GRADIO_TESTED
    assert meta["sdk"] == "gradio" and meta["sdk_version"] == gradio and meta["app_file"] == "app.py"
    assert meta["models"] == [str(space_export)] and meta["suggested_hardware"] == "cpu-basic"
    assert meta["python_version"] == "3.11" and len(meta["short_description"]) <= 60
    app = (space / "app.py").read_text()
    compile(app, "app.py", "exec")
    assert f"build_demo({str(space_export)!r}, labels={demo.trained_labels(str(model_folder))!r}, " \
           "trust_remote_code=True)" in app
    assert (space / "requirements.txt").read_text() == "affectverse[demo] @ git+https://example.org/affectverse\n"
    card = (space_export / "README.md").read_text()
    assert "[me/affectverse-demo](https://huggingface.co/spaces/me/affectverse-demo)" in card
    assert f"affectverse demo {space_export}" in card
    assert not any(path.startswith("space/") for path, _ in hub.upload_plan(space_export)[0])  # not in the model repo
    with mock.patch.object(hub, "HfApi") as hf_api:
        assert cli.main(["push", str(space), "me/affectverse-demo", "--space"]) == 0
    assert hf_api.return_value.method_calls == [
        mock.call.create_repo("me/affectverse-demo", private=None, exist_ok=True, repo_type="space",
                              space_sdk="gradio"),
        mock.call.upload_folder(repo_id="me/affectverse-demo", folder_path=str(space), repo_type="space",
                                revision=None, commit_message="Upload AffectVerse",
                                allow_patterns=["README.md", "app.py", "requirements.txt"])]
    assert cli.main(["export", str(model_folder), str(tmp_path / "x"), "--space"]) == 2  # needs --repo-id
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_the_exported_space_runs_in_a_fresh_process(space_export, loaded, media, tmp_path):
    """app.py as a Space runs it: its own process and folder, the model by id with trust_remote_code, the package
    installed (here: on PYTHONPATH); a script then calls it with gradio_client."""
    gradio_or_skip()
    from gradio_client import Client, handle_file

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GRADIO_SERVER_PORT": str(port), "HF_HUB_OFFLINE": "1",
           "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1"}
    log = tmp_path / "space.log"
    with open(log, "w") as out:
        app = subprocess.Popen([sys.executable, "app.py"], cwd=space_export / "space", env=env, stdout=out,
                               stderr=out)
    try:
        deadline = time.monotonic() + 240
        while True:
            assert app.poll() is None, log.read_text()[-3000:]
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(1)
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        answer, scores, *_ = client.predict(handle_file(str(media["clip2"])), SUBTITLE, ",".join(LABELS),
                                            api_name="/read_clip")
    finally:
        app.terminate()
        app.wait(30)
    reference = demo.read_clip(*loaded, str(media["clip2"]), SUBTITLE, LABELS, max_new_tokens=demo.MAX_NEW_TOKENS)
    assert answer == reference["full"]["answer"]
    assert {c["label"]: c["confidence"] for c in scores["confidences"]} == pytest.approx(
        reference["full"]["label_scores"], abs=1e-4)


# ============================================================================================ in a real browser
@pytest.fixture(scope="module")
def browser():
    """Headless Chromium with a fake camera and microphone (their permission granted without a prompt)."""
    gradio_or_skip()
    missing = browser_missing()
    if missing:
        pytest.skip("browser tests need " + ", ".join(missing))
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = next(shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                                   if shutil.which(n))
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1280,1300", "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    yield driver
    driver.quit()


def wait_for(driver, condition, timeout=60, what="the page"):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.25).until(lambda d: condition(d),
                                                                     f"timed out waiting for {what}")


def css(driver, selector):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def meters(driver, component) -> dict[str, float]:
    """The label scores a gr.Label shows: its bars' labels and values, read at one instant (the Live tab's change
    every few seconds)."""
    script = ("return [...document.querySelectorAll(arguments[0])].map(m => [m.getAttribute('aria-label'), "
              "m.value])")
    return {label: float(value) for label, value in driver.execute_script(script, f"{component} meter")}


def screenshot(driver, name):
    """docs/<name> when AFFECTVERSE_SCREENSHOTS names a folder (relative: to the repository): the whole page."""
    folder = os.environ.get("AFFECTVERSE_SCREENSHOTS")
    if not folder:
        return
    folder = ROOT / folder if not Path(folder).is_absolute() else Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return Math.max(document.body.scrollHeight, document.documentElement.scrollHeight)")
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {"width": 1280, "height": height,
                                                                   "deviceScaleFactor": 1, "mobile": False})
    time.sleep(1)
    driver.save_screenshot(str(folder / name))
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def open_page(driver, url):
    driver.get(url)
    wait_for(driver, lambda d: css(d, "#clip-run"), what="the page to load")


def test_browser_clip_tab_uploads_reads_and_shows_messages(server, browser, loaded, media, model_folder):
    open_page(browser, server)
    labels = demo.parse_labels(css(browser, "#labels textarea, #labels input")[0].get_attribute("value"))
    assert labels == (demo.trained_labels(str(model_folder)) or list(demo.DEFAULT_LABELS))
    css(browser, "#clip-video input[type=file]")[0].send_keys(str(media["clip"]))
    wait_for(browser, lambda d: css(d, "#clip-video video[src]"), what="the uploaded clip")
    css(browser, "#clip-subtitle textarea")[0].send_keys(SUBTITLE)
    css(browser, "#clip-run")[0].click()
    wait_for(browser, lambda d: css(d, "#clip-answer textarea")[0].get_attribute("value"), what="the answer")
    reference = engine_result(loaded, media["clip"], labels)
    assert css(browser, "#clip-answer textarea")[0].get_attribute("value") == reference["answer"]
    assert meters(browser, "#clip-scores") == pytest.approx(reference["label_scores"], abs=1e-4)
    assert f"Read {media['clip'].name} (3.0 s, video and audio)" in css(browser, "#clip-status")[0].text
    wait_for(browser, lambda d: css(d, "#clip-attention img"), what="the attention figure")
    screenshot(browser, "demo_clip.png")

    css(browser, "#clip-video button[aria-label='Clear']")[0].click()
    css(browser, "#clip-video input[type=file]")[0].send_keys(str(media["corrupt"]))
    time.sleep(1)
    css(browser, "#clip-run")[0].click()
    toast = wait_for(browser, lambda d: [t.text for t in css(d, "[data-testid=toast-text]") if "demo" in t.text],
                     what="the error message")
    assert toast[0].startswith("corrupt.mp4 is not a video this demo can read")


def test_browser_records_a_clip_from_the_fake_camera(server, browser):
    """The Clip tab's webcam source: a MediaRecorder webm (no frame count) is re-encoded and read."""
    open_page(browser, server)
    css(browser, "#clip-video button[aria-label='Capture from camera']")[0].click()
    wait_for(browser, lambda d: [b for b in css(d, "#clip-video button") if b.text == "Click to Access Webcam"])[0] \
        .click()
    record = wait_for(browser, lambda d: css(d, "#clip-video button.capture-button"), what="the record button")[0]
    record.click()
    time.sleep(2.5)
    record.click()
    wait_for(browser, lambda d: css(d, "#clip-video video[src]"), what="the recording")
    css(browser, "#clip-run")[0].click()
    status = wait_for(browser, lambda d: css(d, "#clip-status")[0].text, what="the reading")
    found = re.match(r"Read \S+\.mp4 \((\d+\.\d) s, video and audio\) at 10 observation ratios", status)
    assert found and 1.0 <= float(found.group(1)) <= 3.5, status  # about the 2.5 s recorded
    assert len(meters(browser, "#clip-scores")) == len(demo.parse_labels(
        css(browser, "#labels textarea, #labels input")[0].get_attribute("value")))


@pytest.mark.slow
def test_browser_live_tab_streams_the_fake_camera_and_microphone(server, browser):
    open_page(browser, server)
    labels = demo.parse_labels(css(browser, "#labels textarea, #labels input")[0].get_attribute("value"))
    css(browser, "#tab-live-button")[0].click()
    wait_for(browser, lambda d: css(d, "#live-camera div[title='grant webcam access'] button"))[0].click()
    wait_for(browser, lambda d: css(d, "#live-camera button.capture-button"), what="the webcam")[0].click()
    css(browser, "#live-microphone button.record-button")[0].click()
    status = wait_for(browser, lambda d: re.search(r"Reading ([3-9]|\d\d+) at", css(d, "#live-status")[0].text)
                      and css(d, "#live-status")[0].text, timeout=90, what="three live readings")
    # one reading per completed 2 s chunk of the live session, reading both sources from the stream's start
    assert re.search(r"Reading \d+ at \d*[02468]\.0 s of stream: .* \(webcam and microphone, read from 0 s on\)",
                     status), status
    assert css(browser, "#live-answer textarea")[0].get_attribute("value")
    scores = meters(browser, "#live-scores")
    assert sorted(scores) == sorted(labels) and sum(scores.values()) == pytest.approx(1, abs=1e-3)
    assert not css(browser, "#live-timeline [aria-label='Empty value']")
    screenshot(browser, "demo_live.png")
