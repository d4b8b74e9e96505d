"""Hostile inputs and faults: images that would cost gigabytes, decompression bombs decoded on many threads,
PIL's warnings, symlink loops and other files that are not images, temporary files a planted symlink
would redirect, full disks, folders the tool did not make, odd file names, bad thread settings."""
from __future__ import annotations

import errno
import json
import logging
import os
import resource
import signal
import struct
import subprocess
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from inceptionv3 import build_model
from inceptionv3.cli.main import main
from inceptionv3.data import decode, loaders
from inceptionv3.data.datasets import BadImage, LabeledImages
from inceptionv3.data.decode import ImageError, check_image_size, load_image
from inceptionv3.data.loaders import ImageFiles, resolve_workers
from inceptionv3.data.paths import expand_paths
from inceptionv3.data.transforms import eval_transform, multi_crop_transform
from inceptionv3.runtime import files, threads
from inceptionv3.runtime.files import (
    OWNER_MARK,
    WriteError,
    atomic_path,
    clean_stale_temps,
    make_owned_dir,
    path_lines,
    quote_path,
    read_path_lines,
    remove_owned_dir,
    temp_name,
    unquote_path,
    write_text_atomic,
)
from inceptionv3.weights.io import save_model
from inceptionv3.weights.preprocess import Preprocess

PRE = Preprocess(input_size=75, resize_size=80, interpolation="bilinear")


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model("inception_mini", num_classes=3).eval()
    return save_model(model, tmp_path_factory.mktemp("w") / "mini.safetensors", class_names=["a", "b", "c"],
                      preprocess=PRE)


