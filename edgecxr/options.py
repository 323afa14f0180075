"""Options declared once.

Two halves, both click only (no NumPy, no TensorFlow: `edgecxr device ...` imports this):

* the options several commands take (--data, --classes, --strict, the parity tolerances, --threads,
  --overwrite, --trust-model, --json), each a factory whose default comes from its one home;
* the options of a command built from its typed configuration: a dataclass whose fields carry their
  option in metadata (`setting`), turned into click options by `config_options`, read back by
  `config_from`; `config_file_option` adds `--config FILE` (TOML, JSON or YAML whose keys are the option
  names), file values replacing the config's defaults and the command line winning over the file.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import typing
from pathlib import Path

import click

from edgecxr.data import DEFAULT_CLASSES
from edgecxr.parity.criteria import Tolerances
from edgecxr.utils.errors import ConfigError, first_line


# -- the options several commands take ------------------------------------------------------------------------
class NameList(click.ParamType):
    """Comma-separated names (shown as TEXT); a list, as a config file writes it, is joined."""

    name = "text"

    def convert(self, value, param, ctx):
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return ",".join(value)
        if not isinstance(value, str):
            self.fail(f"expected comma-separated names or a list of names, got {_shown(value)}", param, ctx)
        return value


def data_option(help="Kermany-layout folder ROOT/{train,val,test}/{NORMAL,PNEUMONIA} or a CSV manifest.", *,
                name="data", required=True, type=None, **attrs):
    return click.option("--data", name, required=required, type=type or click.Path(path_type=Path), help=help, **attrs)


def classes_option(help="The two class folder names, negative first.", **attrs):
    return click.option("--classes", default=",".join(DEFAULT_CLASSES), show_default=True, type=NameList(), help=help,
                        **attrs)


def strict_option(help="Stop at the first unreadable image instead of skipping it.", **attrs):
    return click.option("--strict", is_flag=True, help=help, **attrs)


def overwrite_option(help, **attrs):
    return click.option("--overwrite", is_flag=True, help=help, **attrs)


def trust_model_option(help="Allow models that contain code (Lambda layers): trusted files only.", **attrs):
    return click.option("--trust-model", is_flag=True, help=help, **attrs)


def threads_option(help="CPU threads of the runtime (default: the runtime's).", **attrs):
    return click.option("--threads", type=click.IntRange(min=1), help=help, **attrs)


def json_option(help="Write the full report here.", **attrs):
    return click.option("--json", "json_file", type=click.Path(path_type=Path), help=help, **attrs)


def _tolerance(attrs: dict, name: str) -> dict:
    """A parity limit's default: Tolerances' (shown), unless the command passes its own (None: the bundle's)."""
    default = attrs.pop("default", getattr(Tolerances, name))
    return {**({"default": default, "show_default": True} if default is not None else {}), **attrs}


def max_recall_drop_option(help, **attrs):
    return click.option("--max-recall-drop", help=help, **_tolerance(attrs, "max_recall_drop"))


def max_accuracy_drop_option(help, **attrs):
    return click.option("--max-accuracy-drop", help=help, **_tolerance(attrs, "max_accuracy_drop"))


def min_agreement_option(help, **attrs):
    return click.option("--min-agreement", help=help, **_tolerance(attrs, "min_agreement"))


DATA = data_option()
CLASSES = classes_option()
STRICT = strict_option()


# -- options built from a typed configuration -----------------------------------------------------------------
OPTION = "edgecxr.option"  # field metadata key
_FILE_ONLY = "edgecxr.config-file"  # ctx.meta key: the --config file's values for fields without an option


def option(help=None, *, shared=None, unset=False, to_config=None, **attrs) -> dict:
    """How a field appears on the command line.

    help: the option's help; shared: a factory of this module (its flag, type and default are the shared
    option's; `help` and `attrs` go to it); unset: the option has no default of its own (None or nothing
    given leaves the config's default); to_config: command-line value -> field value; attrs: click.option
    keywords, plus flag="--name" (default: the field name dashed) and secondary=True (--name/--no-name).
    """
    return {"help": help, "shared": shared, "unset": unset, "to_config": to_config, "attrs": attrs}


def setting(default=dataclasses.MISSING, help=None, *, factory=dataclasses.MISSING, nested=None, **option_kw):
    """A config field with its command-line option (see `option`). nested: {sub-field: option(...)} for a field
    holding a dataclass: its sub-fields' options are the command's, in this order."""
    meta = {"nested": nested} if nested is not None else option(help, **option_kw)
    return dataclasses.field(default=default, default_factory=factory, metadata={OPTION: meta})


def option_specs(cls):
    """(field, option name, spec, default) of every option of `cls`, in field order (a nested config's sub-fields
    in its place, named as they are)."""
    for f in dataclasses.fields(cls):
        meta = f.metadata.get(OPTION)
        if meta is None:
            continue
        if "nested" in meta:
            inner = f.default_factory()
            for name, spec in meta["nested"].items():
                yield f.name, name, spec, getattr(inner, name)
        else:
            yield f.name, f.name, meta, f.default


def _make_option(name: str, spec: dict, default):
    attrs = dict(spec["attrs"])
    if spec["help"] is not None:
        attrs["help"] = spec["help"]
    if spec["shared"] is not None:
        return spec["shared"](**attrs)
    flag = attrs.pop("flag", "--" + name.replace("_", "-"))
    if attrs.pop("secondary", False):
        flag = f"{flag}/--no-{flag[2:]}"
    elif attrs.get("is_flag") and default is False:
        default = None  # a plain flag is off unless given
    if not spec["unset"] and default is not None:
        attrs["default"] = default
    return click.option(flag, name, **attrs)


def config_options(cls, *, before: dict | None = None):
    """Decorator: one click option per field of `cls` that declares one, in field order; `before`
    {field name: [option decorators]} puts a command's own options before that field's."""
    decorators, seen = [], set()
    for field_name, name, spec, default in option_specs(cls):
        if field_name not in seen:
            seen.add(field_name)
            decorators += (before or {}).get(field_name, [])
        decorators.append(_make_option(name, spec, default))

    def decorate(f):
        for decorator in reversed(decorators):
            f = decorator(f)
        return f

    return decorate


def _nested(cls) -> dict:
    """{field name: {sub-field: option spec}} of the fields of `cls` that hold a dataclass of their own."""
    return {f.name: f.metadata[OPTION]["nested"] for f in dataclasses.fields(cls)
            if "nested" in f.metadata.get(OPTION, {})}


def _field_value(value, spec: dict, hint):
    """A command-line value as the field holds it; dataclasses.MISSING when the config's default applies."""
    if spec["unset"] and value in (None, ()):
        return dataclasses.MISSING
    if value is None:
        return None
    if spec["to_config"] is not None:
        return spec["to_config"](value)
    if isinstance(value, Path) and Path not in typing.get_args(hint) and hint is not Path:
        return str(value)  # a field typed str keeps paths as given
    return value


def config_from(cls, params: dict):
    """The config `cls` from a command's parsed options: its options' values are popped from `params` (what
    is left is the command's own) and a --config file's fields without an option are added."""
    ctx = click.get_current_context(silent=True)
    values = dict(ctx.meta.get(_FILE_ONLY, {})) if ctx else {}
    defaults = cls()
    inner = {name: {} for name in _nested(cls)}
    hints = {name: typing.get_type_hints(type(getattr(defaults, name))) for name in inner}
    for field_name, name, spec, _ in option_specs(cls):
        hint = (hints[field_name] if field_name in inner else typing.get_type_hints(cls)).get(name)
        value = _field_value(params.pop(name), spec, hint)
        if value is not dataclasses.MISSING:
            (inner[field_name] if field_name in inner else values)[name] = value
    for field_name, given in inner.items():
        values[field_name] = dataclasses.replace(getattr(defaults, field_name), **given)
    return cls(**values)


def configured(cls, config=None, settings: dict | None = None):
    """`config` (default: cls()) with `settings` replaced: the keyword form of a function taking a config."""
    config = cls() if config is None else config
    unknown = sorted(set(settings or ()) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise TypeError(f"unexpected keyword argument {unknown[0]!r}")
    return dataclasses.replace(config, **settings) if settings else config


# -- --config FILE ----------------------------------------------------------------------------------------------
def config_file_option(cls, help="Settings from a TOML, JSON or YAML file whose keys are the option names; "
                                 "options given on the command line win."):
    """--config FILE: its values become the command's defaults (click's default_map), so a required option
    may come from the file and the command line wins; keys that are fields of `cls` without an option are
    passed to config_from. Loaded first (eager), every key and value checked: one line, exit 2."""

    def load(ctx, param, path):
        if path is not None:
            given, file_only = _settings(ctx, cls, read_settings(path), path)
            ctx.default_map = {**(ctx.default_map or {}), **given}
            ctx.meta[_FILE_ONLY] = file_only
        return path

    return click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                        is_eager=True, expose_value=False, callback=load, help=help)


CONFIG_LIMIT = 1 << 20  # a settings file is a few hundred bytes; a megabyte is far more than one holds


def _no_duplicates(pairs):
    keys = [k for k, _ in pairs]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ValueError(f"key {twice[0]!r} given twice")
    return dict(pairs)


def read_settings(path: Path) -> dict:
    """A TOML, JSON or YAML file's table of settings; a ConfigError naming the file otherwise."""
    from edgecxr.utils.atomic import read_small

    suffix = path.suffix.lower()
    parser = json
    if suffix in (".yaml", ".yml"):
        try:
            import yaml as parser
        except ImportError:
            raise ConfigError(f"--config {path}: reading YAML needs PyYAML: pip install pyyaml "
                              "(or write the settings as TOML or JSON)") from None
    elif suffix not in (".toml", ".json"):
        raise ConfigError(f"--config {path}: unknown format {suffix or '(no suffix)'}; use .toml, .json, .yaml or .yml")
    kind = {".toml": "TOML", ".json": "JSON"}.get(suffix, "YAML")
    data = read_small(path, f"--config {path}", limit=CONFIG_LIMIT)
    try:
        text = data.decode("utf-8-sig")
        if kind == "TOML":
            import tomllib

            values = tomllib.loads(text)
        elif kind == "JSON":
            values = json.loads(text, object_pairs_hook=_no_duplicates)
        else:
            values = parser.safe_load(text)
    except (ValueError, RecursionError, getattr(parser, "YAMLError", ValueError)) as exc:  # syntax; not UTF-8; nesting
        raise ConfigError(f"--config {path}: not valid {kind}: {first_line(exc, 200)}") from None
    if values is None and kind == "YAML":
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path}: expected a table of settings (name = value), got {type(values).__name__}")
    return values


