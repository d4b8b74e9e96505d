"""Start-up: ``import inceptionv3`` and every ``--help`` load neither torch nor torchvision and leave the
environment alone; the lazy public API resolves every name; inference never imports torchvision.

Each check runs in a fresh interpreter, since this test process has torch loaded already.
"""
from __future__ import annotations

import importlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import inceptionv3 as iv3
from inceptionv3.cli.main import COMMANDS, main


def _python(code: str, *args: str) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON object as its last line."""
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def _command_names() -> list[str]:
    return [importlib.import_module(f"inceptionv3.cli.{module}").NAME for module in COMMANDS]


def test_import_loads_nothing_heavy_and_leaves_the_environment():
    report = _python(textwrap.dedent("""
        import json, os, sys
        before = dict(os.environ)
        import inceptionv3
        print(json.dumps({"loaded": [m for m in ("torch", "torchvision") if m in sys.modules],
                          "environ_changed": dict(os.environ) != before}))
        """))
    assert report == {"loaded": [], "environ_changed": False}


def test_every_help_loads_nothing_heavy_and_leaves_the_environment():
    # One interpreter: `inceptionv3 --help`, then each `inceptionv3 COMMAND --help`, as main() parses them.
    code = textwrap.dedent("""
        import contextlib, io, json, os, sys
        before = dict(os.environ)
        from inceptionv3.cli.main import main
        report = {}
        for argv in [["--help"]] + [[name, "--help"] for name in sys.argv[1:]]:
            out = io.StringIO()
            try:
                with contextlib.redirect_stdout(out):
                    main(argv)
                code = "returned"
            except SystemExit as e:
                code = e.code
            report[" ".join(argv)] = {
                "exit": code, "usage": out.getvalue().startswith("usage: inceptionv3"),
                "loaded": [m for m in ("torch", "torchvision") if m in sys.modules],
                "environ_changed": dict(os.environ) != before}
        print(json.dumps(report))
        """)
    names = _command_names()
    report = _python(code, *names)
    assert list(report) == ["--help"] + [f"{name} --help" for name in names]
    for argv, r in report.items():
        assert r == {"exit": 0, "usage": True, "loaded": [], "environ_changed": False}, argv


def test_python_m_inceptionv3_answers_help():
    done = subprocess.run([sys.executable, "-m", "inceptionv3", "--help"], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0 and done.stdout.startswith("usage: inceptionv3")
    for name in _command_names():
        assert name in done.stdout


@pytest.mark.parametrize("name", _command_names())
def test_each_command_help_exits_0(name, capsys):
    with pytest.raises(SystemExit) as info:
        main([name, "--help"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: inceptionv3 {name}")


def test_every_public_name_resolves():
    assert iv3.__all__[0] == "__version__" and len(set(iv3.__all__)) == len(iv3.__all__)
    for name in iv3.__all__:
        assert getattr(iv3, name) is not None, name
    assert set(iv3.__all__) <= set(dir(iv3))
    assert callable(iv3.metrics.fid) and callable(iv3.inception_v3) and "imagenet" in iv3.REGISTRY
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        iv3.nope   # noqa: B018


def test_public_functions_survive_importing_their_modules():
    # Importing a sub-module binds it on its package; the public names must stay the functions.
    report = _python(textwrap.dedent("""
        import json
        import inceptionv3.training.run, inceptionv3.tasks.evaluate, inceptionv3.metrics.pipeline
        import inceptionv3 as iv3
        names = {name: getattr(iv3, name).__module__ for name in ("train", "evaluate", "predict")}
        names.update({"metrics.fid": iv3.metrics.fid.__module__, "metrics": iv3.metrics.__name__})
        print(json.dumps(names))
        """))
    assert report == {"train": "inceptionv3.training.run", "evaluate": "inceptionv3.tasks.evaluate",
                      "predict": "inceptionv3.tasks.predict", "metrics.fid": "inceptionv3.metrics.pipeline",
                      "metrics": "inceptionv3.metrics"}


def test_predict_does_not_import_torchvision(tmp_path: Path):
    # torchvision is for training augmentation only; inference transforms are PIL and torch.
    from PIL import Image

    from inceptionv3.models.mini import inception_mini
    from inceptionv3.weights.io import save_model
    from inceptionv3.weights.preprocess import Preprocess

    weights = save_model(inception_mini(num_classes=3), tmp_path / "mini.safetensors",
                         class_names=["a", "b", "c"], preprocess=Preprocess(input_size=32, resize_size=36))
    image = tmp_path / "x.png"
    Image.new("RGB", (40, 30), (10, 200, 30)).save(image)
    report = _python(textwrap.dedent("""
        import contextlib, io, json, sys
        from inceptionv3.cli.main import main
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(["predict", sys.argv[1], "--weights", sys.argv[2], "--format", "json",
                         "--no-progress", "--device", "cpu", "--workers", "0"])
        rows = len(json.loads(out.getvalue()))
        print(json.dumps({"exit": code, "rows": rows, "torchvision": "torchvision" in sys.modules}))
        """), str(image), str(weights))
    assert report == {"exit": 0, "rows": 1, "torchvision": False}


def test_weights_list_loads_no_torch():
    # The registry is data: listing it needs neither torch nor a network.
    report = _python(textwrap.dedent("""
        import contextlib, io, json, sys
        from inceptionv3.cli.main import main
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(["weights", "list"])
        print(json.dumps({"exit": code, "fid": "fid" in out.getvalue().split(),
                          "torch": "torch" in sys.modules}))
        """))
    assert report == {"exit": 0, "fid": True, "torch": False}


# Where a 64 MB block lands (glibc hands blocks above 32 MB to mmap unless told to keep them in its heap):
# prepare_process for the command module COMMAND as the command line calls it, or nothing.
_BIG_BLOCK = textwrap.dedent("""
    import json, sys
    import numpy as np
    from inceptionv3.cli.main import INFERENCE_COMMANDS
    from inceptionv3.runtime.threads import prepare_process
    if sys.argv[1] != "-":
        prepare_process(inference=sys.argv[1] in INFERENCE_COMMANDS)
    block = np.ones(64 << 20, np.uint8)
    heap = [line.split()[0] for line in open("/proc/self/maps") if line.rstrip().endswith("[heap]")]
    lo, hi = (int(x, 16) for x in heap[0].split("-")) if heap else (0, 0)
    print(json.dumps({"in_heap": lo <= block.ctypes.data < hi}))
    """)


@pytest.mark.skipif(not sys.platform.startswith("linux") or not Path("/proc/self/maps").is_file(),
                    reason="glibc's allocator on Linux")
@pytest.mark.parametrize(("command", "env", "in_heap"), [
    ("features", {}, True), ("fid", {}, True), ("serve", {}, True),
    ("train", {}, False), ("-", {}, False),
    ("features", {"MALLOC_ARENA_MAX": "2"}, False),     # the user's own malloc settings win
])
def test_inference_commands_keep_freed_memory_for_reuse(command, env, in_heap, monkeypatch):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert _python(_BIG_BLOCK, command) == {"in_heap": in_heap}
