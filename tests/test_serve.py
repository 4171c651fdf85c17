"""``python -m infer.serve`` in a real browser (issue 17): headless Chromium (Debian's ``chromium`` and
``chromium-driver``) driven by selenium loads the page, starts from a sandbox view, holds keys, receives
frames of the session's size, downloads a playable MP4 and its sidecar; a second tab runs in parallel from
an uploaded image; closing a tab frees its session; bad requests get clear errors and the server lives on."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import av
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
H, W = 32, 48
INSTALL = "apt-get update && apt-get install -y chromium chromium-driver"


def test_keys_to_action_follows_the_keyboard_grammar():
    from infer.serve import keys_to_action

    assert keys_to_action([]) == "still" and keys_to_action(["w", "ArrowRight"]) == "W+→"
    assert keys_to_action(["W", "S", "a"]) == "A"  # opposite keys cancel
    with pytest.raises(ValueError, match="unknown key"):
        keys_to_action(["q"])


def _browser_paths():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.fail(f"the browser test needs Debian's Chromium and its driver on PATH: {INSTALL} (as root)")
    return chromium, driver


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url):
    with urllib.request.urlopen(url, timeout=60) as r:
        return r.read()


def _post(url, body: bytes, ctype: str):
    req = urllib.request.Request(url, data=body, headers={"Content-Type": ctype}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _wait(cond, timeout, what):
    t0 = time.time()
    while time.time() - t0 < timeout:
        v = cond()
        if v:
            return v
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The server on a free port with the explorer's default model (the tiny random pipeline, written into a
    temporary $YUME_JAX_CACHE) at a tiny resolution, 1 step, no CFG."""
    tmp = tmp_path_factory.mktemp("serve")
    port = _free_port()
    # (XLA's optimisations off: at this size the server's time is its compiles, not its programs' run time)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "YUME_JAX_CACHE": str(tmp / "cache"),
           "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}
    log = open(tmp / "server.log", "w+")
    p = subprocess.Popen([sys.executable, "-m", "infer.serve", "--port", str(port), "--height", str(H), "--width",
                          str(W), "--chunk-frames", "1", "--steps", "1", "--cfg", "1", "--history-buckets", "5,7"],
                         cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def up():
        if p.poll() is not None:
            log.seek(0)
            raise AssertionError(f"server exited {p.returncode}: {log.read()[-3000:]}")
        try:
            return json.loads(_get(url + "/api/status"))
        except OSError:
            return None

    _wait(up, 600, "the server to start")
    yield url, p
    p.terminate()
    p.wait(timeout=30)
    log.close()


@pytest.mark.slow
def test_browser_explores_downloads_and_frees_sessions(server, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    url, proc = server
    chromium, driver_path = _browser_paths()
    # bad requests: clear errors, the server lives on
    assert _post(url + "/api/sessions", b"not an image", "image/png")[0] == 400
    code, body = _post(url + "/api/sessions", b'{"start": "moon"}', "application/json")
    assert code == 400 and "sandbox" in body["error"]
    with pytest.raises(urllib.error.HTTPError) as e:
        _get(url + "/api/sessions/nope/video.mp4")
    assert e.value.code == 404 and "unknown session" in json.loads(e.value.read())["error"]

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=900,820"):
        opts.add_argument(arg)
    d = webdriver.Chrome(service=Service(driver_path), options=opts)
    try:
        d.get(url)
        yume = lambda: d.execute_script("return window.yume")  # noqa: E731
        d.find_element(By.ID, "sandbox").click()
        _wait(lambda: yume()["frames"] >= 1, 600, "the start frame")
        ActionChains(d).key_down("w").key_down("d").perform()
        # (a chunk's message precedes its frames, and its status message follows them)
        _wait(lambda: yume()["frames"] >= 1 + 4 * 2 and (yume()["status"] or {}).get("chunks", 0) >= 2, 600,
              "two chunks with W+D held")
        ActionChains(d).key_up("w").key_up("d").perform()
        state = yume()
        assert state["lastSize"] == [W, H] and state["frames"] >= 1 + 4 * 2
        assert state["status"]["history_frames"] >= 5 and "s/chunk" in d.find_element(By.ID, "status").text
        # a bad key over the WebSocket: an error message, the session carries on
        d.execute_script('window.yume.ws.send(JSON.stringify({keys: ["q"]}))')
        _wait(lambda: any("unknown key" in e for e in yume()["errors"]), 60, "the bad-key error")
        first = d.current_window_handle
        sid = state["sid"]

        # a second tab in parallel, from an uploaded image
        png = tmp_path / "start.png"
        from PIL import Image

        Image.fromarray((np.random.default_rng(0).random((40, 56, 3)) * 255).astype(np.uint8)).save(png)
        d.switch_to.new_window("tab")
        d.get(url)
        d.find_element(By.ID, "file").send_keys(str(png))
        d.find_element(By.ID, "upload").click()
        _wait(lambda: yume()["frames"] >= 1 + 4 and yume()["status"], 600, "the second tab's first chunk")
        assert yume()["lastSize"] == [W, H] and yume()["sid"] != sid
        assert json.loads(_get(url + "/api/status"))["sessions"] == 2
        second = d.current_window_handle

        # download the first tab's sidecar and MP4 (the page's links): playable, every frame written (the tab
        # keeps streaming and the server writes the MP4 before the sidecar, so the MP4 fetched second holds
        # at least the sidecar's frames, and whole chunks)
        d.switch_to.window(first)
        side = json.loads(_get(d.find_element(By.ID, "json").get_attribute("href")))
        mp4 = tmp_path / "video.mp4"
        mp4.write_bytes(_get(d.find_element(By.ID, "mp4").get_attribute("href")))
        with av.open(str(mp4)) as c:
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        assert len(frames) >= side["frames"] >= 17 + 4 * 2 and (len(frames) - 17) % 4 == 0
        assert frames[0].shape == (H, W, 3)
        assert side["chunks"][0]["action"] and "critical_path_s" in side["chunks"][0]
        shot = tmp_path / "serve.png"
        d.save_screenshot(str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if os.environ.get("YUME_JAX_SERVE_SCREENSHOT"):  # README's docs/serve.png
            shutil.copy(shot, os.environ["YUME_JAX_SERVE_SCREENSHOT"])

        # closing a tab frees its session; the other keeps going
        d.switch_to.window(second)
        d.close()
        d.switch_to.window(first)
        _wait(lambda: json.loads(_get(url + "/api/status"))["sessions"] == 1, 120, "the closed tab's session freed")
        n = yume()["chunks"]
        _wait(lambda: yume()["chunks"] > n, 300, "the first tab to keep streaming")
    finally:
        d.quit()
    assert proc.poll() is None  # the server survived everything
