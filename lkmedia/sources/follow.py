"""What a LiveKit source follows: one participant, one track, or an audio and a video track
(the egress kinds: participant, track, track composite). Shared by the decoding
``TrackSource`` and the passthrough ``EncodedTrackSource``."""
from __future__ import annotations


def followed_tracks(name: str, *, participant_identity: str | None, track_id: str | None,
                    audio_track_id: str | None, video_track_id: str | None,
                    kind: str | None) -> dict[str, str | None]:
    """The track sid wanted per kind ("audio", "video"; None: by participant), checking
    that the arguments name something to follow, once."""
    if kind not in (None, "audio", "video"):
        raise ValueError(f"{name}: kind must be 'audio' or 'video', not {kind!r}")
    if track_id and (audio_track_id or video_track_id):
        raise ValueError(f"{name}: give track_id, or audio_track_id/video_track_id, not both")
    if track_id and kind is None:
        raise ValueError(f"{name}: track_id needs kind='audio' or kind='video'")
    if not (participant_identity or track_id or audio_track_id or video_track_id):
        raise ValueError(f"{name}: give participant_identity, track_id or audio/video_track_id")
    ids = {"audio": audio_track_id, "video": video_track_id}
    if track_id and kind is not None:
        ids[kind] = track_id
    return ids