def _photo(path: Path, size: tuple[int, int] = (50, 40), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def _bad_exif_jpeg(path: Path, tag: int = 0x010E) -> Path:
    """A JPEG whose EXIF names a tag with more data than the file holds: PIL warns while reading it."""
    ifd = struct.pack("<2sHI", b"II", 42, 8) + struct.pack("<H", 1)
    ifd += struct.pack("<HHII", tag, 2, 1000, 0x40) + struct.pack("<I", 0)
    Image.new("RGB", (30, 20), (9, 9, 9)).save(path, exif=b"Exif\x00\x00" + ifd)
    return path


def _hostile_folder(folder: Path) -> dict[str, Path]:
    folder.mkdir()
    made = {"good": _photo(folder / "good.png"), "exif": _bad_exif_jpeg(folder / "exif.jpg")}
    made["wide"] = folder / "wide.png"
    Image.new("L", (1, 20000)).save(made["wide"])   # a few hundred bytes, 7 GB once resized
    assert made["wide"].stat().st_size < 1000
    made["bomb"] = folder / "bomb.png"
    Image.new("L", (250, 150)).save(made["bomb"])   # over the limit the test sets (30,000 pixels)
    made["loop"] = folder / "loop_a.png"
    os.symlink("loop_b.png", folder / "loop_a.png")
    os.symlink("loop_a.png", folder / "loop_b.png")
    made["broken"] = folder / "broken.png"
    os.symlink("gone.png", made["broken"])
    made["fifo"] = folder / "fifo.png"
    os.mkfifo(made["fifo"])   # opening it to read would block for ever
    return made


def _small_bomb_limit(monkeypatch) -> None:
    # PIL warns between 1x and 2x the limit and raises above 2x; 250 x 150 sits in the warning band.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 30_000)


# --- via the command ---------------------------------------------------------------------------------


def test_predict_names_each_hostile_file_and_goes_on(tmp_path, weights, monkeypatch, capsys, caplog):
    _small_bomb_limit(monkeypatch)
    made = _hostile_folder(tmp_path / "imgs")
    with caplog.at_level(logging.WARNING):
            code = main(["predict", str(tmp_path / "imgs"), "--weights", str(weights), "--format", "json",
                     "--workers", "0", "--batch-size", "2"])
    out, err = capsys.readouterr()
    assert code == 1
    by_name = {Path(r["path"]).name: r for r in json.loads(out)}
    assert "predictions" in by_name["good.png"] and "predictions" in by_name["exif.jpg"]
    assert "aspect ratio of 20,000:1" in by_name["wide.png"]["error"]
    assert "decompression-bomb limit" in by_name["bomb.png"]["error"]
    assert "symlink loop" in by_name["loop_a.png"]["error"]
    assert "symlink loop" in by_name["loop_b.png"]["error"]
    assert "broken symlink" in by_name["broken.png"]["error"] and "gone.png" in by_name["broken.png"]["error"]
    assert "not a regular file" in by_name["fifo.png"]["error"]
    # PIL's warning about the EXIF comes with the file's name, not raw.
    warned = [r.getMessage() for r in caplog.records if "Tag data larger than file" in r.getMessage()]
    assert warned and all(line.startswith(str(made["exif"])) for line in warned)
    assert "Traceback" not in err and "MemoryError" not in err


def test_non_integer_thread_variable_is_one_line_naming_it(tmp_path, weights, monkeypatch, capsys):
    img = _photo(tmp_path / "a.png")
    for value in ("two", "0", "-3", "1.5"):
        monkeypatch.setenv("INCEPTIONV3_NUM_THREADS", value)
        code = main(["predict", str(img), "--weights", str(weights), "--workers", "0"])
        err = capsys.readouterr().err.strip()
        assert code == 2
        assert err.count("\n") == 0 and "INCEPTIONV3_NUM_THREADS" in err and repr(value) in err
    monkeypatch.setenv("INCEPTIONV3_NUM_THREADS", "1")


def test_workers_beyond_the_cores_are_bounded_and_said(tmp_path, weights, monkeypatch, capsys, caplog):
    img = _photo(tmp_path / "a.png")
    monkeypatch.setattr(threads, "available_cores", lambda: 1)
    monkeypatch.setattr(loaders, "bound_workers", threads.bound_workers)
    started: list[int] = []
    real_loader = loaders.DataLoader

    def loader(*args, **kwargs):
        started.append(kwargs["num_workers"])
        return real_loader(*args, **kwargs)

    monkeypatch.setattr(loaders, "DataLoader", loader)
    with caplog.at_level(logging.WARNING):
        code = main(["predict", str(img), "--weights", str(weights), "--workers", "999"])
    assert code == 0
    assert started == [1]
    assert any("999 decode workers asked for; using 1" in r.getMessage() for r in caplog.records)


def test_write_error_names_the_output_and_leaves_no_temp(tmp_path, weights, capsys):
    img = _photo(tmp_path / "a.png")
    out = tmp_path / "out" / "f.npy"
    out.parent.mkdir()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        # A file-size limit makes every write beyond 64 bytes fail, as a full disk does.
        resource.setrlimit(resource.RLIMIT_FSIZE, (64, hard))
        code = main(["features", str(img), "--weights", str(weights), "--workers", "0", "--out", str(out),
                     "--backend", "torch", "--layer", "pool"])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    err = capsys.readouterr().err
    assert code == 2
    line = [e for e in err.splitlines() if "error" in e][-1]
    assert f"cannot write {out}" in line and ".tmp" not in line and "Traceback" not in err
    assert not out.exists()
    assert not [p for p in out.parent.rglob("*") if ".iv3-" in p.name]
    # With room again, the same command succeeds.
    assert main(["features", str(img), "--weights", str(weights), "--workers", "0", "--out", str(out),
                 "--backend", "torch", "--layer", "pool"]) == 0
    assert np.load(out).shape[0] == 1


def test_list_file_with_a_quoted_name_holding_a_newline(tmp_path, weights, capsys):
    odd = _photo(tmp_path / "new\nline.png")
    plain = _photo(tmp_path / "plain.png", seed=1)
    listing = tmp_path / "list.txt"
    listing.write_text(path_lines([odd.name, plain.name]))
    assert expand_paths([f"@{listing}"]) == [odd, plain]
    code = main(["predict", f"@{listing}", "--weights", str(weights), "--format", "json", "--workers", "0"])
    assert code == 0
    assert [r["path"] for r in json.loads(capsys.readouterr().out)] == [str(odd), str(plain)]


# --- via the decode functions ------------------------------------------------------------------------


def test_extreme_shapes_are_refused_before_allocating(tmp_path):
    wide = tmp_path / "wide.png"
    Image.new("L", (1, 20000)).save(wide)
    with pytest.raises(ImageError, match=r"aspect ratio of 20,000:1, beyond the 100:1") as e:
        load_image(wide)
    assert e.value.path == str(wide)
    img = load_image(wide, max_aspect=None)   # a library caller may lift the bound ...
    pre = Preprocess(input_size=299, resize_size=342)
    for transform in (eval_transform(pre), multi_crop_transform(pre, 10)):
        with pytest.raises(ImageError, match=r"342x6840000 px") as e:   # ... the resize still holds
            transform(img)
        assert e.value.path is None
    # Within the bounds an odd shape still classifies.
    long = tmp_path / "long.png"
    Image.new("RGB", (90, 1)).save(long)
    assert eval_transform(PRE)(load_image(long)).shape == (3, 75, 75)


def test_datasets_report_a_refused_resize_with_the_file(tmp_path, monkeypatch):
    # A caller that lifts the aspect bound still meets the bound on the resize.
    monkeypatch.setattr(decode.load_image, "__kwdefaults__",
                        {**decode.load_image.__kwdefaults__, "max_aspect": None})
    wide = tmp_path / "wide.png"
    Image.new("L", (1, 20000)).save(wide)
    good = _photo(tmp_path / "good.png")
    tf = eval_transform(Preprocess(input_size=299, resize_size=342))
    files_ds = ImageFiles([wide, good], tf)
    x, _, reason = files_ds[0]
    assert x is None and "resizing 1x20000 px" in reason
    assert files_ds[1][2] is None
    labeled = LabeledImages([(str(wide), 0)], ["a"], tf)
    labeled.report_bad = True
    bad = labeled[0]
    assert isinstance(bad, BadImage) and bad.path == str(wide) and "resizing" in bad.reason


def test_bomb_guard_holds_on_many_threads(tmp_path, monkeypatch):
    _small_bomb_limit(monkeypatch)
    bombs = []
    for i, size in enumerate([(250, 150), (201, 150), (500, 150)]):   # warning band x2, error band
        Image.new("L", size).save(tmp_path / f"bomb{i}.png")
        bombs.append(tmp_path / f"bomb{i}.png")
    goods = [_photo(tmp_path / f"good{i}.png", (60, 40), seed=i) for i in range(3)]
    filters_before = list(warnings.filters)

    def decode_one(path: Path) -> str:
        try:
            load_image(path)
        except ImageError as e:
            return e.reason
        return "ok"

    jobs = (bombs + goods) * 40
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(decode_one, jobs))
    for path, result in zip(jobs, results):
        if path in bombs:
            assert "decompression-bomb limit" in result, (path, result)
        else:
            assert result == "ok", (path, result)
    assert not shown   # PIL's bomb warnings never reach the user raw
    assert warnings.filters == filters_before


