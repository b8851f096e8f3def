"""Property-based fuzzing of the webdataset reader (issue 22.1): random tar shards with broken images, labels,
members and shard indexes, one pass or resampled. Every run must yield exactly the good samples, or stop with a
``DatasetError`` when anything was skipped (the default ``max_skip_ratio`` is 1%); never another exception, never a
hang. Outcomes go to the fuzz tally (tests/fuzz_support.py) under "webdataset shards"."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flexitok.data.transforms import ImageTransform
from flexitok.data.webdataset import SHARD_INDEX, WebDatasetShards
from flexitok.errors import DatasetError
from tests.fuzz_support import Hang, alarm, budget, record
from tests.test_data_webdataset_faults import _tar

hypothesis = pytest.importorskip("hypothesis")
pytest.importorskip("webdataset")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FUZZ = settings.get_profile("fuzz")
CLASSES = ["a", "b", "c"]


def _encoded(seed: int, fmt: str) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


GOOD_IMAGES = {"png": _encoded(0, "PNG"), "jpg": _encoded(1, "JPEG")}
# image kind -> (member extension or None, payload or None for a symlink, decodes)
IMAGE_KINDS = {
    "png": ("png", GOOD_IMAGES["png"], True),
    "jpg": ("jpg", GOOD_IMAGES["jpg"], True),
    "garbage": ("jpg", b"\xff\xd8 not really a jpeg", False),
    "truncated": ("png", GOOD_IMAGES["png"][:40], False),
    "empty": ("png", b"", False),
    "symlink": ("png", None, False),
    "missing": (None, None, False),
}
# .cls kind -> (payload or None for no member, label or None when the sample must be skipped)
CLS_KINDS = {
    "ok0": (b"0", 0),
    "ok2": (b" 2\n", 2),
    "none": (None, -1),
    "minus1": (b"-1", -1),
    "out_of_range": (b"3", None),
    "negative": (b"-7", None),
    "huge": (b"99999999999999999999999", None),
    "text": (b"cat", None),
    "float": (b"1.5", None),
    "not_utf8": (b"\xff\xfe", None),
}


@st.composite
def shard_case(draw):
    samples = draw(
        st.lists(
            st.tuples(
                st.sampled_from(sorted(IMAGE_KINDS)),
                st.sampled_from(sorted(CLS_KINDS)),
            ),
            min_size=1,
            max_size=6,
        )
    )
    # Mostly good samples, so that clean runs are drawn too.
    if draw(st.booleans()):
        samples = [("png" if i % 2 else "jpg", "ok2" if i % 3 else "ok0") for i in range(len(samples))]
    shard_fault = draw(st.sampled_from(["none", "none", "none", "truncated", "deleted", "index_too_big"]))
    resampled = draw(st.booleans())
    return samples, shard_fault, resampled


def _write(d: Path, samples: list[tuple[str, str]], shard_fault: str) -> tuple[Path, list[int], str]:
    path = d / "shard-000000.tar"
    expected: list[int] = []
    members: list[tuple[str, bytes | None]] = []
    for i, (image_kind, cls_kind) in enumerate(samples):
        ext, payload, decodes = IMAGE_KINDS[image_kind]
        cls_payload, label = CLS_KINDS[cls_kind]
        sample: list[tuple[str, bytes | None]] = []
        if ext is not None:
            sample.append((f"s{i:03d}.{ext}", payload))
        if cls_payload is not None:
            sample.append((f"s{i:03d}.cls", cls_payload))
        members += sample or [(f"s{i:03d}.txt", b"caption only")]
        if decodes and label is not None:
            expected.append(label)
    _tar(path, members)
    nsamples = len(samples) + (5 if shard_fault == "index_too_big" else 0)
    index = {"wids_version": 1, "shardlist": [{"url": path.name, "nsamples": nsamples}], "class_names": CLASSES}
    (d / SHARD_INDEX).write_text(json.dumps(index))
    if shard_fault == "truncated":  # cut in the middle of the last member's data
        with tarfile.open(path) as tar:
            last = [m for m in tar.getmembers() if m.isreg() and m.size > 1][-1:]
        if last:
            path.write_bytes(path.read_bytes()[: last[0].offset_data + last[0].size // 2])
        else:
            shard_fault = "none"
    return path, expected, shard_fault


@settings(FUZZ, max_examples=budget(60))
@given(case=shard_case())
def test_fuzz_webdataset_shards(tmp_path_factory: pytest.TempPathFactory, case) -> None:
    samples, shard_fault, resampled = case
    d = tmp_path_factory.mktemp("wds-fuzz")
    path, expected, shard_fault = _write(d, samples, shard_fault)
    valid = len(expected) == len(samples) and shard_fault == "none"
    ds = WebDatasetShards(str(d), ImageTransform(6), resampled=resampled, epoch_size=3 * len(samples))
    if shard_fault == "deleted":
        path.unlink()
        valid = False
    outcome, why = "accepted", ""
    try:
        with alarm(60):
            labels = [int(item["label"]) for item in ds]
    except DatasetError as e:
        outcome, why = ("clean_error" if not valid else "refused_valid"), str(e)
    except Hang:
        outcome = "hang"
    except Exception as e:  # noqa: BLE001 - anything else is the failure this test looks for
        outcome, why = "traceback", f"{type(e).__name__}: {e}"
    else:
        if not valid:
            outcome, why = "silent", f"yielded {labels}, skipped {ds.skipped}"
        elif resampled:
            assert len(labels) == 3 * len(samples) and set(labels) <= set(expected)
        else:
            assert labels == expected
    record("webdataset shards", outcome, f"{why}\nsamples {samples}, shard {shard_fault}, resampled {resampled}")
    assert outcome in ("accepted", "clean_error"), why
