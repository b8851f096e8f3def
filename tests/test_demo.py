"""The web demo: API tests against a real uvicorn server on a loopback port, and an end-to-end test in headless
Chromium (upload an image, move the token slider, see a new reconstruction; generate when a generator exists).

The browser test needs the Debian packages ``chromium`` and ``chromium-driver`` (and the pip package selenium);
it is skipped only when chromium or its driver is not installed.
"""

from __future__ import annotations

import http.client
import io
import json
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flexitok import DecodeConfig, GenerationPipeline
from flexitok.models.flextok import FlexTok
from flexitok.models.generator import Generator, generator_preset
from tests.conftest import tiny_model

# The demo is an optional extra: without it these tests skip (collection still works), with it they run.
DEMO_EXTRA = "the web demo needs the [demo] extra (fastapi, uvicorn): pip install 'flexitok[demo]'"
pytest.importorskip("fastapi", reason=DEMO_EXTRA)
uvicorn = pytest.importorskip("uvicorn", reason=DEMO_EXTRA)

from flexitok.demo import DemoConfig, create_app  # noqa: E402
from flexitok.demo.app import decode_data_url  # noqa: E402
from flexitok.demo.generation import ARGeneratorBackend  # noqa: E402

MAX_UPLOAD = 64 * 1024


def _find_chromium() -> str | None:
    for candidate in ("/usr/lib/chromium/chromium", "chromium", "chromium-browser", "google-chrome"):
        path = candidate if Path(candidate).is_file() else shutil.which(candidate)
        if path:
            return path
    return None


CHROMIUM = _find_chromium()
CHROMEDRIVER = shutil.which("chromedriver") or (
    "/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").is_file() else None
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Server:
    """A uvicorn server in a daemon thread on a free loopback port."""

    def __init__(self, app) -> None:
        self.port = _free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the demo server did not start")
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> FlexTok:
    # Through save_pretrained/from_pretrained, like `flexitok demo --model DIR`.
    folder = tmp_path_factory.mktemp("demo-model") / "tiny"
    tiny_model().save_pretrained(folder)
    return FlexTok.from_pretrained(folder)


@pytest.fixture(scope="module")
def server(model: FlexTok) -> Iterator[_Server]:
    config = DemoConfig(
        model_name="tiny-test", max_upload_bytes=MAX_UPLOAD, decode=DecodeConfig(steps=3), skimage_samples=("coffee",)
    )
    s = _Server(create_app(model, config))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def gen_server(model: FlexTok) -> Iterator[_Server]:
    torch.manual_seed(0)
    cfg = generator_preset(
        "tiny", vocab_size=model.vocab_size, n_tokens=model.n_registers, num_classes=3, class_names=("a", "b", "c")
    )
    backend = ARGeneratorBackend(Generator(cfg).eval(), model)
    s = _Server(create_app(model, DemoConfig(model_name="tiny-gen", decode=DecodeConfig(steps=3)), backend))
    yield s
    s.stop()


def _png_bytes(size: tuple[int, int] = (40, 30), seed: int = 0) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _request(url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _upload(base: str, data: bytes, filename: str = "x.png", content_type: str = "image/png") -> tuple[int, dict]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return _request(f"{base}/api/images", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})


# ---------------------------------------------------------------------------- API
def test_info_and_index(server: _Server) -> None:
    status, info = _request(f"{server.url}/api/info")
    assert status == 200
    assert info["n_registers"] == 16 and info["image_size"] == [32, 32] and info["bits_per_token"] == 16
    assert info["max_upload_bytes"] == MAX_UPLOAD and info["generator"] is None and info["model"] == "tiny-test"
    with urllib.request.urlopen(server.url + "/", timeout=30) as r:
        html = r.read().decode()
    assert 'id="k"' in html and "/static/app.js" in html
    with urllib.request.urlopen(server.url + "/static/app.js", timeout=30) as r:
        assert b"/api/images" in r.read()