def test_pil_warnings_name_their_file_on_many_threads(tmp_path, caplog):
    # Each file warns with its own tag number, so each message is shown once and belongs to one file.
    made = {_bad_exif_jpeg(tmp_path / f"exif{i}.jpg", tag=0x0100 + i): 0x0100 + i for i in range(12)}
    with caplog.at_level(logging.WARNING, logger="inceptionv3.data.decode"), ThreadPoolExecutor(6) as pool:
        images = list(pool.map(load_image, made))
    assert all(im.size == (30, 20) for im in images)
    for path, tag in made.items():
        mine = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"{path}:")]
        assert any(f"Skipping tag {tag}" in m for m in mine), (path, mine)
        assert all(f"Skipping tag {tag}" in m for m in mine)


def test_files_that_are_not_images_say_why(tmp_path, monkeypatch):
    loop = tmp_path / "loop.jpg"
    os.symlink(loop.name, loop)   # points at itself
    broken = tmp_path / "broken.jpg"
    os.symlink("nowhere.jpg", broken)
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    reasons = {}
    for p in (loop, broken, fifo, tmp_path, tmp_path / "missing.png"):
        with pytest.raises(ImageError) as e:
            load_image(p)
        reasons[p] = e.value.reason
    assert reasons[loop].startswith("symlink loop")
    assert reasons[broken].startswith("broken symlink") and "nowhere.jpg" in reasons[broken]
    assert reasons[fifo].startswith("not a regular file")
    assert "directory" in reasons[tmp_path]
    assert reasons[tmp_path / "missing.png"] == "no such file"
    # Named on the command line, a symlink that cannot be followed is kept so its reason is reported.
    assert expand_paths([loop, broken]) == [loop, broken]
    # Errors met while reading, whatever their kind, are told by their errno.
    good = _photo(tmp_path / "good.png")
    for code, words in [(errno.EACCES, "permission denied"), (errno.EIO, "input/output error")]:
        def refuse(*args, code=code, **kwargs):
            raise OSError(code, os.strerror(code), str(good))
        monkeypatch.setattr(decode.Image, "open", refuse)
        with pytest.raises(ImageError, match=words):
            load_image(good)


