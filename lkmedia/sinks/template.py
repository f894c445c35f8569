"""LiveKit's output filename templating (egress README "Filenames", pkg/config/output_file.go).

``render_filename("recordings/{room_name}/", {"room_name": "demo"}, ".mp4", "/data")``
gives ``/data/recordings/demo/demo-2024-05-01T120000.mp4``. LiveKit's rules, kept:
placeholders are replaced; a trailing '/' (or an empty template) means "a directory: make
the default name inside it"; a wrong known extension is replaced, a missing one appended;
leading '../' is stripped. Added: the result can never resolve outside ``output_dir``
(absolute paths, '..' anywhere, symlinks that lead out all raise ValueError), because
the template may come from an API caller.
"""
from __future__ import annotations

import datetime as dt
import os
import posixpath
import re

#: Placeholders LiveKit defines (features doc 1.10). {time} and {utc} come from ``now``.
PLACEHOLDERS = ("room_name", "room_id", "time", "utc", "publisher_identity",
                "track_id", "track_type", "track_source", "retry")
#: Extensions LiveKit replaces when they are the wrong one (types.FileExtensions), plus
#: the other containers lkmedia writes.
KNOWN_EXTENSIONS = frozenset({".raw", ".ogg", ".ivf", ".mp4", ".ts", ".webm", ".m3u8",
                              ".mp3", ".mkv", ".flv", ".m4a", ".jpeg", ".jpg", ".txt"})
DEFAULT_TEMPLATE = "{room_name}-{time}"

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def time_fields(now: dt.datetime | None = None) -> dict[str, str]:
    """{time} as LiveKit formats it (2006-01-02T150405) and {utc} (20060102150405 + ms).

    LiveKit formats both with the server's local zone (UTC in its containers); here
    ``now`` is used as given for {time}, converted to UTC for {utc}. Naive datetimes are
    taken as UTC.
    """
    if now is None:
        now = dt.datetime.now(dt.UTC)
    elif now.tzinfo is None:
        now = now.replace(tzinfo=dt.UTC)
    utc = now.astimezone(dt.UTC)
    return {
        "time": now.strftime("%Y-%m-%dT%H%M%S"),
        "utc": utc.strftime("%Y%m%d%H%M%S") + f"{utc.microsecond // 1000:03d}",
    }


def _substitute(template: str, values: dict[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        key = m.group(1)
        if key not in values:
            known = ", ".join("{" + k + "}" for k in PLACEHOLDERS)
            raise ValueError(f"unknown placeholder {{{key}}} in filename {template!r} (known: {known})")
        return values[key]

    return _PLACEHOLDER.sub(sub, template)


def _clean(path: str) -> str:
    """LiveKit's clean(): normalise ('a//b/./c' -> 'a/b/c'); keep a trailing '/'."""
    is_dir = path.endswith("/")
    path = posixpath.normpath(path) if path else ""
    if path in ("", ".", ".."):
        return ""
    return path + "/" if is_dir else path


def fix_extension(path: str, ext: str) -> str:
    """Replace a wrong known extension, append a missing one (LiveKit's rule)."""
    if path.endswith(ext):
        return path
    base = posixpath.basename(path)
    cut = base.rfind(".")
    if cut > 0 and base[cut:].lower() in KNOWN_EXTENSIONS:
        path = path[: len(path) - len(base) + cut]
    return path + ext


def render_filename(
    template: str,
    fields: dict[str, str | None],
    ext: str,
    output_dir: str,
    default: str = DEFAULT_TEMPLATE,
    now: dt.datetime | None = None,
) -> str:
    """The absolute path, inside ``output_dir``, that ``template`` names.

    ``fields`` gives room_name, room_id, publisher_identity, track_id, track_type,
    track_source, retry (missing ones become ''; '/' in a value becomes '_'); ``now`` fixes {time}/{utc} (for tests).
    An unknown placeholder raises ValueError naming it (a typo would otherwise end up
    in every recording's name). Raises ValueError when the path escapes ``output_dir``.
    """
    if not ext.startswith("."):
        ext = "." + ext
    if "\x00" in template:
        raise ValueError(f"filename {template!r} contains a NUL byte")
    values = {k: "" for k in PLACEHOLDERS}
    for k, v in fields.items():
        if k not in PLACEHOLDERS:
            raise ValueError(f"unknown filename field {k!r} (known: {', '.join(PLACEHOLDERS)})")
        values[k] = "" if v is None else str(v)
    values.update(time_fields(now))
    # Field values come from room and participant names: they must not add directories.
    for k, v in values.items():
        if "/" in v or "\\" in v or v in (".", "..") or "\x00" in v:
            values[k] = re.sub(r"[/\\\x00]", "_", v).replace("..", "__")

    raw = template.replace("\\", "/")
    if raw.startswith("/") or re.match(r"^[A-Za-z]:/", raw):
        raise ValueError(f"filename {template!r} escapes the output directory (absolute path)")
    path = _substitute(raw, values)
    while path.startswith(("../", "./")):  # LiveKit strips leading '../'
        path = path[3:] if path.startswith("../") else path[2:]
    if any(part == ".." for part in path.split("/")):
        raise ValueError(f"filename {template!r} escapes the output directory ('..' in it)")
    path = _clean(path)
    if path == "" or path.endswith("/"):
        name = _substitute(default, values).strip("/")
        if "/" in name or name in ("", ".", ".."):
            raise ValueError(f"default filename {default!r} must be a plain name")
        path = path + name
    path = fix_extension(path, ext)

    root = os.path.realpath(output_dir)
    full = os.path.realpath(os.path.join(root, path))
    if os.path.commonpath([root, full]) != root or full == root:
        raise ValueError(f"filename {template!r} escapes the output directory {output_dir!r} "
                         f"(resolves to {full!r})")
    return full
