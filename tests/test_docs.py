"""The examples in docstrings, the README and docs/*.md run, and print what they claim.

How the pages' code blocks are run (every fenced block of README.md and docs/*.md):

* A block is run unless the last non-blank line before its opening fence is
  ``<!-- not run: REASON -->`` (a reason is required: a GPU, a network download, several machines,
  the full demo's minute, a block that is not code, ...). Every block that is not so marked must be
  one of the kinds below and must run: a page whose unmarked block is of another kind fails.
* The blocks of one page run in order, in one scratch directory (the working directory of both
  Python and shell), so a later block can use what an earlier one wrote or defined.
* ```` ```python ````: executed; the blocks of a page share one namespace. Output is shown as
  comment lines starting with ``# ->`` (``# -> text``; ``# ->`` alone is an empty line): the
  stdout printed by the code since the previous such group must equal those lines. Lines of shown
  output are compared as doctest does with ELLIPSIS: ``...`` matches anything, also across lines;
  trailing blanks are ignored. Output printed with no ``# ->`` lines after it is not compared.
* ```` ```python file=NAME ````: not executed; its text is written to NAME in the scratch
  directory (a model file that a later ``fastdissect --model NAME:factory`` command loads) and is
  compiled to catch syntax errors.
* ```` ```console ````: lines starting with ``$ `` are commands (continued onto the next line by a
  trailing backslash), run with bash in the scratch directory with the venv's ``bin`` first on
  PATH; the lines after a command, up to the next ``$ ``, are its output (stdout and stderr as a
  terminal shows them), compared as above. A command must exit with status 0, unless its shown
  output ends with the line ``[exit status N]``.
* ```` ```bash ````: the whole block runs as one ``bash -euo pipefail`` script; it must exit with
  status 0 (no output is compared).
"""

from __future__ import annotations

import contextlib
import doctest
import importlib
import io
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

MODULES = ["fastdissect", "fastdissect.engine.scoring", "fastdissect.core.masks", "fastdissect.core.quantile",
           "fastdissect.engine.top_quantile", "fastdissect.engine.top_images", "fastdissect.files.identity", "fastdissect.kernels.ext", "fastdissect.datasets.custom",
           "fastdissect.datasets.builtin", "fastdissect.engine.compositional", "fastdissect.core.formula", "fastdissect.engine.unit_masks", "fastdissect.analyses.rotation", "fastdissect.files.atomic",
           "fastdissect.core.formula_masks", "fastdissect.core.deprecation", "fastdissect.files.tensorfile",
           "fastdissect.engine.pixel_correlation", "fastdissect.analyses.attribution",
           "fastdissect.analyses.visualization.result"]
ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README] + sorted((ROOT / "docs").glob("*.md"))
README_LIMIT = 8192  # bytes
COMMAND_TIMEOUT = 300  # seconds per shell command
NOT_RUN = re.compile(r"^<!--\s*not run:\s*(.*?)\s*-->$")
OUTPUT = re.compile(r"^# ->(?: (.*))?$")
EXIT = re.compile(r"^\[exit status (\d+)\]$")


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


# ---- the pages' code blocks