def test_an_unlistable_folder_is_named(tmp_path, monkeypatch, caplog):
    (tmp_path / "sub").mkdir()
    _photo(tmp_path / "sub" / "a.png")
    real_walk = os.walk

    def walk(top, onerror=None, **kw):
        onerror(PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "locked")))
        yield from real_walk(top, onerror=onerror, **kw)

    monkeypatch.setattr(os, "walk", walk)
    with caplog.at_level(logging.WARNING):
        assert [p.name for p in expand_paths([tmp_path])] == ["a.png"]
    assert any(f"{tmp_path / 'locked'}: cannot list this folder (permission denied)" in r.getMessage()
               for r in caplog.records)


# --- safe files ------------------------------------------------------------------------------------------


def test_a_planted_symlink_cannot_redirect_a_write(tmp_path, monkeypatch):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    dest = tmp_path / "shared" / "out.json"
    dest.parent.mkdir()
    tokens = iter(["a" * 16, "b" * 16])
    monkeypatch.setattr(files.secrets, "token_hex", lambda n: next(tokens))
    planted = temp_name(dest)   # the first name the writer will try
    os.symlink(victim, planted)
    os.symlink(victim, dest)    # and the output's own name
    write_text_atomic(dest, "result")
    assert dest.read_text() == "result" and victim.read_text() == "precious"
    assert not dest.is_symlink()   # the link was replaced, its target left alone
    assert planted.is_symlink()    # not ours: left alone


def test_outputs_follow_the_umask(tmp_path):
    from safetensors.numpy import save_file

    old = os.umask(0o027)
    try:
        text = write_text_atomic(tmp_path / "a.txt", "x")
        st = tmp_path / "b.safetensors"
        with atomic_path(st) as tmp:
            save_file({"x": np.zeros(2, np.float32)}, str(tmp))   # safetensors alone would make it 0600
    finally:
        os.umask(old)
    assert oct(text.stat().st_mode & 0o777) == oct(0o640)
    assert oct(st.stat().st_mode & 0o777) == oct(0o640)


@pytest.mark.parametrize("failure", ["enospc", "torch-words"])
def test_disk_full_is_one_error_naming_the_destination(tmp_path, monkeypatch, failure):
    dest = tmp_path / "model.safetensors"
    if failure == "torch-words":
        # torch.save reports a full disk as "unexpected pos"; the free space tells what happened.
        monkeypatch.setattr(files, "_free_bytes", lambda folder: 0)
        error: Exception = RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64")
    else:
        error = OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(WriteError) as e, atomic_path(dest) as tmp:
        tmp.write_bytes(b"partial")
        raise error
    message = str(e.value)
    assert message.startswith(f"cannot write {dest}: no space left on device")
    assert "free some space" in message and ".tmp" not in message and e.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []


def test_other_errors_pass_through_and_still_remove_the_temp(tmp_path):
    with pytest.raises(KeyError), atomic_path(tmp_path / "x.bin") as tmp:
        tmp.write_bytes(b"half")
        raise KeyError("a bug, not a write error")
    assert list(tmp_path.iterdir()) == []