def test_upload_and_reconstruct(server: _Server, model: FlexTok) -> None:
    status, out = _upload(server.url, _png_bytes())
    assert status == 200, out
    assert "center-cropped" in out["note"] and "resized" in out["note"]
    assert decode_data_url(out["original"]).size == (32, 32)
    results = {}
    for k in (1, 16):
        status, rec = _request(f"{server.url}/api/images/{out['id']}/reconstruction?k={k}&seed=1")
        assert status == 200, rec
        assert rec["k"] == k and rec["ftok_bytes"] > 2 * k and np.isfinite(rec["psnr"])
        results[k] = np.asarray(decode_data_url(rec["image"]).convert("RGB"))
        assert results[k].shape == (32, 32, 3)
    assert not np.array_equal(results[1], results[16])
    # Cached and deterministic: the same request gives the same image.
    _, again = _request(f"{server.url}/api/images/{out['id']}/reconstruction?k=1&seed=1")
    assert np.array_equal(np.asarray(decode_data_url(again["image"]).convert("RGB")), results[1])


def test_bad_requests(server: _Server) -> None:
    _, out = _upload(server.url, _png_bytes(seed=1))
    status, body = _request(f"{server.url}/api/images/{out['id']}/reconstruction?k=17")
    assert status == 400 and "1..16" in body["detail"]
    status, body = _request(f"{server.url}/api/images/deadbeef/reconstruction?k=1")
    assert status == 404 and "upload again" in body["detail"]
    status, body = _request(f"{server.url}/api/samples/nope", b"")
    assert status == 404 and "coffee" in body["detail"]
    status, body = _request(
        f"{server.url}/api/generate", json.dumps({"k": 4}).encode(), {"Content-Type": "application/json"}
    )
    assert status == 404 and "generator" in body["detail"]
    status, body = _request(f"{server.url}/api/images", b"raw bytes", {"Content-Type": "image/png"})
    assert status == 400 and "multipart" in body["detail"]


def test_oversized_upload_is_413(server: _Server) -> None:
    big = _png_bytes((200, 200))  # random pixels do not compress: ~120 KB > 64 KiB
    assert len(big) > MAX_UPLOAD
    status, body = _upload(server.url, big)
    assert status == 413 and "too large" in body["detail"] and "64.0 KiB" in body["detail"]
    # A body far over the limit is refused from its Content-Length alone.
    status, body = _upload(server.url, bytes(MAX_UPLOAD * 4))
    assert status == 413 and "too large" in body["detail"]


def test_oversized_chunked_upload_is_413(server: _Server) -> None:
    # No Content-Length: the server counts the bytes as they stream in.
    boundary = "b" * 16
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    chunks = [head] + [bytes(32 * 1024)] * 12 + [f"\r\n--{boundary}--\r\n".encode()]
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request(
        "POST",
        "/api/images",
        body=iter(chunks),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        encode_chunked=True,
    )
    resp = conn.getresponse()
    body = json.loads(resp.read())
    conn.close()
    assert resp.status == 413 and "too large" in body["detail"]


def test_non_image_uploads_are_415(server: _Server) -> None:
    status, body = _upload(server.url, b"just some notes\n", "notes.txt", "text/plain")
    assert status == 415 and "notes.txt" in body["detail"] and "text/plain" in body["detail"]
    # Claims to be a PNG but is not one.
    status, body = _upload(server.url, b"not really a png", "fake.png", "image/png")
    assert status == 415 and "fake.png" in body["detail"] and "not an image" in body["detail"]
    # A truncated PNG.
    status, body = _upload(server.url, _png_bytes()[:200], "cut.png", "image/png")
    assert status == 415 and "cut.png" in body["detail"]
    status, body = _upload(server.url, b"", "empty.png", "image/png")
    assert status == 400 and "empty" in body["detail"]


def test_sample_images(server: _Server) -> None:
    pytest.importorskip("skimage", reason="the sample photos come from scikit-image (the [demo] extra)")
    _, info = _request(f"{server.url}/api/info")
    assert info["samples"] == ["coffee"]
    status, out = _request(f"{server.url}/api/samples/coffee", b"")
    assert status == 200 and out["note"].startswith("sample coffee")
    assert decode_data_url(out["original"]).size == (32, 32)