@dataclass
class Block:
    page: Path
    line: int                 # line number of the opening fence (1-based)
    lang: str
    attrs: dict
    text: str
    not_run: str | None       # the reason, when marked
    ran: bool = field(default=False)

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    lines = page.read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        m = re.match(r"^```(\S*)\s*(.*)$", lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(1)
        attrs = dict(a.split("=", 1) for a in m.group(2).split() if "=" in a)
        j = i + 1
        while j < len(lines) and not re.match(r"^```\s*$", lines[j]):
            j += 1
        assert j < len(lines), f"{page.name}:{start + 1}: unclosed code block"
        before = next((lines[k].strip() for k in range(start - 1, -1, -1) if lines[k].strip()), "")
        marked = NOT_RUN.match(before)
        found.append(Block(page, start + 1, lang, attrs, "\n".join(lines[start + 1:j]) + "\n",
                           marked.group(1) if marked else None))
        i = j + 1
    return found


def check_output(block: Block, line: int, want: list[str], got: str, what: str):
    want_text = "\n".join(x.rstrip() for x in want) + "\n"
    got_text = "\n".join(x.rstrip() for x in got.rstrip("\n").split("\n")) + "\n" if got else ""
    if not doctest.OutputChecker().check_output(want_text, got_text, doctest.ELLIPSIS):
        pytest.fail(f"{block.page.name}:{line}: {what} printed\n{got_text}\nbut the page shows\n{want_text}",
                    pytrace=False)


def run_python(block: Block, namespace: dict):
    lines = block.text.split("\n")
    code, want, first = [], [], 0  # first: index in `lines` of the chunk's first line

    def flush(end):
        nonlocal code, want, first
        if code or want:
            source = "\n" * (block.line + first) + "\n".join(code)  # keep the page's line numbers
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                exec(compile(source, str(block.page), "exec"), namespace)
            if want:
                check_output(block, block.line + 1 + end - len(want), want, out.getvalue(), "this block")
        code, want, first = [], [], end

    for n, text in enumerate(lines):
        m = OUTPUT.match(text)
        if m:
            want.append(m.group(1) or "")
        else:
            if want:
                flush(n)
            code.append(text)
    flush(len(lines))


def shell_env() -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONWARNINGS="default")
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def run_console(block: Block, cwd: Path):
    lines = block.text.rstrip("\n").split("\n")
    commands = []  # (line number, command, shown output lines)
    i = 0
    while i < len(lines):
        assert lines[i].startswith("$ "), f"{block.where}: console line {i + 1} is neither a command nor output"
        line, command = block.line + 1 + i, lines[i][2:]
        while command.endswith("\\") and i + 1 < len(lines):
            i += 1
            command += "\n" + lines[i]  # bash joins the lines
        i += 1
        shown = []
        while i < len(lines) and not lines[i].startswith("$ "):
            shown.append(lines[i])
            i += 1
        commands.append((line, command, shown))
    for line, command, shown in commands:
        try:
            done = subprocess.run(["bash", "-c", command], cwd=cwd, env=shell_env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, timeout=COMMAND_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{block.page.name}:{line}: `{command}` ran longer than {COMMAND_TIMEOUT} s", pytrace=False)
        got = done.stdout.rstrip("\n") + f"\n[exit status {done.returncode}]\n" if done.returncode else done.stdout
        if shown:
            check_output(block, line, shown, got, f"`{command}`")
        elif done.returncode:
            pytest.fail(f"{block.page.name}:{line}: `{command}` failed:\n{got}", pytrace=False)


def run_bash(block: Block, cwd: Path):
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", block.text], cwd=cwd, env=shell_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=COMMAND_TIMEOUT)
    if done.returncode:
        pytest.fail(f"{block.where}: the bash block failed (exit status {done.returncode}):\n{done.stdout}",
                    pytrace=False)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_page_code_blocks_run_and_print_what_they_show(page, tmp_path, monkeypatch):
    found = blocks(page)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    namespace = {"__name__": "__main__"}
    for block in found:
        if block.not_run is not None:
            assert block.not_run, f"{block.where}: a block marked not run must say why"
            continue
        if block.lang == "python" and "file" in block.attrs:
            compile(block.text, block.attrs["file"], "exec")
            (tmp_path / block.attrs["file"]).write_text(block.text)
        elif block.lang == "python":
            run_python(block, namespace)
        elif block.lang == "console":
            run_console(block, tmp_path)
        elif block.lang == "bash":
            run_bash(block, tmp_path)
        else:
            pytest.fail(f"{block.where}: a ```{block.lang} block cannot be run: mark it <!-- not run: why -->",
                        pytrace=False)
        block.ran = True
    assert all(b.ran for b in found if b.not_run is None)


# ---- the pages themselves

def test_readme_is_short_and_links_every_page():
    assert README.stat().st_size <= README_LIMIT, f"README.md is {README.stat().st_size} bytes (limit {README_LIMIT})"
    text = README.read_text()
    for page in PAGES[1:]:
        assert f"docs/{page.name}" in text, f"README.md does not link docs/{page.name}"
    assert "`bash .ci/run`" in text or "bash .ci/run\n" in text, "the README's test command is what CI runs"


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    out, fenced = set(), False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return out


def test_links_between_pages_and_to_files_resolve():
    figures = set((ROOT / "docs" / "figures").glob("*.png"))
    shown = set()
    for page in PAGES:
        text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            assert resolved.exists(), f"{page.name}: link to {target}: no such file"
            shown.add(resolved)
            if anchor and resolved.suffix == ".md":
                assert anchor in anchors(resolved), f"{page.name}: link to {target}: no such heading"
    assert figures <= shown, f"figures no page shows: {sorted(p.name for p in figures - shown)}"


def test_the_runner_catches_wrong_output_and_unmarked_blocks(tmp_path, monkeypatch):
    page = tmp_path / "page.md"
    page.write_text("```python\nprint('a')\n# -> a\nprint('b c')\n# -> b ...\n```\n\n"
                    "```console\n$ echo x; exit 3\nx\n[exit status 3]\n```\n\n"
                    "<!-- not run: an example -->\n```text\nanything\n```\n")
    found = blocks(page)
    assert [b.lang for b in found] == ["python", "console", "text"] and found[2].not_run == "an example"
    monkeypatch.chdir(tmp_path)
    run_python(found[0], {})
    run_console(found[1], tmp_path)
    page.write_text("```python\nprint('a')\n# -> b\n```\n\n```console\n$ exit 1\n```\n")
    wrong, failing = blocks(page)
    with pytest.raises(pytest.fail.Exception, match="printed"):
        run_python(wrong, {})
    with pytest.raises(pytest.fail.Exception, match="failed"):
        run_console(failing, tmp_path)