def test_temps_of_killed_runs_are_recognised_and_cleaned(tmp_path):
    proc = subprocess.Popen(["true"])
    proc.wait()
    dead = proc.pid
    out = tmp_path / "part-r0-0000000000.npz"
    stale = Path(str(temp_name(out)).replace(f"-{os.getpid()}-", f"-{dead}-"))
    stale.write_bytes(b"killed mid-write")
    live = temp_name(out)
    live.write_bytes(b"being written by this process")
    lookalike = tmp_path / ".part-r0-0000000000.npz.123.tmp.npz"   # not our pattern
    lookalike.write_bytes(b"someone else's")
    link = Path(str(temp_name(out)).replace(f"-{os.getpid()}-", f"-{dead}-"))
    os.symlink(lookalike, link)
    write_text_atomic(tmp_path / "other.txt", "the next write into the folder cleans up")
    assert not stale.exists()
    assert live.exists() and lookalike.exists() and link.is_symlink()
    assert clean_stale_temps(tmp_path) == []


def test_only_folders_the_tool_made_are_removed(tmp_path):
    made = make_owned_dir(tmp_path / "run" / "work")
    (made / "sub").mkdir()
    (made / "sub" / "f.bin").write_bytes(b"1")
    (made / "g.txt").write_text("2")
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    os.symlink(outside, made / "link")
    link_to_made = tmp_path / "alias"
    os.symlink(made, link_to_made)
    with pytest.raises(ValueError, match="did not make"):
        remove_owned_dir(link_to_made)
    remove_owned_dir(made)
    assert not made.exists() and outside.read_text() == "keep"

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match=r"mine: not removing it, inceptionv3 did not make this folder"):
        remove_owned_dir(foreign)
    with pytest.raises(ValueError, match="holds files inceptionv3 did not write"):
        make_owned_dir(foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"
    remove_owned_dir(tmp_path / "never-made")   # nothing there: nothing to do

    # A removal stopped half-way leaves the marker, so the next one finishes the job.
    again = make_owned_dir(tmp_path / "again")
    (again / "x").write_text("x")
    assert (again / OWNER_MARK).is_file()
    remove_owned_dir(again)
    assert not again.exists()


NAMES = ["plain.jpg", "with space.png", "café/日本.jpg", "new\nline.png", "cr\rhidden.png", "tab\t.png",
         " leading.png", "trailing.png ", '"quoted".png', "#hash.png", "sep\u2028.png", "nel\x85.png",
         os.fsdecode(b"latin1-\xe9.png")]


def test_path_quoting_round_trips_every_name():
    for name in NAMES[:3]:
        assert quote_path(name) == name   # names that need nothing stay as they are
    text = path_lines(NAMES)
    assert text.count("\n") == len(NAMES)   # one line per path, whatever the names hold
    text.encode("utf-8")                   # and always writable as UTF-8
    assert read_path_lines(text) == NAMES
    assert read_path_lines(text.replace("\n", "\r\n")) == NAMES
    for name in NAMES[3:]:
        assert quote_path(name).startswith('"') and unquote_path(quote_path(name)) == name
    with pytest.raises(ValueError, match="one JSON string"):
        unquote_path('"unterminated')
    assert str(ImageError("a\nb.png", "no such file")) == '"a\\nb.png": no such file'


def test_resolve_workers_bounds_by_the_cores(monkeypatch, caplog):
    monkeypatch.setattr(threads, "available_cores", lambda: 3)
    with caplog.at_level(logging.WARNING):
        assert resolve_workers(2) == 2 and resolve_workers(0) == 0
        assert resolve_workers(1000) == 3 and resolve_workers(1000) == 3
    said = [r for r in caplog.records if "1000 decode workers" in r.getMessage()]
    assert len(said) == 1   # said once, not per loader
    with pytest.raises(ValueError, match="workers must be"):
        resolve_workers(-1)
    monkeypatch.setenv("INCEPTIONV3_NUM_THREADS", "x")
    with pytest.raises(ValueError, match="INCEPTIONV3_NUM_THREADS='x'"):
        threads.env_threads()
    monkeypatch.setenv("INCEPTIONV3_NUM_THREADS", "")
    assert threads.env_threads() is None
    with pytest.raises(ValueError, match="threads must be"):
        threads.set_compute_threads(0, 0)


def test_check_image_size_reads_the_limit_at_call_time(monkeypatch):
    check_image_size(4000, 3000)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    check_image_size(100_000, 100_000, max_aspect=None)   # the user lifted the limit
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageError, match="1,200 pixels is larger than the decompression-bomb limit of 1,000"):
        check_image_size(40, 30)
