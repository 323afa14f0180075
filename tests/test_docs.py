"""The documentation stays true to the code: the CLI reference is current, the front page stays a front page,
every link resolves inside the repository, and every command the README shows exists."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import click

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
PAGES = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```", flags=re.S | re.M)


def _reference_module():
    spec = importlib.util.spec_from_file_location("make_cli_reference", DOCS / "make_cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _without_code(text: str) -> str:
    """Markdown prose only: fenced blocks and inline code spans removed (their brackets are not links)."""
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))


def _links(text: str) -> list[str]:
    prose = _without_code(text)
    inline = re.findall(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", prose)
    reference = re.findall(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", prose, flags=re.M)
    return inline + reference


def test_docs_cli_reference_is_current():
    """docs/cli.md is what docs/make_cli_reference.py renders from the click commands now."""
    rendered = _reference_module().render()
    current = (DOCS / "cli.md").read_text() if (DOCS / "cli.md").is_file() else ""
    assert current == rendered, ("docs/cli.md differs from the CLI's commands and options: run "
                                 "`python docs/make_cli_reference.py` and commit docs/cli.md")


def test_docs_cli_reference_check_mode(tmp_path, monkeypatch, capsys):
    """--check exits 1 with one line when the file differs, 0 when it is current; no machine paths in it."""
    module = _reference_module()
    text = module.render()
    assert "/work/" not in text and "/home/" not in text and str(Path.home()) not in text
    monkeypatch.setattr(module, "OUT", tmp_path / "cli.md")
    assert module.main(["--check"]) == 1
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    (tmp_path / "cli.md").write_text(text)
    assert module.main(["--check"]) == 0


def test_readme_is_a_front_page():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; it is the front page (at most 250): move detail into docs/"


def test_docs_links_resolve_inside_the_repository():
    """Every relative link of README.md and docs/*.md names a file or folder of this repository."""
    bad = []
    for page in PAGES:
        for target in _links(page.read_text()):
            if re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith("#"):
                continue  # http(s), mailto: and anchors in the same page
            path = (page.parent / target.split("#", 1)[0]).resolve()
            where = f"{page.relative_to(REPO)}: ({target})"
            if not path.is_relative_to(REPO):
                bad.append(f"{where} points outside the repository")
            elif not path.exists():
                bad.append(f"{where} does not exist")
    assert not bad, "\n".join(bad)


def test_readme_links_every_docs_page():
    linked = {(REPO / target.split("#", 1)[0]).resolve() for target in _links((REPO / "README.md").read_text())}
    missing = [p.relative_to(REPO).as_posix() for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]
    assert not missing, f"README.md's 'Read on' list does not link {missing}"


def _readme_commands() -> list[tuple[str, ...]]:
    """The words after `edgecxr` (options skipped) wherever a README code block runs it."""
    found = []
    for lang, body in FENCE.findall((REPO / "README.md").read_text()):
        if lang.strip() not in ("", "bash", "sh", "shell", "console"):
            continue
        for line in body.replace("\\\n", " ").splitlines():
            for rest in re.findall(r"(?:^|&&|\|\||[;|(])\s*(?:\$\s+)?edgecxr[ \t]+([^#;&|]*)", line):
                found.append(tuple(w for w in rest.split() if not w.startswith("-")))
    return found


def test_readme_commands_are_real_commands():
    from edgecxr.cli import main

    commands = _readme_commands()
    assert len(commands) >= 5, commands  # the parser still finds the README's commands
    root = click.Context(main, info_name="edgecxr")
    bad = []
    for words in commands:
        if not words:
            continue
        command = main.get_command(root, words[0])
        if command is None or (command.help or "").startswith("(unavailable)"):
            bad.append(f"edgecxr {words[0]}")
        elif isinstance(command, click.Group):
            ctx = click.Context(command, info_name=words[0], parent=root)
            if len(words) < 2 or command.get_command(ctx, words[1]) is None:
                bad.append(f"edgecxr {' '.join(words[:2])}")
    assert not bad, f"README.md names commands the CLI does not have: {bad}"
