"""The documentation stays true to the code: the generated CLI reference is fresh, links and anchors
resolve, the command lines and Python in README.md and docs/ name flags and functions that exist."""
from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import importlib.util
import inspect
import io
import re
import shlex
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").glob("*.md"))
DOCS = [README, *PAGES]
REGENERATE = "make docs (or .venv/bin/python scripts/cli_reference.py)"
# Paths the docs name that belong to other projects (TF-slim's model file).
EXTERNAL_PATHS = {"nets/inception_v3.py"}

FENCE = re.compile(r"^(?P<indent> {0,3})```(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.DOTALL | re.MULTILINE)


def _cli_reference():
    spec = importlib.util.spec_from_file_location("cli_reference", ROOT / "scripts" / "cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _blocks(path: Path, languages: tuple[str, ...]) -> list[tuple[str, str]]:
    """(body, the line before the fence) of each fenced block in ``path`` whose info string is a language."""
    text = path.read_text(encoding="utf-8")
    found = []
    for m in FENCE.finditer(text):
        if m.group("info").strip() in languages:
            before = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1]
            found.append((m.group("body"), before))
    return found


def _prose(text: str) -> str:
    """``text`` without fenced blocks and inline code, where links are not links."""
    text = FENCE.sub("", text)
    return re.sub(r"`[^`\n]*`", "", text)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation removed, spaces -> '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)   # [text](link) -> text
    text = text.replace("`", "").replace("*", "").lower().strip()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return kept.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for line in FENCE.sub("", path.read_text(encoding="utf-8")).splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = _slug(m.group(1))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def test_cli_reference_is_fresh():
    expected = _cli_reference().render()
    current = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert current == expected, f"docs/cli.md is stale: the command-line parsers changed. Run {REGENERATE}"


def test_cli_reference_check_reports_stale_file(tmp_path, monkeypatch, capsys):
    ref = _cli_reference()
    out = tmp_path / "docs" / "cli.md"
    monkeypatch.setattr(ref, "ROOT", tmp_path)
    monkeypatch.setattr(ref, "OUT", out)
    assert ref.main(["--check"]) == 1                      # missing
    assert "docs/cli.md is stale" in capsys.readouterr().err
    assert ref.main([]) == 0 and out.read_text(encoding="utf-8") == ref.render()
    assert ref.main(["--check"]) == 0
    out.write_text(out.read_text(encoding="utf-8").replace("--top-k", "--top"), encoding="utf-8")
    assert ref.main(["--check"]) == 1
    assert "make docs" in capsys.readouterr().err


def test_cli_reference_documents_every_command_and_flag():
    from inceptionv3.cli.main import build_parser

    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in sub.choices.items():
        assert f"## inceptionv3 {name}\n" in text
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            for flag in action.option_strings:
                assert f"`{flag}" in text or f", {flag}" in text, f"{name} {flag} missing from docs/cli.md"


def test_cli_reference_imports_no_torch():
    # The parsers are torch-free, so `make docs` runs without the heavy dependencies.
    code = ("import runpy, sys; ns = runpy.run_path(sys.argv[1]); ns['render'](); "
            "heavy = [m for m in ('torch', 'torchvision', 'onnx', 'openvino') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    res = subprocess.run([sys.executable, "-c", code, str(ROOT / "scripts" / "cli_reference.py")],
                         check=False, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"rendering docs/cli.md imported {res.stdout.strip()}: {res.stderr}"


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", _prose(page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z]+:", target):          # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if not dest.exists():
            broken.append(f"{target}: no file {dest.relative_to(ROOT) if ROOT in dest.parents else dest}")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target}: no heading with anchor #{anchor} in {dest.name}")
    assert not broken, f"{page.name}: broken links:\n" + "\n".join(broken)


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.name)
def test_named_files_exist(page):
    text = page.read_text(encoding="utf-8")
    missing = [p for p in set(re.findall(r"(?<![\w./-])((?:[\w.-]+/)+[\w.-]+\.py)\b", text))
               if p not in EXTERNAL_PATHS and not any((base / p).exists()
                                                      for base in (ROOT, ROOT / "src" / "inceptionv3"))]
    assert not missing, f"{page.name} names files that do not exist: {sorted(missing)}"