def _shown(value) -> str:
    """A file value in a message: its repr, cut short (a YAML alias can expand to gigabytes)."""
    import reprlib

    short = reprlib.Repr()
    short.maxstring = short.maxother = 60
    short.maxlist = short.maxdict = 4
    short.maxlevel = 2
    return short.repr(value)


def _settings(ctx, cls, raw: dict, path) -> tuple[dict, dict]:
    """(option values for click's default_map, values of fields without an option), each key and value checked."""
    options = {p.name: p for p in ctx.command.params
               if isinstance(p, click.Option) and p.expose_value and p.name}
    spelled = {o[2:]: p.name for p in options.values() for o in p.opts if o.startswith("--")}
    hints = typing.get_type_hints(cls)
    plain = {f.name for f in dataclasses.fields(cls) if OPTION not in f.metadata}
    nested = _nested(cls)
    given, file_only, where = {}, {}, {}
    items = [(key, value, False) for key, value in raw.items()]
    while items:
        key, value, inside = items.pop(0)
        if not isinstance(key, str):
            raise ConfigError(f"--config {path}: the key {_shown(key)} is not a name; the keys are option names")
        name = key if key in options or key in plain or key in nested else spelled.get(key, key.replace("-", "_"))
        if name in where:
            raise ConfigError(f"--config {path}: {key}: set twice (also as {where[name]!r}); keep one")
        if name in nested:  # e.g. [overrides] scale = 0.5 (or scale = 0.5 at the top)
            if inside or not isinstance(value, dict):
                raise ConfigError(f"--config {path}: {key}: expected a table of {', '.join(nested[name])} at the top "
                                  f"level, got {_shown(value)}")
            items += [(k, v, True) for k, v in value.items()]
            continue
        where[name] = key
        if name in options:
            checked = _checked(options[name], value, key, path)
            flag = options[name]
            if flag.is_flag and not flag.secondary_opts and checked is True:  # nothing on the command line undoes it
                raise ConfigError(f"--config {path}: {key}: a file cannot switch on {flag.opts[0]} (no option switches it "
                                  f"off again); give {flag.opts[0]} on the command line")
            if checked is not dataclasses.MISSING:
                given[name] = checked
        elif name in plain:
            file_only[name] = _checked_hint(hints[name], value, key, path)
            _check_json(value, key, path)
        else:
            near = difflib.get_close_matches(key, sorted(options) + sorted(plain), n=1)
            raise ConfigError(f"--config {path}: unknown key {key!r}" + (f" (did you mean {near[0]!r}?)" if near else "")
                              + f"; the keys are the option names of `edgecxr {ctx.command.name}`")
    return given, file_only


