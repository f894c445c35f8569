"""YAML graphs: building, ${VAR}, paths, and one clear GraphSpecError per mistake."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from lkmedia.core import Policy
from lkmedia.graphspec import REGISTRY, GraphSpecError, graph_from_yaml, load_graph, resolve_type
from lkmedia.probe import decode_errors, probe

AV = """
nodes:
  src: {type: synthetic, width: 320, height: 240, fps: 30, duration: ${SECONDS:-2}}
  venc: {type: video_encoder, width: 320, height: 240, bitrate: 400000, keyframe_interval: 1}
  aenc: {type: audio_encoder, codec: aac}
  mp4: {type: file, path: ${NAME:-out}.mp4}
links:
  - {chain: [src.video, venc], policy: block, capacity: 3}
  - [venc, mp4]
  - [src.audio, aenc, mp4]
"""


def spec_error(text: str, tmp_path: Path, **kw: object) -> str:
    with pytest.raises(GraphSpecError) as ei:
        graph_from_yaml(textwrap.dedent(text), base_dir=tmp_path, env={}, **kw)  # type: ignore[arg-type]
    return str(ei.value)


async def test_yaml_graph_runs_and_writes_a_probed_mp4(tmp_path: Path) -> None:
    (tmp_path / "g.yaml").write_text(AV)
    loaded = load_graph(tmp_path / "g.yaml", {"SECONDS": "2.5", "NAME": "clip"}, env={})
    g = loaded.graph
    assert set(g.nodes) == {"src", "venc", "aenc", "mp4"}
    edge = g.nodes["venc"].inputs["in"].edge
    assert edge is not None and edge.policy is Policy.BLOCK and edge.capacity == 3
    assert loaded.outputs == {"mp4": [tmp_path / "clip.mp4"]}
    await g.run()
    p = probe(str(tmp_path / "clip.mp4"))
    v, a = p.stream("video"), p.stream("audio")
    assert (v.codec, v.width, v.height, a.codec) == ("h264", 320, 240, "aac")
    assert v.frames == 75  # 2.5 s at 30 fps: the ${SECONDS} number reached the source
    assert p.duration is not None and abs(p.duration - 2.5) < 0.2
    assert decode_errors(str(tmp_path / "clip.mp4")) == ""


def test_var_precedence_and_out_dir(tmp_path: Path) -> None:
    out = tmp_path / "elsewhere"
    loaded = graph_from_yaml(AV, base_dir=tmp_path, variables={"NAME": "cli"},
                             env={"NAME": "env", "SECONDS": "4"}, out_dir=out)
    src = loaded.graph.nodes["src"]
    assert src.duration == 4  # type: ignore[attr-defined]
    assert loaded.graph.nodes["mp4"].path == str(out / "cli.mp4")  # type: ignore[attr-defined]
    assert out.is_dir()  # created by the writability check
    loaded = graph_from_yaml(AV, base_dir=tmp_path, env={"NAME": "env"})
    assert loaded.graph.nodes["mp4"].path == str(tmp_path / "env.mp4")  # type: ignore[attr-defined]
    assert "${SECONDS}" not in "".join(str(v) for v in loaded.outputs.values())


def test_unset_variable_is_named(tmp_path: Path) -> None:
    msg = spec_error("""
        nodes:
          src: {type: synthetic, duration: ${LEN}}
        links: [[src.video, x]]
    """, tmp_path)
    assert "${LEN}" in msg and "line 3" in msg and "--var LEN=" in msg


@pytest.mark.parametrize("text, needles", [
    ("nodes:\n  src: {type: synthetic\nlinks: []\n", ["invalid YAML", "line 3"]),
    ("- just\n- a list\n", ["mapping"]),
    ("nodes: {src: {type: synthetic}}\nlinks: [[src.video, src]]\nextra: 1\n", ["unknown top-level", "extra"]),
    ("nodes: {src: {type: synthetik}}\nlinks: [[src, x]]\n",
     ["node 'src'", "unknown node type 'synthetik'", "synthetic", "video_encoder", "hls"]),
    ("nodes: {src: {width: 3}}\nlinks: [[src, x]]\n", ["node 'src'", "needs", "'type'"]),
    ("nodes: {src: {type: synthetic, widht: 320}}\nlinks: [[src, x]]\n",
     ["node 'src' (synthetic)", "unknown argument 'widht'", "width"]),
    ("nodes: {src: {type: synthetic, name: x}}\nlinks: [[src, x]]\n", ["'name' comes from the node's key"]),
    ("nodes: {mp4: {type: file}}\nlinks: [[mp4, mp4]]\n", ["node 'mp4' (file)", "missing argument 'path'"]),
    ("nodes: {src: {type: synthetic, width: 7}}\nlinks: [[src, x]]\n", ["node 'src' (synthetic)", "even"]),
    ("nodes: {'a.b': {type: synthetic}}\nlinks: [[a, x]]\n", ["node name 'a.b'"]),
    ("nodes: {src: {type: synthetic}}\nlinks: [[src.video, venc]]\n", ["link 1", "unknown node 'venc'", "src"]),
    ("nodes: {src: {type: synthetic}, v: {type: video_encoder}}\nlinks: [[src.vid, v]]\n",
     ["link 1", "no port 'vid'", "video, audio"]),
    ("nodes: {src: {type: synthetic}, v: {type: video_encoder}}\nlinks: [[src.video]]\n", ["at least two"]),
    (("nodes: {src: {type: synthetic}, v: {type: video_encoder}}\n"
     "links: [{chain: [src.video, v], policy: fast}]\n"), ["link 1", "policy 'fast'"]),
    (("nodes: {src: {type: synthetic}, v: {type: video_encoder}}\n"
     "links: [{chain: [src.video, v], capacity: 0}]\n"), ["capacity"]),
    (("nodes: {src: {type: synthetic}, v: {type: video_encoder}}\n"
     "links: [{chain: [src.video, v], colour: red}]\n"), ["unknown key", "colour"]),
    # Links that cannot work fail at build, naming both ends.
    ("nodes: {src: {type: synthetic, audio: false}, mp4: {type: file, path: x.mp4}}\nlinks: [[src, mp4]]\n",
     ["cannot run", "src.video", "mp4", "encoded packets"]),
    (("nodes: {src: {type: synthetic}, v: {type: video_encoder}, mp4: {type: file, path: x.mp4}}\n"
     "links: [[src.audio, v, mp4]]\n"), ["src.audio", "v.in", "raw video"]),
    ("nodes: {src: {type: synthetic}, v: {type: video_encoder}}\nlinks: [[src.video, v]]\n",
     ["cannot run", "v feeds nothing"]),
])
def test_mistakes_become_one_clear_error(tmp_path: Path, text: str, needles: list[str]) -> None:
    msg = spec_error(text, tmp_path)
    for n in needles:
        assert n in msg, (n, msg)
    assert "\n" not in msg


ENC = "nodes: {src: {type: synthetic, audio: false}, v: {type: video_encoder}, mp4: {type: file, path: '%s'}}\n" \
      "links: [[src, v, mp4]]\n"


def test_output_paths_are_checked_before_running(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    assert "contains '..'" in spec_error(ENC % "../escape.mp4", tmp_path)
    assert "contains '..'" in spec_error(ENC % "sub/../../escape.mp4", tmp_path)
    assert not (tmp_path.parent / "escape.mp4").exists()
    msg = spec_error(ENC % "afile/x.mp4", tmp_path)
    assert "cannot write" in msg and "is a file" in msg
    msg = spec_error(ENC % "/proc/x.mp4", tmp_path)
    assert "node 'mp4'" in msg and "cannot write '/proc/x.mp4'" in msg
    (tmp_path / "adir.mp4").mkdir()
    assert "is a directory" in spec_error(ENC % "adir.mp4", tmp_path)
    hls = "nodes: {src: {type: synthetic, audio: false}, v: {type: video_encoder}, " \
          "h: {type: hls, directory: out, playlist_name: ../p.m3u8}}\nlinks: [[src, v, h]]\n"
    assert "plain file name" in spec_error(hls, tmp_path)


def test_unreadable_input_is_named(tmp_path: Path) -> None:
    text = "nodes: {in: {type: file_source, url: %s}, mp4: {type: file, path: o.mp4}}\n" \
           "links: [[in.video, mp4]]\n"
    msg = spec_error(text % "missing.mp4", tmp_path)
    assert "node 'in'" in msg and "cannot read input 'missing.mp4'" in msg and "No such file" in msg
    (tmp_path / "adir").mkdir()
    assert "Is a directory" in spec_error(text % "adir", tmp_path)


def test_unreadable_graph_file(tmp_path: Path) -> None:
    with pytest.raises(GraphSpecError, match="cannot read graph file"):
        load_graph(tmp_path / "nope.yaml")


def test_every_registered_type_resolves_to_a_node_class() -> None:
    # Keeps the registry in sync with the modules and class names that ship.
    for name in REGISTRY:
        cls, _ = resolve_type(name)
        assert cls.__name__ == REGISTRY[name].target.rsplit(":", 1)[1]


def test_custom_class_by_import_path(tmp_path: Path) -> None:
    text = "nodes: {src: {type: 'lkmedia.sources.synthetic:SyntheticSource', audio: false, duration: 1}, " \
           "v: {type: video_encoder}, mp4: {type: file, path: x.mp4}}\nlinks: [[src, v, mp4]]\n"
    loaded = graph_from_yaml(text, base_dir=tmp_path, env={})
    assert type(loaded.graph.nodes["src"]).__name__ == "SyntheticSource"
    assert "is not available" in spec_error(text.replace("sources.synthetic", "sources.nothing"), tmp_path)


TEMPLATED = """
fields: {room_name: standup, room_id: RM_1}
nodes:
  src: {type: synthetic, width: 64, height: 48, duration: 1, audio: false}
  venc: {type: video_encoder, width: 64, height: 48, bitrate: 100000}
  mp4: {type: file, path: "PATH"}
