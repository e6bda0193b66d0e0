"""Every console script has a lint-clean man page whose OPTIONS match --help.

Pages are written in mdoc(7).  In the OPTIONS section every option is an
``.It`` line whose ``Fl`` macros name the option (``.It Fl p Ar port``,
``.It Fl dtb , Fl \\-base``); the set of options named there must equal the
set of option strings that ``--help`` prints.  Section 5 pages are linted
only.  A page may also be in man(7) with ``.TP`` items and ``.B \\-x`` tags.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import procs

ROOT = procs.ROOT
MAN = ROOT / "man"
SCRIPT_RE = re.compile(r"['\"]\s*([A-Za-z0-9_.-]+)\s*=\s*([A-Za-z0-9_.]+):([A-Za-z0-9_]+)\s*['\"]")


def console_scripts() -> list[tuple[str, str, str]]:
    return SCRIPT_RE.findall((ROOT / "setup.py").read_text())


def all_pages() -> list[Path]:
    return sorted(MAN.glob("*.[1-9]"))


def test_some_scripts_and_pages_exist():
    assert console_scripts(), "setup.py declares no console scripts"
    assert all_pages(), "man/ holds no pages"


@pytest.mark.parametrize("name,module,func", console_scripts())
def test_every_script_has_a_page(name, module, func):
    assert (MAN / f"{name}.1").is_file(), f"no man/{name}.1 for console script {name}"


@pytest.mark.parametrize("page", all_pages(), ids=lambda p: p.name)
def test_page_is_lint_clean(page):
    mandoc = shutil.which("mandoc")
    if mandoc is None:
        pytest.fail("mandoc is not installed (make test installs it)")
    res = subprocess.run(
        [mandoc, "-Tlint", "-W", "warning", str(page)], capture_output=True, text=True, timeout=30
    )
    out = (res.stdout + res.stderr).strip()
    assert not out, f"mandoc -Tlint findings for {page.name}:\n{out}"


def _unescape(tok: str) -> str:
    return tok.replace("\\-", "-").replace("\\&", "")


def page_options(text: str) -> set[str]:
    """Option strings named in the OPTIONS section of an mdoc or man page."""
    lines = text.splitlines()
    opts: set[str] = set()
    in_opts = False
    tag_next = False
    for line in lines:
        if line.startswith((".Sh ", ".SH ")):
            in_opts = line.split(None, 1)[1].strip().strip('"').upper() == "OPTIONS"
            continue
        if not in_opts:
            continue
        if line.startswith(".It "):
            words = line[4:].split()
            for i, w in enumerate(words):
                if w == "Fl" and i + 1 < len(words):
                    opts.add("-" + _unescape(words[i + 1]).rstrip(","))
        elif line.startswith(".TP"):
            tag_next = True
        elif tag_next:
            tag_next = False
            for tok in re.findall(r"\\-(?:\\-)?[A-Za-z0-9][A-Za-z0-9_\\-]*", line):
                opts.add(_unescape(tok))
    return opts


def help_options(text: str) -> set[str]:
    """Option strings in argparse --help output (the invocation column)."""
    opts: set[str] = set()
    for line in text.splitlines():
        m = re.match(r"^\s{1,8}(-\S.*)$", line)
        if not m:
            continue
        invocation = re.split(r"\s{2,}", m.group(1), maxsplit=1)[0]
        for part in invocation.split(", "):
            tok = part.split()[0] if part.split() else ""
            if re.match(r"^--?[A-Za-z0-9][\w-]*$", tok):
                opts.add(tok)
    return opts


def run_help(module: str, func: str) -> str:
    code = f"import sys; from {module} import {func} as m; sys.exit(m(['--help']))"
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=procs.env(), timeout=60
    )
    assert res.returncode == 0, f"--help exited {res.returncode}: {res.stderr}"
    return res.stdout


@pytest.mark.parametrize("name,module,func", console_scripts())
def test_page_options_match_help(name, module, func):
    page = MAN / f"{name}.1"
    if not page.is_file():
        pytest.fail(f"no man page for {name}")
    documented = page_options(page.read_text())
    helped = help_options(run_help(module, func))
    assert helped, f"{name} --help shows no options"
    assert documented == helped, (
        f"{name}: only in man page {sorted(documented - helped)}, "
        f"only in --help {sorted(helped - documented)}"
    )


def test_parsers_understand_both_formats():
    mdoc = (
        ".Sh OPTIONS\n.Bl -tag\n.It Fl dtb , Fl \\-base\nx\n"
        ".It Fl p Ar port\n.El\n.Sh FILES\n.It Fl z\n"
    )
    assert page_options(mdoc) == {"-dtb", "--base", "-p"}
    man = '.SH OPTIONS\n.TP\n.BR \\-s ", " \\-\\-status\ntext\n.SH "SEE ALSO"\n'
    assert page_options(man) == {"-s", "--status"}
    helptext = "options:\n  --help     show\n  -p PORT, --port PORT  port\n  -dtb, --base\n"
    assert help_options(helptext) == {"--help", "-p", "--port", "-dtb", "--base"}