def option_default(param: click.Parameter):
    """A click parameter's own default; None when it has none (click 8.2+ says UNSET)."""
    default = param.default
    return None if default is None or default is getattr(click.core, "UNSET", None) else default


def _expected(param: click.Option) -> tuple[tuple, str] | None:
    """(Python types a file value may have, what to say) for a click option; None: its type decides."""
    t = param.type
    if param.is_flag:
        return (bool,), "true or false"
    if isinstance(t, click.types.IntParamType):
        return (int,), "an integer"
    if isinstance(t, click.types.FloatParamType):
        return (int, float), "a number"
    if isinstance(t, click.Choice):
        return (str, int), "one of " + ", ".join(map(str, t.choices))
    if isinstance(t, (click.Path, click.types.StringParamType)):
        return (str,), "a string"
    return None


def _checked(param: click.Option, value, key, path):
    """A file value for `param`, converted as the command line would be; MISSING for a null the option does
    not need (as if not given)."""
    if value is None:
        if param.required or param.multiple or param.is_flag or option_default(param) is not None:
            raise ConfigError(f"--config {path}: {key}: a value is needed, got null")
        return dataclasses.MISSING
    items = (list(value) if isinstance(value, (list, tuple)) else [value]) if param.multiple else [value]
    expected = _expected(param)
    converted = []
    for item in items:
        if expected and (not isinstance(item, expected[0]) or (isinstance(item, bool) and bool not in expected[0])):
            raise ConfigError(f"--config {path}: {key}: expected {expected[1]}, got {_shown(item)}")
        if isinstance(param.type, click.Choice) and isinstance(item, int):
            item = str(item)  # channels = 3
        try:
            converted.append(param.type.convert(item, None, None))
        except click.BadParameter as exc:
            raise ConfigError(f"--config {path}: {key}: {exc.message}") from None
    return tuple(converted) if param.multiple else converted[0]


