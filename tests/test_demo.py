"""The web demo: API tests against a real uvicorn server on a loopback port, and end-to-end tests in headless
Chromium (the page opens on a reconstructed sample with its coarse-to-fine strip; upload an image, move the token
slider, see a new reconstruction; switch tokenizers; generate when a generator exists).

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
from flexitok.config import tiny_config
from flexitok.errors import InvalidInputError
from flexitok.models.flextok import FlexTok
from flexitok.models.generator import Generator, generator_preset
from tests.conftest import tiny_model

# The demo is an optional extra: without it these tests skip (collection still works), with it they run.
DEMO_EXTRA = "the web demo needs the [demo] extra (fastapi, uvicorn): pip install 'flexitok[demo]'"
pytest.importorskip("fastapi", reason=DEMO_EXTRA)
uvicorn = pytest.importorskip("uvicorn", reason=DEMO_EXTRA)

from flexitok.demo import DemoConfig, DemoModel, create_app  # noqa: E402
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


def _small_model() -> FlexTok:
    """A second tiny tokenizer that differs from ``model`` in size and token count (16x16, 8 registers)."""
    torch.manual_seed(1)
    small = FlexTok(tiny_config(image_size=16, n_registers=8)).eval()
    with torch.no_grad():
        for p in small.parameters():
            if not p.abs().any():
                p.normal_(0, 0.05)
    return small


@pytest.fixture(scope="module")
def multi_server(model: FlexTok, tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Server]:
    """Two tokenizers with their own samples; the first also has a generator."""
    samples = tmp_path_factory.mktemp("demo-samples")
    for i, name in enumerate(("b.png", "a.png")):
        Image.open(io.BytesIO(_png_bytes((40, 40), seed=10 + i))).save(samples / name)
    cfg = generator_preset("tiny", vocab_size=model.vocab_size, n_tokens=model.n_registers, num_classes=2)
    torch.manual_seed(0)
    backend = ARGeneratorBackend(Generator(cfg).eval(), model)
    served = [
        DemoModel("big", model, samples_dir=samples, skimage_samples=(), generator=backend),
        DemoModel("small", _small_model(), samples_dir=samples, skimage_samples=(), decode=DecodeConfig(steps=2)),
    ]
    s = _Server(create_app(served, DemoConfig(decode=DecodeConfig(steps=3))))
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


def _upload(
    base: str, data: bytes, filename: str = "x.png", content_type: str = "image/png", query: str = ""
) -> tuple[int, dict]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return _request(f"{base}/api/images{query}", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})


# ---------------------------------------------------------------------------- API
def test_info_and_index(server: _Server) -> None:
    status, info = _request(f"{server.url}/api/info")
    assert status == 200
    assert info["n_registers"] == 16 and info["image_size"] == [32, 32] and info["bits_per_token"] == 16
    assert info["max_upload_bytes"] == MAX_UPLOAD and info["generator"] is None and info["model"] == "tiny-test"
    assert info["models"] == ["tiny-test"] and info["strip_ks"] == [1, 2, 4, 8, 16]
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


def test_strip_is_every_k_of_the_ladder(server: _Server) -> None:
    _, out = _upload(server.url, _png_bytes(seed=5))
    status, strip = _request(f"{server.url}/api/images/{out['id']}/strip?seed=2")
    assert status == 200, strip
    assert strip["ks"] == [1, 2, 4, 8, 16] and [r["k"] for r in strip["reconstructions"]] == strip["ks"]
    images = [np.asarray(decode_data_url(r["image"]).convert("RGB")) for r in strip["reconstructions"]]
    assert all(im.shape == (32, 32, 3) for im in images)
    assert not np.array_equal(images[0], images[-1])
    sizes = [r["ftok_bytes"] for r in strip["reconstructions"]]
    assert sizes == sorted(sizes) and sizes[-1] - sizes[0] == 15 * 2  # 16 bits per extra token
    # The slider's reconstruction at a strip k is the same image (same tokens, seed and settings).
    _, rec = _request(f"{server.url}/api/images/{out['id']}/reconstruction?k=4&seed=2")
    assert rec == strip["reconstructions"][2]
    status, body = _request(f"{server.url}/api/images/deadbeef/strip")
    assert status == 404 and "upload again" in body["detail"]


def test_two_models_each_with_its_own_size_samples_and_generator(multi_server: _Server) -> None:
    url = multi_server.url
    _, big = _request(f"{url}/api/info")
    _, small = _request(f"{url}/api/info?model=small")
    assert big["models"] == small["models"] == ["big", "small"]
    assert (big["model"], big["n_registers"], big["image_size"], big["strip_ks"]) == (
        "big",
        16,
        [32, 32],
        [1, 2, 4, 8, 16],
    )
    assert (small["model"], small["n_registers"], small["image_size"], small["strip_ks"]) == (
        "small",
        8,
        [16, 16],
        [1, 2, 4, 8],
    )
    assert big["samples"] == small["samples"] == ["a.png", "b.png"]
    assert big["generator"]["max_tokens"] == 16 and small["generator"] is None
    # An image stays with the tokenizer that tokenized it: its size, its k range, its strip.
    status, out = _request(f"{url}/api/samples/a.png?model=small", b"")
    assert status == 200 and out["model"] == "small" and decode_data_url(out["original"]).size == (16, 16)
    _, strip = _request(f"{url}/api/images/{out['id']}/strip")
    assert strip["ks"] == [1, 2, 4, 8]
    assert decode_data_url(strip["reconstructions"][0]["image"]).size == (16, 16)
    status, body = _request(f"{url}/api/images/{out['id']}/reconstruction?k=16")
    assert status == 400 and "1..8" in body["detail"]
    status, up = _upload(f"{url}", _png_bytes(seed=7))
    assert status == 200 and up["model"] == "big" and decode_data_url(up["original"]).size == (32, 32)
    status, up = _upload(url, _png_bytes(), query="?model=small")
    assert status == 200 and up["model"] == "small" and decode_data_url(up["original"]).size == (16, 16)
    headers = {"Content-Type": "application/json"}
    status, body = _request(f"{url}/api/generate", json.dumps({"model": "small", "k": 2}).encode(), headers)
    assert status == 404 and "no generator" in body["detail"]
    status, gen = _request(
        f"{url}/api/generate", json.dumps({"model": "big", "k": 2, "class_index": 1}).encode(), headers
    )
    assert status == 200 and decode_data_url(gen["image"]).size == (32, 32)
    for path in ("/api/info?model=nope", "/api/samples/a.png?model=nope"):
        status, body = _request(url + path, b"" if "samples" in path else None)
        assert status == 404 and "big, small" in body["detail"], path


def test_create_app_refuses_bad_model_lists(model: FlexTok) -> None:
    with pytest.raises(InvalidInputError, match="unique"):
        create_app([DemoModel("a", model), DemoModel("a", model)])
    with pytest.raises(InvalidInputError, match="non-empty"):
        create_app([])
    with pytest.raises(InvalidInputError, match="its own generator"):
        create_app([DemoModel("a", model)], generator=object())  # type: ignore[arg-type]


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


needs_browser = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="headless browser test needs the Debian packages chromium and chromium-driver",
)
# Where the browser tests save their screenshots: a temporary folder, or (to refresh the ones in the docs)
# FLEXITOK_DEMO_SCREENSHOTS=docs/images.
SCREENSHOTS_ENV = "FLEXITOK_DEMO_SCREENSHOTS"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM  # type: ignore[assignment]
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chrome-profile'}")
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _loaded_width(driver, element) -> int:
    return driver.execute_script("return arguments[0].complete ? arguments[0].naturalWidth : 0", element)


def _strip_ready(driver, n: int, width: int) -> bool:
    """The strip shows ``n`` decoded images of ``width`` pixels."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    images = driver.find_elements(By.CSS_SELECTOR, "#strip figure img")
    try:
        return len(images) == n and all(_loaded_width(driver, im) == width for im in images)
    except StaleElementReferenceException:  # the page re-rendered the strip between the two calls: not ready yet
        return False