def test_generation_api(gen_server: _Server) -> None:
    _, info = _request(f"{gen_server.url}/api/info")
    assert info["generator"] == {"condition": "class", "class_names": ["a", "b", "c"], "max_tokens": 16}
    headers = {"Content-Type": "application/json"}
    images = []
    for k in (2, 2, 8):
        body = json.dumps({"k": k, "seed": 4, "class_index": 1}).encode()
        status, out = _request(f"{gen_server.url}/api/generate", body, headers)
        assert status == 200 and out["k"] == k
        images.append(np.asarray(decode_data_url(out["image"]).convert("RGB")))
    assert images[0].shape == (32, 32, 3)
    assert np.array_equal(images[0], images[1])  # seeded
    status, out = _request(f"{gen_server.url}/api/generate", json.dumps({"k": 2, "class_index": 7}).encode(), headers)
    assert status == 400 and "0..2" in out["detail"]
    status, out = _request(f"{gen_server.url}/api/generate", json.dumps({"k": 99, "class_index": 0}).encode(), headers)
    assert status == 400 and "1..16" in out["detail"]


def test_generation_panel_is_the_pipeline(model: FlexTok, one_thread: None) -> None:
    # A demo request is row 0 of the GenerationPipeline seeded with the request's seed (as `flexitok generate`).
    torch.manual_seed(0)
    cfg = generator_preset("tiny", vocab_size=model.vocab_size, n_tokens=model.n_registers, num_classes=3)
    gen = Generator(cfg).eval()
    decode = DecodeConfig(steps=2, guidance_scale=2.0)
    image = ARGeneratorBackend(gen, model, decode, cfg_scale=2.5).generate(6, 9, 1, None)
    pipe = GenerationPipeline(gen, model)
    from flexitok import ARSamplingConfig

    out = pipe(
        labels=[1],
        n_tokens=6,
        sampling=ARSamplingConfig(guidance_scale=2.5),
        decode=DecodeConfig(steps=2, guidance_scale=2.0, seed=9),
    )
    assert torch.equal(image, out.images[0])


# ---------------------------------------------------------------------------- browser
CHROME_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1200,1000",
)


@pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="headless browser test needs the Debian packages chromium and chromium-driver",
)
def test_browser_upload_slider_and_generate(server: _Server, gen_server: _Server, tmp_path: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    options = Options()
    options.binary_location = CHROMIUM  # type: ignore[assignment]
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chrome-profile'}")
    image_path = tmp_path / "upload.png"
    image_path.write_bytes(_png_bytes((48, 48), seed=3))

    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        wait = WebDriverWait(driver, 60)
        driver.get(server.url + "/")
        wait.until(lambda d: "tiny-test" in d.find_element(By.ID, "model-info").text)
        assert not driver.find_element(By.ID, "generate-panel").is_displayed()

        recon = driver.find_element(By.ID, "reconstruction")
        driver.find_element(By.ID, "file").send_keys(str(image_path))
        wait.until(lambda d: recon.get_attribute("data-k") == "16")
        first_src = recon.get_attribute("src")
        assert first_src.startswith("data:image/png;base64,")
        assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", recon) == 32
        original = driver.find_element(By.ID, "original")
        assert driver.execute_script("return arguments[0].naturalWidth", original) == 32

        # Move the slider with the keyboard, as a user would: Home jumps to k = 1.
        slider = driver.find_element(By.ID, "k")
        slider.click()
        slider.send_keys(Keys.HOME)
        assert slider.get_attribute("value") == "1"
        wait.until(lambda d: recon.get_attribute("data-k") == "1")
        assert recon.get_attribute("src") != first_src
        assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", recon) == 32
        assert "1 tokens" in driver.find_element(By.ID, "recon-caption").text
        assert driver.find_element(By.ID, "k-value").text == "1"
        assert "error" not in (driver.find_element(By.ID, "status").get_attribute("class") or "")

        # The optional generation panel appears when the server has a generator.
        driver.get(gen_server.url + "/")
        panel = driver.find_element(By.ID, "generate-panel")
        wait.until(lambda d: panel.is_displayed())
        gen_k = driver.find_element(By.ID, "gen-k")
        gen_k.click()
        gen_k.send_keys(Keys.HOME)
        driver.find_element(By.ID, "gen-button").click()
        generated = driver.find_element(By.ID, "generated")
        wait.until(lambda d: generated.get_attribute("data-k") == "1")
        assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", generated) == 32
    finally:
        driver.quit()
