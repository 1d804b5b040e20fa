"""HLS playlists (RFC 8216), read by us rather than FFmpeg so that every segment URL passes the guard.

A master playlist names variants (and maybe audio-only renditions); we take an audio
rendition when there is one, else an audio-only variant, else the variant of least
bandwidth (the audio of a 160p variant is usually the same as of the 1080p one). A
media playlist lists segments; we accept only a finished one (``#EXT-X-ENDLIST``) with
clear (unencrypted), whole-file segments.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import urljoin

from parascribe.errors import PermanentError

MAX_PLAYLIST_BYTES = 4 << 20
HLS_CONTENT_TYPES = frozenset({"application/vnd.apple.mpegurl", "application/x-mpegurl", "audio/mpegurl",
                               "audio/x-mpegurl"})
_ATTR = re.compile(r'([A-Z0-9-]+)=("[^"]*"|[^,]*)')
_AUDIO_CODECS = ("mp4a", "opus", "ac-3", "ec-3", "mp3", "flac")


def attributes(text: str) -> dict[str, str]:
    """The attribute list of a tag (``BANDWIDTH=1,CODECS="a,b"``) as a dict, quotes removed."""
    return {k: v[1:-1] if v.startswith('"') else v for k, v in _ATTR.findall(text)}


@dataclass(frozen=True)
class Variant:
    url: str
    bandwidth: int
    codecs: str = ""
    audio_group: str | None = None

    @property
    def audio_only(self) -> bool:
        codecs = [c.strip().lower() for c in self.codecs.split(",") if c.strip()]
        return bool(codecs) and all(c.startswith(_AUDIO_CODECS) for c in codecs)


@dataclass(frozen=True)
class MasterPlaylist:
    variants: list[Variant]
    audio: dict[str, list[tuple[str, bool]]] = field(default_factory=dict)
    """audio group id → [(rendition URL, DEFAULT=YES)] for renditions that have their own URI."""

    def choose(self) -> str:
        """The URL of the media playlist whose audio we fetch."""
        renditions = [r for group in self.audio.values() for r in group]
        if renditions:
            default = [url for url, is_default in renditions if is_default]
            return (default or [renditions[0][0]])[0]
        audio_only = [v for v in self.variants if v.audio_only]
        pool = audio_only or self.variants
        if not pool:
            raise PermanentError("the HLS master playlist lists no variants")
        return min(pool, key=lambda v: v.bandwidth).url


@dataclass(frozen=True)
class MediaPlaylist:
    segments: list[str]
    init: str | None
    duration_s: float
    ended: bool

    @property
    def urls(self) -> list[str]:
        """What to read, in order: the init section (fMP4) first, then every segment."""
        return ([self.init] if self.init else []) + self.segments


def is_hls(content_type: str, path: str) -> bool:
    return content_type in HLS_CONTENT_TYPES or path.lower().endswith((".m3u8", ".m3u"))


def parse(text: str, base_url: str) -> MasterPlaylist | MediaPlaylist:
    """Parse a playlist fetched from ``base_url`` (relative URIs resolve against it).

    Raises:
        PermanentError: not a playlist, encrypted, byte-range segments, or no segments.
    """
    lines = [line.strip() for line in text.lstrip("\ufeff").splitlines() if line.strip()]
    if not lines or not lines[0].startswith("#EXTM3U"):
        raise PermanentError("the URL is not an HLS playlist (no #EXTM3U header)")
    if any(line.startswith("#EXT-X-STREAM-INF") for line in lines):
        return _master(lines, base_url)
    return _media(lines, base_url)


def _master(lines: list[str], base: str) -> MasterPlaylist:
    variants: list[Variant] = []
    audio: dict[str, list[tuple[str, bool]]] = {}
    pending: dict[str, str] | None = None
    for line in lines[1:]:
        if line.startswith("#EXT-X-STREAM-INF:"):
            pending = attributes(line.split(":", 1)[1])
        elif line.startswith("#EXT-X-MEDIA:"):
            attrs = attributes(line.split(":", 1)[1])
            if attrs.get("TYPE") == "AUDIO" and attrs.get("URI"):
                audio.setdefault(attrs.get("GROUP-ID", ""), []).append(
                    (urljoin(base, attrs["URI"]), attrs.get("DEFAULT", "").upper() == "YES"))
        elif not line.startswith("#") and pending is not None:
            bandwidth = pending.get("BANDWIDTH", "0")
            variants.append(Variant(url=urljoin(base, line), bandwidth=int(bandwidth) if bandwidth.isdigit() else 0,
                                    codecs=pending.get("CODECS", ""), audio_group=pending.get("AUDIO")))
            pending = None
    return MasterPlaylist(variants=variants, audio=audio)


def _media(lines: list[str], base: str) -> MediaPlaylist:
    segments: list[str] = []
    init: str | None = None
    duration = 0.0
    ended = False
    for line in lines[1:]:
        if line.startswith("#EXTINF:"):
            value = line.split(":", 1)[1].split(",", 1)[0]
            try:
                duration += float(value)
            except ValueError:
                raise PermanentError(f"the HLS playlist has a bad segment duration {value!r}") from None
        elif line.startswith("#EXT-X-KEY:"):
            if attributes(line.split(":", 1)[1]).get("METHOD", "NONE").upper() != "NONE":
                raise PermanentError("the HLS stream is encrypted (EXT-X-KEY), which is not supported")
        elif line.startswith("#EXT-X-BYTERANGE"):
            raise PermanentError("HLS playlists with byte-range segments (EXT-X-BYTERANGE) are not supported")
        elif line.startswith("#EXT-X-MAP:"):
            attrs = attributes(line.split(":", 1)[1])
            if "BYTERANGE" in attrs:
                raise PermanentError("HLS playlists with byte-range segments (EXT-X-BYTERANGE) are not supported")
            if "URI" in attrs:
                init = urljoin(base, attrs["URI"])
        elif line.startswith("#EXT-X-ENDLIST"):
            ended = True
        elif not line.startswith("#"):
            segments.append(urljoin(base, line))
    if not segments:
        raise PermanentError("the HLS playlist lists no segments")
    return MediaPlaylist(segments=segments, init=init, duration_s=duration, ended=ended)