def _checked_hint(hint, value, key, path):
    """A file value for a field without an option, checked against the field's type (dict, list, str, number)."""
    types = tuple(typing.get_origin(t) or t for t in (typing.get_args(hint) or (hint,)))
    if type(None) in types and value is None or any(isinstance(value, t) for t in types if isinstance(t, type)):
        return value
    raise ConfigError(f"--config {path}: {key}: expected {' or '.join(t.__name__ for t in types)}, got {_shown(value)}")


def _check_json(value, key, path, most: int = 10_000) -> None:
    """A field without an option (e.g. extra) is written into the run's config.json: plain JSON values (finite
    numbers, string keys), at most `most` of them counted as visited (a YAML alias bomb stops here, not in json)."""
    import math

    todo, seen = [(value, 0)], 0
    while todo:
        item, depth = todo.pop()
        seen += 1
        if seen > most or depth > 20:
            raise ConfigError(f"--config {path}: {key}: more than {most:,} values or 20 levels; a setting holds a few")
        if isinstance(item, dict):
            if not all(isinstance(k, str) for k in item):
                raise ConfigError(f"--config {path}: {key}: must be plain JSON values (keys are strings)")
            todo += [(v, depth + 1) for v in item.values()]
        elif isinstance(item, list):
            todo += [(v, depth + 1) for v in item]
        elif not (item is None or isinstance(item, (str, bool, int)) or isinstance(item, float) and math.isfinite(item)):
            raise ConfigError(f"--config {path}: {key}: must be plain JSON values, got {_shown(item)}")