def _resolve_dotted(name: str):
    """The object a dotted ``inceptionv3.x.y`` name refers to (a module, or an attribute of one)."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(name)


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.name)
def test_named_python_objects_exist(page):
    names = set()
    for span in re.findall(r"`([^`\n]+)`", FENCE.sub("", page.read_text(encoding="utf-8"))):
        names.update(re.findall(r"(?<![\w.])inceptionv3(?:\.[A-Za-z_]\w*)+", span))
    missing = []
    for name in sorted(names):
        try:
            _resolve_dotted(name)
        except (ImportError, AttributeError) as e:
            missing.append(f"{name} ({e})")
    assert not missing, f"{page.name} names Python objects that do not exist: {missing}"


def _command_lines(body: str) -> list[list[str]]:
    """The argument lists of the ``inceptionv3`` calls in a shell block (also ``torchrun -m inceptionv3``)."""
    calls = []
    for line in body.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        tokens = list(lexer)
        for i, token in enumerate(tokens):
            if token == "inceptionv3" and (i == 0 or tokens[i - 1] == "-m" or "=" in tokens[i - 1]):
                args = []
                for t in tokens[i + 1:]:
                    if t in (">", ">>", "|", "&&", ";", "&", "<", "2>"):
                        break
                    args.append(t)
                calls.append(args)
                break
    return calls


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.name)
def test_command_lines_parse(page):
    """Every `inceptionv3 ...` line in a shell block uses commands and flags the parser knows."""
    from inceptionv3.cli.main import build_parser

    bad = []
    for body, _ in _blocks(page, ("sh", "bash", "shell", "console")):
        for args in _command_lines(body):
            err = io.StringIO()
            try:
                with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                    build_parser().parse_args(args)
            except SystemExit as e:
                if e.code not in (0, None):
                    bad.append(f"inceptionv3 {' '.join(args)}\n    {err.getvalue().strip().splitlines()[-1]}")
    assert not bad, f"{page.name}: command lines the parser rejects:\n" + "\n".join(bad)


class _Placeholder:
    """Stands for an argument whose value is not a literal (a variable, an expression)."""


def _call_args(call: ast.Call) -> tuple[list, dict]:
    def value(node):
        try:
            return ast.literal_eval(node)
        except ValueError:
            return _Placeholder()
    args = [value(a) for a in call.args if not isinstance(a, ast.Starred)]
    kwargs = {k.arg: value(k.value) for k in call.keywords if k.arg is not None}
    return args, kwargs


def _check_python(code: str) -> list[str]:
    """Problems with the package names a Python example uses: imports, attributes and call signatures."""
    tree = ast.parse(code)
    bound: dict[str, str] = {}   # local name -> dotted name in the package
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "inceptionv3":
                    bound[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else "inceptionv3"
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "inceptionv3":
            for alias in node.names:
                bound[alias.asname or alias.name] = f"{node.module}.{alias.name}"

    def dotted(node) -> str | None:
        if isinstance(node, ast.Name):
            return bound.get(node.id)
        if isinstance(node, ast.Attribute):
            base = dotted(node.value)
            return f"{base}.{node.attr}" if base else None
        return None

    problems = []
    for name in sorted(set(bound.values())):
        try:
            _resolve_dotted(name)
        except (ImportError, AttributeError) as e:
            problems.append(f"import {name}: {e}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and (name := dotted(node)):
            try:
                _resolve_dotted(name)
            except (ImportError, AttributeError) as e:
                problems.append(f"{name}: {e}")
        if isinstance(node, ast.Call) and (name := dotted(node.func)):
            try:
                target = _resolve_dotted(name)
                args, kwargs = _call_args(node)
                inspect.signature(target).bind(*args, **kwargs)
            except (ImportError, AttributeError) as e:
                problems.append(f"{name}: {e}")
            except (TypeError, ValueError) as e:
                problems.append(f"{ast.unparse(node)}: {e}")
    return problems


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.name)
def test_python_examples_use_real_api(page):
    problems = []
    for code, _ in _blocks(page, ("python",)):
        problems += _check_python(code)
    assert not problems, f"{page.name}: Python examples out of step with the package:\n" + "\n".join(problems)


def test_readme_python_example_uses_the_public_api():
    # The README's example needs downloaded weights, so it is checked, not run: every iv3.* name it uses
    # exists and every call binds to the real signature.
    (code, _), *_ = _blocks(README, ("python",))
    assert "import inceptionv3 as iv3" in code
    assert len(code.strip().splitlines()) <= 6
    assert not _check_python(code)
    used = set(re.findall(r"iv3\.([\w.]+)\(", code))
    assert {"load_model", "predict", "extract_features", "train", "TrainConfig", "metrics.fid"} <= used


def test_python_examples_marked_to_run_do_run():
    """Blocks under a `<!-- docs-test: run -->` line need no downloads; they run as written."""
    ran = 0
    for page in DOCS:
        for code, before in _blocks(page, ("python",)):
            if before.strip() == "<!-- docs-test: run -->":
                # Our own documentation's example, run as a reader would paste it.
                exec(compile(code, f"{page.name} example", "exec"), {"__name__": "docs_example"})  # noqa: S102
                ran += 1
    assert ran >= 1


def test_readme_front_page():
    text = README.read_text(encoding="utf-8")
    size = len(text.encode("utf-8"))
    assert size < 15_000, f"README.md is {size} bytes; keep the front page under 15 KB (details go to docs/)"
    first_screen = "\n".join(text.splitlines()[:40])
    for needed in ("make demo", "make test", "pip install -e .", "import inceptionv3 as iv3"):
        assert needed in first_screen, f"{needed!r} is not in README.md's first 40 lines"
    from inceptionv3.weights.registry import REGISTRY
    missing = [name for name in REGISTRY if f"`{name}`" not in first_screen]
    assert not missing, f"weights missing from README.md's table in its first 40 lines: {missing}"
    for page in PAGES:
        assert f"docs/{page.name}" in first_screen, f"README.md's first 40 lines do not link docs/{page.name}"


def test_readme_names_every_extra():
    tomllib = pytest.importorskip("tomllib")   # Python >= 3.11
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "optional-dependencies"]
    text = README.read_text(encoding="utf-8")
    missing = [name for name in extras if f"`{name}`" not in text]
    assert not missing, f"README.md does not mention the extras {missing}"


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.name)
def test_no_issue_numbers_or_history(page):
    text = page.read_text(encoding="utf-8")
    found = re.findall(r"(?i)\bissue\s*#?\d+|#\d{2,}\b|\bused to\b|\bthe first round\b|\bpreviously\b|"
                       r"\bno longer\b|\bbefore the (?:move|change|split)\b", text)
    assert not found, f"{page.name} speaks of issues or history: {found}"
