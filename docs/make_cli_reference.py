"""Write docs/cli.md, the reference of every `edgecxr` command, from the click commands themselves.

    python docs/make_cli_reference.py           # (re)write docs/cli.md
    python docs/make_cli_reference.py --check   # exit 1, one line, when docs/cli.md is not current

Every command is loaded (the stage commands of edgecxr.cli's lazy table and every subcommand of a group such as
`device`) and walked in the order click lists them. The output depends on the commands only: defaults are printed
as declared (a default computed at run time prints as click's show_default text, or "computed"), never with a
machine's paths. tests/test_docs.py checks that docs/cli.md equals render().
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import click

OUT = Path(__file__).resolve().parent / "cli.md"
COMMAND = "python docs/make_cli_reference.py"


def walk(command: click.Command, ctx: click.Context):
    """(command, context) for `command` and every command below it, depth first, in the order click lists them."""
    yield command, ctx
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is None or getattr(sub, "hidden", False):
                continue
            yield from walk(sub, click.Context(sub, info_name=name, parent=ctx, **sub.context_settings))


def _unavailable(command: click.Command) -> bool:
    return (command.help or "").startswith("(unavailable)")  # edgecxr.cli's placeholder for a stage that failed to import


def _escape(text: str, table: bool = False) -> str:
    """Markdown-safe prose: `*` and `<` escaped outside code spans; `|` escaped everywhere in a table cell."""
    parts = text.split("`")
    for i in range(0, len(parts), 2):  # outside backticks
        parts[i] = parts[i].replace("*", r"\*").replace("<", "&lt;")
    out = "`".join(parts)
    return out.replace("|", r"\|") if table else out


def _help_markdown(text: str) -> str:
    """click's help text as Markdown: paragraphs re-flowed as click does, `\\b` paragraphs kept verbatim."""
    text = text.split("\f", 1)[0]
    blocks = []
    for para in re.split(r"\n\s*\n", text.strip()):
        lines = para.splitlines()
        if lines and lines[0].strip() == "\b":
            body = [line.rstrip() for line in lines[1:]]
            indent = min((len(line) - len(line.lstrip()) for line in body if line.strip()), default=0)
            blocks.append("```text\n" + "\n".join(line[indent:] for line in body) + "\n```")
        else:
            blocks.append(_escape(" ".join(line.strip() for line in lines)))
    return "\n\n".join(blocks)


def _type(param: click.Parameter) -> str:
    kind = param.type
    if isinstance(param, click.Option) and param.is_flag and not param.count:
        return "flag"
    if isinstance(kind, click.Choice):
        return " \\| ".join(f"`{c}`" for c in kind.choices)
    if hasattr(kind, "_describe_range"):  # IntRange, FloatRange
        return f"{kind.name.replace(' range', '')} ({kind._describe_range()})"
    return kind.name


def _default(param: click.Parameter, ctx: click.Context) -> str:
    if isinstance(param, click.Option) and isinstance(param.show_default, str):
        return _escape(param.show_default, table=True)
    value = param.default
    if callable(value):
        return "computed"
    if value is None or value is getattr(click.core, "UNSET", object()) or value == () or value == []:
        return ""
    if isinstance(param, click.Option) and param.is_flag and not param.count:
        if param.secondary_opts:  # --x/--no-x: the one that is on
            return f"`{(param.opts if value else param.secondary_opts)[0]}`"
        return "on" if value else ""
    if isinstance(value, (list, tuple)):
        return ", ".join(f"`{v}`" for v in value)
    if isinstance(value, (str, os.PathLike)) and (os.path.isabs(os.fspath(value)) or os.fspath(value).startswith("~")):
        return "computed"
    return f"`{value}`"


def _names(param: click.Parameter) -> str:
    if isinstance(param, click.Argument):
        return f"`{param.human_readable_name}`"
    return " / ".join(", ".join(f"`{o}`" for o in opts) for opts in (param.opts, param.secondary_opts) if opts)


def _param_help(param: click.Parameter) -> str:
    notes = []
    if isinstance(param, click.Argument):
        notes.append("Argument" + (", one or more" if param.nargs == -1 and param.required else
                                   ", any number" if param.nargs == -1 else ""))
        if not param.required and param.nargs != -1:
            notes.append("optional")
    else:
        if param.required:
            notes.append("Required")
        if param.multiple and "repeatable" not in (param.help or "").lower():
            notes.append("Repeatable")
        if param.envvar:
            envvars = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar)
            notes.append("Environment: " + ", ".join(f"`{e}`" for e in envvars))
    text = " ".join((getattr(param, "help", None) or "").split())
    return _escape(" ".join(filter(None, [text, ". ".join(notes) + "." if notes else ""])), table=True)


def _section(command: click.Command, ctx: click.Context) -> str:
    path = ctx.command_path
    lines = [f"## `{path}`", "", "```text", " ".join([path, *command.collect_usage_pieces(ctx)]), "```", ""]
    if command.help:
        lines += [_help_markdown(command.help), ""]
    params = [p for p in command.params if not getattr(p, "hidden", False)]
    if params:
        lines += ["| option | type | default | help |", "|---|---|---|---|"]
        lines += [f"| {_names(p)} | {_type(p)} | {_default(p, ctx)} | {_param_help(p)} |" for p in params]
        lines.append("")
    if isinstance(command, click.Group):
        lines += ["| command | what it does |", "|---|---|"]
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is not None and not getattr(sub, "hidden", False):
                anchor = re.sub(r"[^a-z0-9 -]", "", f"{path} {name}".lower()).replace(" ", "-")
                short = _escape(sub.get_short_help_str(limit=200), table=True)
                lines.append(f"| [`{path} {name}`](#{anchor}) | {short} |")
        lines.append("")
    return "\n".join(lines)


def render() -> str:
    """The Markdown reference of every edgecxr command, as docs/cli.md holds it."""
    from edgecxr.cli import main

    # the contexts take the commands' own settings, as click's make_context does: click caches each command's
    # help option from the first context it sees, and a bare Context would leave `edgecxr -h` without -h
    root = click.Context(main, info_name="edgecxr", **main.context_settings)
    found = list(walk(main, root))
    broken = [ctx.command_path for command, ctx in found if _unavailable(command)]
    if broken:
        raise RuntimeError(f"these commands do not import, so their reference cannot be written: {', '.join(broken)} "
                           f"(run `edgecxr {broken[0].split(' ', 1)[-1]}` to see why)")
    head = ("<!-- Generated from the click commands by docs/make_cli_reference.py: do not edit by hand; "
            f"run `{COMMAND}` after changing a command. -->\n\n"
            "# Command-line reference\n\n"
            "Every `edgecxr` command, its options and their defaults, as the installed commands declare them. "
            "Every command also takes `-h` / `--help`. Exit codes: 0 done, 1 a gate said no, 2 a usage or input "
            "error, 3 an internal error ([reliability.md](reliability.md)).\n")
    body = "\n".join(_section(command, ctx) for command, ctx in found)
    text = head + "\n" + body
    return "\n".join(line.rstrip() for line in text.splitlines()).rstrip("\n") + "\n"


def main(argv: list[str]) -> int:
    if argv not in ([], ["--check"]):
        print(f"usage: {COMMAND} [--check]", file=sys.stderr)
        return 2
    text = render()
    if argv == ["--check"]:
        if not OUT.is_file() or OUT.read_text() != text:
            print(f"docs/cli.md is not current with the CLI; run `{COMMAND}` and commit the result", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(Path.cwd()) if OUT.is_relative_to(Path.cwd()) else OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