links:
  - [src.video, venc, mp4]
"""


def test_output_paths_take_livekit_filename_templates(tmp_path: Path) -> None:
    loaded = graph_from_yaml(TEMPLATED.replace("PATH", "rec/{room_name}-{room_id}-{time}.mkv"),
                             base_dir=tmp_path, env={})
    (out,) = loaded.outputs["mp4"]
    assert out.parent == tmp_path / "rec" and out.name.startswith("standup-RM_1-")
    assert out.suffix == ".mkv"  # the container given by the extension is kept
    loaded = graph_from_yaml(TEMPLATED.replace("PATH", "rec/"), base_dir=tmp_path, env={})
    (out,) = loaded.outputs["mp4"]
    assert out.parent == tmp_path / "rec" and out.name.startswith("standup-") and out.suffix == ".mp4"


@pytest.mark.parametrize("path,needle", [
    ("{room_name}/../../../etc/x.mp4", "escapes the output directory"),
    ("/tmp/{room_name}.mp4", "escapes the output directory"),
    ("{room}.mp4", "room"),
])
def test_template_traversal_and_typos_are_refused(tmp_path: Path, path: str, needle: str) -> None:
    msg = spec_error(TEMPLATED.replace("PATH", path), tmp_path)
    assert "'mp4'" in msg and needle in msg