def _screenshot(driver, tmp_path: Path, name: str) -> Path:
    import os

    folder = Path(os.environ.get(SCREENSHOTS_ENV) or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    assert driver.save_screenshot(str(path))
    with Image.open(path) as im:
        assert im.size[0] >= 800
    return path


@needs_browser
def test_browser_opens_on_a_reconstructed_sample_and_switches_models(
    multi_server: _Server, browser, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    driver, wait = browser, WebDriverWait(browser, 60)
    driver.get(multi_server.url + "/")
    recon = driver.find_element(By.ID, "reconstruction")
    # Before any click: the first model's first sample, reconstructed from all 16 tokens, beside every k at once.
    wait.until(lambda d: recon.get_attribute("data-k") == "16" and _strip_ready(d, 5, 32))
    assert _loaded_width(driver, recon) == 32 and _loaded_width(driver, driver.find_element(By.ID, "original")) == 32
    assert Select(driver.find_element(By.ID, "sample")).first_selected_option.text == "a.png"
    captions = [f.text for f in driver.find_elements(By.CSS_SELECTOR, "#strip figcaption")]
    assert [c.splitlines()[0] for c in captions] == ["k=1", "k=2", "k=4", "k=8", "k=16"]
    picker = driver.find_element(By.ID, "model")
    assert driver.find_element(By.ID, "model-picker").is_displayed()
    assert [o.text for o in Select(picker).options] == ["big", "small"]
    assert driver.find_element(By.ID, "generate-panel").is_displayed()
    assert driver.find_element(By.CSS_SELECTOR, "#strip figure.current").get_attribute("data-k") == "16"
    _screenshot(driver, tmp_path, "demo_tiny_first_screen.png")

    # A strip image is a shortcut for the slider.
    driver.find_elements(By.CSS_SELECTOR, "#strip figure")[1].click()
    wait.until(lambda d: recon.get_attribute("data-k") == "2")
    assert driver.find_element(By.ID, "k").get_attribute("value") == "2"

    # Picking the other tokenizer reloads its facts and opens on its first sample, at its size and k ladder.
    Select(picker).select_by_visible_text("small")
    wait.until(lambda d: "model small" in d.find_element(By.ID, "model-info").text)
    wait.until(lambda d: recon.get_attribute("data-k") == "8" and _strip_ready(d, 4, 16))
    assert _loaded_width(driver, recon) == 16
    assert driver.find_element(By.ID, "k").get_attribute("max") == "8"
    assert not driver.find_element(By.ID, "generate-panel").is_displayed()
    assert "error" not in (driver.find_element(By.ID, "status").get_attribute("class") or "")


@needs_browser
def test_browser_upload_slider_and_generate(server: _Server, gen_server: _Server, browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    image_path = tmp_path / "upload.png"
    image_path.write_bytes(_png_bytes((48, 48), seed=3))
    driver, wait = browser, WebDriverWait(browser, 60)
    driver.get(server.url + "/")
    wait.until(lambda d: "tiny-test" in d.find_element(By.ID, "model-info").text)
    assert not driver.find_element(By.ID, "generate-panel").is_displayed()
    assert not driver.find_element(By.ID, "model-picker").is_displayed()  # one model: no picker
    recon = driver.find_element(By.ID, "reconstruction")
    opened_on = recon.get_attribute("data-image")  # the sample the page opened on (none without scikit-image)

    driver.find_element(By.ID, "file").send_keys(str(image_path))
    wait.until(lambda d: recon.get_attribute("data-image") not in (None, opened_on))
    wait.until(lambda d: recon.get_attribute("data-k") == "16" and _strip_ready(d, 5, 32))
    first_src = recon.get_attribute("src")
    assert first_src.startswith("data:image/png;base64,")
    assert _loaded_width(driver, recon) == 32
    assert _loaded_width(driver, driver.find_element(By.ID, "original")) == 32

    # Move the slider with the keyboard, as a user would: Home jumps to k = 1.
    slider = driver.find_element(By.ID, "k")
    slider.click()
    slider.send_keys(Keys.HOME)
    assert slider.get_attribute("value") == "1"
    wait.until(lambda d: recon.get_attribute("data-k") == "1")
    assert recon.get_attribute("src") != first_src
    assert _loaded_width(driver, recon) == 32
    assert "1 tokens" in driver.find_element(By.ID, "recon-caption").text
    assert driver.find_element(By.ID, "k-value").text == "1"
    assert driver.find_element(By.CSS_SELECTOR, "#strip figure.current").get_attribute("data-k") == "1"
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
    assert _loaded_width(driver, generated) == 32


@pytest.mark.slow  # real models at the demo's decoder defaults: tens of seconds on a CPU
@needs_browser
def test_browser_bundled_models_first_screen_and_photo(browser, tmp_path: Path, one_thread: None) -> None:
    """What `flexitok demo` serves by default: the bundled `default` and `photo` tokenizers with their samples.
    Saves the screenshots shown in the README (FLEXITOK_DEMO_SCREENSHOTS=docs/images to refresh them)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from flexitok.cli.demo import default_models
    from flexitok.cli.quickstart import PHOTO_SAMPLES, SAMPLES

    assert default_models() == ["default", "photo"]
    default, photo = FlexTok.from_pretrained("default"), FlexTok.from_pretrained("photo")
    served = [
        DemoModel("default", default, samples_dir=SAMPLES),
        DemoModel("photo", photo, samples_dir=PHOTO_SAMPLES, skimage_samples=()),
    ]
    s = _Server(create_app(served, DemoConfig(decode=DecodeConfig())))  # the demo's decoder defaults
    try:
        driver, wait = browser, WebDriverWait(browser, 120)
        driver.get(s.url + "/")
        recon = driver.find_element(By.ID, "reconstruction")
        n, size = default.n_registers, default.image_size[0]
        ladder = len(_request(f"{s.url}/api/info")[1]["strip_ks"])
        wait.until(lambda d: recon.get_attribute("data-k") == str(n) and _strip_ready(d, ladder, size))
        assert (
            Select(driver.find_element(By.ID, "sample")).first_selected_option.text
            == sorted(p.name for p in SAMPLES.glob("*.png"))[0]
        )
        _screenshot(driver, tmp_path, "demo_first_screen.png")

        Select(driver.find_element(By.ID, "model")).select_by_visible_text("photo")
        n, size = photo.n_registers, photo.image_size[0]
        ladder = len(_request(f"{s.url}/api/info?model=photo")[1]["strip_ks"])
        wait.until(lambda d: recon.get_attribute("data-k") == str(n) and _strip_ready(d, ladder, size))
        assert _loaded_width(driver, recon) == size
        options = [o.text for o in Select(driver.find_element(By.ID, "sample")).options]
        assert options[1:] == sorted(p.name for p in PHOTO_SAMPLES.glob("*.png"))  # held-out photos only
        assert "error" not in (driver.find_element(By.ID, "status").get_attribute("class") or "")
        _screenshot(driver, tmp_path, "demo_photo.png")
    finally:
        s.stop()
