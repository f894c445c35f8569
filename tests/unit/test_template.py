"""Filename templating: LiveKit's placeholders and rules, and no way out of output_dir."""
from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest

from lkmedia.sinks.template import PLACEHOLDERS, fix_extension, render_filename, time_fields

NOW = dt.datetime(2024, 5, 1, 12, 3, 4, 56_789, tzinfo=dt.UTC)
FIELDS = {"room_name": "standup", "room_id": "RM_abc", "publisher_identity": "alice",
          "track_id": "TR_v1", "track_type": "video", "track_source": "camera"}


def render(tmp_path: Path, template: str, ext: str = ".mp4", **kw: object) -> str:
    out = render_filename(template, dict(FIELDS), ext, str(tmp_path), now=NOW, **kw)  # type: ignore[arg-type]
    return os.path.relpath(out, os.path.realpath(tmp_path))


def test_time_formats_match_livekit() -> None:
    # Go layouts "2006-01-02T150405" and "20060102150405" + milliseconds.
    assert time_fields(NOW) == {"time": "2024-05-01T120304", "utc": "20240501120304056"}
    # {time} keeps the zone it is given; {utc} is always UTC.
    cet = NOW.astimezone(dt.timezone(dt.timedelta(hours=2)))
    assert time_fields(cet) == {"time": "2024-05-01T140304", "utc": "20240501120304056"}
    # A naive datetime is taken as UTC.
    assert time_fields(NOW.replace(tzinfo=None))["utc"] == "20240501120304056"


def test_every_placeholder(tmp_path: Path) -> None:
    template = "/".join("{" + p + "}" for p in PLACEHOLDERS if p != "retry") + "-{retry}"
    assert render(tmp_path, template) == (
        "standup/RM_abc/2024-05-01T120304/20240501120304056/alice/TR_v1/video/camera-.mp4")
    assert render_filename("r{retry}", {"retry": "2"}, ".ogg", str(tmp_path), now=NOW).endswith("/r2.ogg")


def test_missing_fields_become_empty(tmp_path: Path) -> None:
    out = render_filename("{room_name}_{track_id}", {"room_name": "x"}, ".ogg", str(tmp_path), now=NOW)
    assert out == os.path.join(os.path.realpath(tmp_path), "x_.ogg")


def test_default_name_and_directory_rule(tmp_path: Path) -> None:
    assert render(tmp_path, "") == "standup-2024-05-01T120304.mp4"
    assert render(tmp_path, "recordings/") == "recordings/standup-2024-05-01T120304.mp4"
    assert render(tmp_path, "{room_name}/") == "standup/standup-2024-05-01T120304.mp4"
    assert render(tmp_path, "web/", default="web-{time}") == "web/web-2024-05-01T120304.mp4"
    assert render(tmp_path, "a//b/./c.mp4") == "a/b/c.mp4"


def test_extension_rule(tmp_path: Path) -> None:
    assert render(tmp_path, "out.mp4") == "out.mp4"
    assert render(tmp_path, "out") == "out.mp4"
    assert render(tmp_path, "out.ogg") == "out.mp4"  # wrong known extension replaced
    assert render(tmp_path, "out.MP4") == "out.mp4"
    assert render(tmp_path, "out.webm", ext="ogg") == "out.ogg"  # ext without a dot
    assert render(tmp_path, "v1.2") == "v1.2.mp4"  # unknown extension kept, ours appended
    assert render(tmp_path, "dir.ts/name") == "dir.ts/name.mp4"  # only the name counts
    assert fix_extension(".hidden", ".mp4") == ".hidden.mp4"


def test_unknown_placeholder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown placeholder \{roomname\}"):
        render(tmp_path, "{roomname}-{time}")
    with pytest.raises(ValueError, match="unknown filename field 'room'"):
        render_filename("x", {"room": "a"}, ".mp4", str(tmp_path))
    # Braces that are not a placeholder stay as they are.
    assert render(tmp_path, "a{}b") == "a{}b.mp4"


def test_leading_parent_dirs_are_stripped_like_livekit(tmp_path: Path) -> None:
    assert render(tmp_path, "../out.mp4") == "out.mp4"
    assert render(tmp_path, "../../../rec/out") == "rec/out.mp4"
    assert render(tmp_path, "./out") == "out.mp4"
    assert render(tmp_path, "..\\..\\x") == "x.mp4"  # backslashes count as '/'



@pytest.mark.parametrize("template", [
    "a/../../etc/passwd", "rec/../out", "rec/..", "..", "/etc/cron.d/x", "\\\\server\\share\\x",
    "C:\\x", "rec/{room_name}/../../..",
])
def test_traversal_is_refused(tmp_path: Path, template: str) -> None:
    with pytest.raises(ValueError, match="escapes the output directory"):
        render(tmp_path, template)


def test_symlink_out_of_the_output_dir_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ValueError, match="escapes the output directory"):
        render_filename("link/x", {}, ".mp4", str(root), now=NOW)
    # A symlink that stays inside is fine.
    (root / "inner").mkdir()
    (root / "alias").symlink_to(root / "inner", target_is_directory=True)
    assert render_filename("alias/x", {}, ".mp4", str(root), now=NOW) == str(root.resolve() / "inner" / "x.mp4")


def test_field_values_cannot_add_directories(tmp_path: Path) -> None:
    out = render_filename("{room_name}/{publisher_identity}", {"room_name": "../../etc", "publisher_identity": "a/b"},
                          ".mp4", str(tmp_path), now=NOW)
    rel = os.path.relpath(out, os.path.realpath(tmp_path))
    assert rel.count("/") == 1 and not rel.startswith("..")
    assert rel.endswith("a_b.mp4")
    assert render_filename("{room_name}", {"room_name": ".."}, ".mp4", str(tmp_path), now=NOW).endswith("/__.mp4")


def test_time_is_now_by_default(tmp_path: Path) -> None:
    before = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    out = render_filename("", {"room_name": "r"}, ".mp4", str(tmp_path))
    after = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    assert os.path.basename(out)[2:12] in (before, after)
