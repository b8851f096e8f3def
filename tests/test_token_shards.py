"""Token shard sets: class names in the metadata (contract 3), validation of damaged sets, pretokenize at scale."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from flexitok.cli.main import main
from flexitok.config import tiny_config
from flexitok.data.base import DatasetError
from flexitok.data.shards import shard_entry
from flexitok.data.tokens import TokenShardDataset, write_token_shards
from flexitok.models.flextok import FlexTok


def _batches(n: int = 12, b: int = 4, n_tokens: int = 8, classes: int = 3) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [
        {"tokens": torch.randint(0, 1000, (b, n_tokens), generator=g), "label": torch.arange(i, i + b) % classes}
        for i in range(0, n, b)
    ]


def test_class_names_roundtrip_and_checks(tmp_path: Path) -> None:
    out = write_token_shards(_batches(), tmp_path / "tok", shard_size=5, class_names=["cat", "dog", "fox"])
    ds = TokenShardDataset(out)
    assert ds.class_names == ["cat", "dog", "fox"] and ds.num_classes == 3
    assert ds.meta["class_names"] == ["cat", "dog", "fox"] and ds.meta["num_classes"] == 3
    # A count without names; no classes at all reads as None.
    ds2 = TokenShardDataset(write_token_shards(_batches(), tmp_path / "tok2", num_classes=3))
    assert ds2.class_names is None and ds2.num_classes == 3
    ds3 = TokenShardDataset(write_token_shards(_batches(), tmp_path / "tok3"))
    assert ds3.class_names is None and ds3.num_classes is None
    with pytest.raises(DatasetError, match="num_classes=4 but 3 class_names"):
        write_token_shards(_batches(), tmp_path / "bad1", class_names=["a", "b", "c"], num_classes=4)
    with pytest.raises(DatasetError, match=r"labels must lie in \[-1, 2\)"):
        write_token_shards(_batches(), tmp_path / "bad2", class_names=["a", "b"])
    with pytest.raises(DatasetError, match="duplicates"):
        write_token_shards(_batches(), tmp_path / "bad3", class_names=["a", "a", "b"])
    assert not any((tmp_path / f"bad{i}").exists() for i in (1, 2, 3))


def test_old_index_with_names_in_meta_only_still_reads(tmp_path: Path) -> None:
    out = write_token_shards(_batches(), tmp_path / "tok")
    index = json.loads((out / "index.json").read_text())
    del index["meta"]["class_names"], index["meta"]["num_classes"]
    index["meta"]["class_names"] = ["a", "b", "c"]  # the 0.1.0 pretokenize wrote names only (Fashion-MNIST)
    (out / "index.json").write_text(json.dumps(index))
    ds = TokenShardDataset(out)
    assert ds.class_names == ["a", "b", "c"] and ds.num_classes == 3


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tok")
    torch.manual_seed(0)
    cfg = tiny_config(image_size=16, n_registers=8, dim=32, depth=1)
    cfg.fsq_levels = (5, 5, 4)
    FlexTok(cfg).save_pretrained(root / "tok")
    return root / "tok"


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """root/train/<class>/*.png, 4 classes x 3 images of 20x24 (mixed with RGBA and L)."""
    root = tmp_path_factory.mktemp("imgs")
    g = torch.Generator().manual_seed(1)
    for c, name in enumerate(["ant", "bee", "cow", "dog"]):
        d = root / "train" / name
        d.mkdir(parents=True)
        for i in range(3):
            arr = torch.randint(0, 256, (20, 24, 3), generator=g, dtype=torch.uint8).numpy()
            mode = ("RGB", "RGBA", "L")[(c + i) % 3]
            Image.fromarray(arr).convert(mode).save(d / f"{i}.png")
    return root


def test_pretokenize_records_folder_class_names(tiny_tokenizer: Path, image_tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "shards"
    args = ["pretokenize", "--model", str(tiny_tokenizer), "--data", "folder", "--data-path", str(image_tree)]
    assert main([*args, "--batch-size", "5", "-o", str(out), "--device", "cpu"]) == 0
    ds = TokenShardDataset(out)
    assert len(ds) == 12 and ds.class_names == ["ant", "bee", "cow", "dog"] and ds.num_classes == 4
    assert sorted({ds[i]["label"] for i in range(12)}) == [0, 1, 2, 3]


# ------------------------------------------------------------------------------------------ damaged sets (#22)


def _good_set(tmp_path: Path, name: str = "tok") -> Path:
    return write_token_shards(_batches(), tmp_path / name, shard_size=5, meta={"vocab_size": 1000})


def _edit_index(root: Path, edit: Any) -> None:
    index = json.loads((root / "index.json").read_text())
    edit(index)
    (root / "index.json").write_text(json.dumps(index))


def _rehash(root: Path) -> None:
    """Make the index agree with the shard files again, so only the content checks can object."""

    def fix(index: dict[str, Any]) -> None:
        for s in index["shards"]:
            s.update(shard_entry(root / s["file"], s["num_items"]))

    _edit_index(root, fix)


INDEX_FAULTS: dict[str, tuple[Any, str]] = {
    "not an object": (lambda ix: ix.clear() or ix.update({"x": [1]}), "holds None data|must hold"),
    "shards not a list": (lambda ix: ix.update(shards={"file": "a"}), "shards must be a non-empty list"),
    "no shards": (lambda ix: ix.update(shards=[]), "shards must be a non-empty list"),
    "num_items a string": (lambda ix: ix.update(num_items="12"), "num_items must be a positive integer"),
    "num_items a float": (lambda ix: ix.update(num_items=12.0), "num_items must be a positive integer"),
    "num_items a bool": (lambda ix: ix.update(num_items=True), "num_items must be a positive integer"),
    "num_items negative": (lambda ix: ix.update(num_items=-3), "num_items must be a positive integer"),
    "num_items too large": (lambda ix: ix.update(num_items=10**12), "but the shards hold 12"),
    "shard entry not an object": (lambda ix: ix["shards"].__setitem__(0, "shard-000000.safetensors"), "an object"),
    "shard num_items wrong type": (lambda ix: ix["shards"][0].update(num_items="5"), r"shards\[0\].num_items"),
    "shard num_items zero": (lambda ix: ix["shards"][0].update(num_items=0), r"shards\[0\].num_items"),
    "more items than stored": (
        lambda ix: (ix["shards"][0].update(num_items=6), ix.update(num_items=13)),
        "do not hold the 6 items",
    ),
    "parent path": (lambda ix: ix["shards"][0].update(file="../outside.safetensors"), "not a name inside"),
    "absolute path": (lambda ix: ix["shards"][0].update(file="/etc/passwd"), "not a name inside"),
    "file listed twice": (
        lambda ix: ix["shards"][1].update(file=ix["shards"][0]["file"]),
        "listed twice",
    ),
    "bad sha256": (lambda ix: ix["shards"][0].update(sha256="xyz"), "64 lowercase hex"),
    "sha256 on some shards only": (
        lambda ix: (ix["shards"][0].pop("sha256"), ix["shards"][0].pop("bytes")),
        "some shards have a sha256",
    ),
    "meta not an object": (lambda ix: ix.update(meta=[1]), "meta must be an object"),
    "vocab_size a string": (lambda ix: ix["meta"].update(vocab_size="1000"), "meta.vocab_size"),
    "class names not strings": (lambda ix: ix["meta"].update(class_names=[1, 2, 3], num_classes=3), "class_names"),
}


@pytest.mark.parametrize("fault", sorted(INDEX_FAULTS))
def test_damaged_index_is_a_clean_error(tmp_path: Path, fault: str) -> None:
    root = _good_set(tmp_path)
    edit, message = INDEX_FAULTS[fault]
    _edit_index(root, edit)
    if fault == "more items than stored":
        _rehash(root)
    with pytest.raises(DatasetError, match=message):
        TokenShardDataset(root)


def test_symlink_out_of_the_set_is_refused(tmp_path: Path) -> None:
    root = _good_set(tmp_path)
    outside = _good_set(tmp_path, "other") / "shard-000000.safetensors"
    (root / "shard-000000.safetensors").unlink()
    (root / "shard-000000.safetensors").symlink_to(outside)
    with pytest.raises(DatasetError, match="points outside the set folder"):
        TokenShardDataset(root)


@pytest.mark.filterwarnings("ignore:.*no SHA-256 per shard")
@pytest.mark.parametrize("hashed", [True, False], ids=["hashed", "legacy"])
@pytest.mark.parametrize("damage", ["truncated", "random bytes", "flipped byte", "empty"])
def test_damaged_shard_file_is_a_clean_error(tmp_path: Path, damage: str, hashed: bool) -> None:
    root = _good_set(tmp_path)
    if not hashed:
        _edit_index(root, lambda ix: [(s.pop("sha256"), s.pop("bytes")) for s in ix["shards"]])
    shard = root / "shard-000001.safetensors"
    data = bytearray(shard.read_bytes())
    if damage == "truncated":
        data = data[: len(data) - 7]
    elif damage == "random bytes":
        data = bytearray(torch.randint(0, 256, (len(data),), generator=torch.Generator().manual_seed(0)).byte().numpy())
    elif damage == "flipped byte":
        data[-3] ^= 0x01  # inside the last token id: only the hash can tell
    else:
        data = bytearray()
    shard.write_bytes(bytes(data))
    if damage == "flipped byte" and not hashed:
        with pytest.warns(UserWarning, match="no SHA-256"):
            TokenShardDataset(root)  # undetectable without a hash: the documented limit of legacy sets
        return
    with pytest.raises(DatasetError, match="truncated|SHA-256|damaged"):
        TokenShardDataset(root)


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        (torch.zeros(5, 8, dtype=torch.float32), "token ids are F32"),
        (torch.zeros(5, 8, dtype=torch.uint8), "token ids are U8"),
        (torch.zeros(5, 8, dtype=torch.int16), "token ids are I16"),
        (torch.zeros(5, 7, dtype=torch.int32), r"tokens have shape \[5, 7\]"),
        (torch.zeros(4, 8, dtype=torch.int32), "do not hold the 5 items"),
    ],
)
def test_shard_dtypes_and_shapes_are_checked_not_cast(tmp_path: Path, tokens: torch.Tensor, message: str) -> None:
    root = _good_set(tmp_path)
    save_file(
        {"tokens": tokens, "labels": torch.zeros(tokens.shape[0], dtype=torch.long)}, root / "shard-000000.safetensors"
    )
    _rehash(root)
    with pytest.raises(DatasetError, match=message):
        TokenShardDataset(root)


def test_out_of_range_ids_fail_cleanly_inside_dataloader_workers(tmp_path: Path) -> None:
    root = _good_set(tmp_path)
    _edit_index(root, lambda ix: ix["meta"].update(vocab_size=10))  # stored ids go up to 999
    ds = TokenShardDataset(root)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=1)
    with pytest.raises(DatasetError, match=r"token ids outside \[0, 10\)"):
        next(iter(loader))


def test_hash_is_checked_once_per_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import flexitok.data.shards as shards

    root = _good_set(tmp_path)
    calls: list[Path] = []
    real = shards.file_sha256
    monkeypatch.setattr(shards, "file_sha256", lambda p: calls.append(Path(p)) or real(p))
    TokenShardDataset(root)
    TokenShardDataset(root)
    assert len(calls) == 3  # three shards, hashed by the first reader only


def test_legacy_set_without_hashes_loads_with_a_warning() -> None:
    fixture = Path(__file__).parent / "fixtures" / "train-regression" / "fmnist-tokens"
    with pytest.warns(UserWarning, match="no SHA-256 per shard"):
        ds = TokenShardDataset(fixture)
    assert len(ds) == 256 and ds.num_classes == 10 and ds[0]["tokens"].shape == (32,)


def test_writer_removes_temp_folders_of_killed_writers(tmp_path: Path) -> None:
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale, live = tmp_path / ".tok.tmp-stale", tmp_path / ".tok.tmp-live"
    for folder, pid in ((stale, int(dead.stdout)), (live, os.getpid())):
        folder.mkdir()
        (folder / ".owner").write_text(f"{socket.gethostname()} {pid}\n")
    _good_set(tmp_path)
    assert not stale.exists() and live.exists()
    assert sorted(p.name for p in (tmp_path / "tok").iterdir())[0] == "index.json"


# -------------------------------------------------------------------------------- pretokenize at scale (#20)

KILL_SCRIPT = """
import os, signal, sys
import torch
from flexitok.data import DataConfig, build_dataset
from flexitok.data.tokens import PretokenizeJob, pretokenize_dataset
from flexitok.models.flextok import FlexTok

torch.set_num_threads(1)
model = FlexTok.from_pretrained(sys.argv[1])
dataset = build_dataset(DataConfig(kind="folder", path=sys.argv[2], image_size=16))
calls = []

def tokenize(images):
    calls.append(1)
    if len(calls) == 3:  # shard 0 (batches 1-2) is on disk: die as a scheduler's kill -9 would
        os.kill(os.getpid(), signal.SIGKILL)
    return model.tokenize(images)

pretokenize_dataset(tokenize, dataset, PretokenizeJob(sys.argv[3], shard_size=4, batch_size=3))
"""


def _folder_dataset(image_tree: Path) -> Any:
    from flexitok.data import DataConfig, build_dataset

    return build_dataset(DataConfig(kind="folder", path=str(image_tree), image_size=16))


def _set_digest(root: Path) -> list[tuple[str, int, str]]:
    index = json.loads((root / "index.json").read_text())
    return [(s["file"], s["num_items"], s["sha256"]) for s in index["shards"]]


@pytest.fixture(scope="module")
def reference_set(tiny_tokenizer: Path, image_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted, single-process run: 12 images in shards of 4, batches of 3 (never across a shard)."""
    from flexitok.data.tokens import PretokenizeJob, pretokenize_dataset

    model = FlexTok.from_pretrained(tiny_tokenizer)
    out = tmp_path_factory.mktemp("ref") / "tokens"
    job = PretokenizeJob(out, shard_size=4, batch_size=3, class_names=["ant", "bee", "cow", "dog"])
    assert pretokenize_dataset(model.tokenize, _folder_dataset(image_tree), job) == out
    ds = TokenShardDataset(out)
    assert len(ds) == 12 and [ds[i]["label"] for i in range(12)] == [i // 3 for i in range(12)]
    return out


def test_resume_after_an_injected_failure_gives_the_same_set(
    tiny_tokenizer: Path, image_tree: Path, reference_set: Path, tmp_path: Path
) -> None:
    from flexitok.data.tokens import PretokenizeJob, pretokenize_dataset

    model = FlexTok.from_pretrained(tiny_tokenizer)
    calls: list[int] = []

    def failing(images: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("injected failure")
        return model.tokenize(images)

    out = tmp_path / "tokens"
    job = PretokenizeJob(out, shard_size=4, batch_size=3, class_names=["ant", "bee", "cow", "dog"])
    with pytest.raises(RuntimeError, match="injected"):
        pretokenize_dataset(failing, _folder_dataset(image_tree), job)
    assert not out.exists() and (job.work_dir / "shard-000000.safetensors.json").is_file()
    redone: list[int] = []
    job.resume = True
    pretokenize_dataset(lambda x: redone.append(x.shape[0]) or model.tokenize(x), _folder_dataset(image_tree), job)
    assert sum(redone) == 8  # shard 0 was kept; shards 1 and 2 tokenized
    assert _set_digest(out) == _set_digest(reference_set) and not job.work_dir.exists()
    # Other settings than the interrupted run's: refused, not mixed.
    calls.clear()
    with pytest.raises(RuntimeError):
        pretokenize_dataset(failing, _folder_dataset(image_tree), PretokenizeJob(tmp_path / "t2", 4, batch_size=1))
    bad = PretokenizeJob(tmp_path / "t2", shard_size=5, resume=True)
    with pytest.raises(DatasetError, match="other settings"):
        pretokenize_dataset(model.tokenize, _folder_dataset(image_tree), bad)


def test_kill_9_then_resume_gives_the_same_set(
    tiny_tokenizer: Path, image_tree: Path, reference_set: Path, tmp_path: Path
) -> None:
    import subprocess
    import sys

    out = tmp_path / "tokens"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, str(tiny_tokenizer), str(image_tree), str(out)], env=env, timeout=120
    )
    assert proc.returncode == -9
    work = tmp_path / ".tokens.partial"
    assert not out.exists() and sorted(p.name for p in work.glob("shard-*.safetensors")) == ["shard-000000.safetensors"]
    args = ["pretokenize", "--model", str(tiny_tokenizer), "--data", "folder", "--data-path", str(image_tree)]
    args += ["--shard-size", "4", "--batch-size", "3", "-o", str(out), "--device", "cpu"]
    # The CLI records more meta (tokenizer, dtype) than the script did: --resume refuses the mismatch cleanly.
    assert main([*args, "--resume"]) == 2 and work.is_dir() and not out.exists()
    from flexitok.data.tokens import PretokenizeJob, pretokenize_dataset

    model = FlexTok.from_pretrained(tiny_tokenizer)
    job = PretokenizeJob(out, shard_size=4, batch_size=3, resume=True)
    pretokenize_dataset(model.tokenize, _folder_dataset(image_tree), job)
    assert _set_digest(out) == _set_digest(reference_set) and not work.exists()
    assert len(TokenShardDataset(out)) == 12


def test_ranks_write_disjoint_shares_of_one_identical_set(
    tiny_tokenizer: Path, image_tree: Path, reference_set: Path, tmp_path: Path
) -> None:
    from flexitok.data.tokens import PretokenizeJob, pretokenize_dataset

    model = FlexTok.from_pretrained(tiny_tokenizer)
    out, seen = tmp_path / "tokens", {0: 0, 1: 0}
    for rank in (1, 0):  # rank 1 first: rank 0 finds its shard done and only writes the index

        def tok(x: torch.Tensor, rank: int = rank) -> torch.Tensor:
            seen[rank] += x.shape[0]
            return model.tokenize(x)

        job = PretokenizeJob(out, shard_size=4, batch_size=3, rank=rank, world_size=2, resume=True, poll_seconds=0.01)
        job.class_names = ["ant", "bee", "cow", "dog"]
        assert pretokenize_dataset(tok, _folder_dataset(image_tree), job) == (out if rank == 0 else None)
    assert seen == {0: 4, 1: 8}  # 3 shards: rank 0 takes [0, 1), rank 1 takes [1, 3)
    assert _set_digest(out) == _set_digest(reference_set)


def test_cli_torchrun_two_processes_and_workers_match_one_process(
    tiny_tokenizer: Path, image_tree: Path, tmp_path: Path
) -> None:
    import subprocess
    import sys

    base = ["pretokenize", "--model", str(tiny_tokenizer), "--data", "folder", "--data-path", str(image_tree)]
    base += ["--shard-size", "4", "--batch-size", "3", "--device", "cpu", "--threads", "1"]
    assert main([*base, "-o", str(tmp_path / "one")]) == 0
    assert main([*base, "-o", str(tmp_path / "workers"), "--workers", "2"]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "flexitok"]
    proc = subprocess.run(
        [*cmd, *base, "-o", str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _set_digest(tmp_path / "two") == _set_digest(tmp_path / "one") == _set_digest(tmp_path / "workers")
    one, two = TokenShardDataset(tmp_path / "one"), TokenShardDataset(tmp_path / "two")
    assert one.meta == two.meta and one.class_names == ["ant", "bee", "cow", "dog"]


def test_cli_pretokenize_webdataset_shards(tiny_tokenizer: Path, image_tree: Path, tmp_path: Path) -> None:
    from flexitok.data.webdataset import write_folder_shards

    tars, _ = write_folder_shards(image_tree / "train", tmp_path / "wds", shard_size=5)
    assert len(tars) == 3
    args = ["pretokenize", "--model", str(tiny_tokenizer), "--data", "webdataset", "--data-path", str(tmp_path / "wds")]
    assert main([*args, "-o", str(tmp_path / "tok"), "--device", "cpu", "--batch-size", "2"]) == 0
    ds = TokenShardDataset(tmp_path / "tok")
    assert len(ds) == 12 and [s[1] for s in _set_digest(tmp_path / "tok")] == [5, 5, 2]
    assert sorted(ds[i]["label"] for i in range(12)) == sorted(i // 3 for i in range(12))
    # Resuming a finished set's leftovers is not needed; a second run without --overwrite is refused cleanly.
    assert main([*args, "-o", str(tmp_path / "tok"), "--device", "cpu"]) == 2


def test_equal_contents_give_equal_shard_bytes(tmp_path: Path) -> None:
    # safetensors' own writer orders metadata keys at random; shard sets are compared by their hashes.
    batches = [{**b, "caption": [f"c{i}" for i in range(4)]} for b in _batches()]
    digests = {tuple(_set_digest(write_token_shards(batches, tmp_path / f"t{i}", shard_size=5))) for i in range(6)}
    assert len(digests) == 1


def test_webdataset_ranks_and_resume_match_one_process(tiny_tokenizer: Path, image_tree: Path, tmp_path: Path) -> None:
    from flexitok.cli.pretokenize import _input_tars, _tar_source
    from flexitok.data import DataConfig
    from flexitok.data.tokens import PretokenizeJob, pretokenize_streams
    from flexitok.data.webdataset import write_folder_shards

    write_folder_shards(image_tree / "train", tmp_path / "wds", shard_size=5)
    tars = _input_tars(str(tmp_path / "wds"), "train")
    cfg = DataConfig(kind="webdataset", path=str(tmp_path / "wds"), image_size=16, shuffle_buffer=0)
    sources = [_tar_source(cfg, tar, 2) for tar in tars]
    model = FlexTok.from_pretrained(tiny_tokenizer)
    pretokenize_streams(model.tokenize, sources, PretokenizeJob(tmp_path / "one"))
    for rank in (1, 0):
        job = PretokenizeJob(tmp_path / "two", rank=rank, world_size=2, resume=True, poll_seconds=0.01)
        pretokenize_streams(model.tokenize, sources, job)
    assert _set_digest(tmp_path / "two") == _set_digest(tmp_path / "one")
    assert [n for _, n, _ in _set_digest(tmp_path / "one")] == [5, 5, 2]


def test_cli_bf16_records_its_dtype(tiny_tokenizer: Path, image_tree: Path, tmp_path: Path) -> None:
    args = ["pretokenize", "--model", str(tiny_tokenizer), "--data", "folder", "--data-path", str(image_tree)]
    assert main([*args, "-o", str(tmp_path / "bf16"), "--device", "cpu", "--dtype", "bf16"]) == 0
    ds = TokenShardDataset(tmp_path / "bf16")
    assert len(ds) == 12 and ds.meta["dtype"] == "bf16" and int(ds[0]["tokens"].max()) < 100
    # A leftover work folder with other settings (here: an empty plan) is refused with --resume.
    (tmp_path / ".fp32.partial").mkdir()
    (tmp_path / ".fp32.partial" / "plan.json").write_text("{}")
    assert main([*args, "-o", str(tmp_path / "fp32"), "--device", "cpu", "--resume"]) == 2
    assert main([*args, "-o", str(tmp_path / "fp32"), "--device", "cpu"]) == 0  # without --resume: starts over
    assert not (tmp_path / ".fp32.partial").exists() and len(TokenShardDataset(tmp_path / "fp32")) == 12
