"""From a user's URL to something to read audio from: a media file, or a finished HLS stream.

- A body whose ``Content-Type`` is ``audio/*`` or ``video/*`` (or a generic type with a
  media extension) is read directly, from the response already open.
- An HLS playlist (``.m3u8`` or an mpegurl type) is parsed here; a master playlist
  leads to one media playlist.
- A URL a site-specific yt-dlp extractor claims (YouTube, Twitch…), and any HTML page,
  goes to yt-dlp, which names the media URL; that is then fetched as above.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import unquote, urlsplit

from parascribe.errors import PermanentError
from parascribe.ingest import hls
from parascribe.ingest.httpio import Budget, raise_for_status, read_small
from parascribe.ingest.ytdlp import PageMedia
from parascribe.netguard import Fetched, GuardedHttp

log = logging.getLogger(__name__)

MEDIA_EXTENSIONS = frozenset({".mp3", ".m4a", ".mp4", ".m4v", ".aac", ".wav", ".flac", ".ogg", ".oga", ".opus",
                              ".webm", ".mkv", ".mka", ".mov", ".ts", ".wma", ".aiff", ".aif", ".3gp"})
_GENERIC_TYPES = frozenset({"", "application/octet-stream", "binary/octet-stream", "application/x-download",
                            "application/download"})
_PAGE_TYPES = frozenset({"text/html", "application/xhtml+xml"})

PageResolver = Callable[[str], PageMedia]
SiteMatcher = Callable[[str], bool]


@dataclass
class Resolved:
    """Where the audio comes from. ``fetched`` (direct) is open: the reader takes it over."""

    kind: Literal["direct", "hls"]
    url: str
    title: str | None = None
    duration_s: float | None = None
    headers: dict[str, str] = field(default_factory=dict)
    fetched: Fetched | None = None
    playlist: hls.MediaPlaylist | None = None

    def close(self) -> None:
        if self.fetched is not None:
            self.fetched.response.close()


def title_from_url(url: str) -> str | None:
    """The file name in a URL's path, without its extension: a title when nothing better is known."""
    name = os.path.basename(unquote(urlsplit(url).path))
    stem = os.path.splitext(name)[0].strip()
    return stem or None


class Resolver:
    """Resolves URLs through the guard and, for pages, yt-dlp.

    Args:
        http: the guarded client.
        page: yt-dlp (:meth:`~parascribe.ingest.ytdlp.YtDlpResolver.resolve`).
        site_match: whether a site-specific yt-dlp extractor claims a URL (it then skips the first GET).
    """

    def __init__(self, http: GuardedHttp, page: PageResolver, site_match: SiteMatcher | None = None) -> None:
        self._http = http
        self._page = page
        self._site_match = site_match or (lambda _url: False)

    def resolve(self, url: str, budget: Budget) -> Resolved:
        """Find the media behind ``url``.

        Raises:
            UnsafeUrlError: the URL or a redirect may not be fetched.
            PermanentError: 4xx, not media, a live stream, an unusable playlist.
            TransientError: 5xx, a network failure.
        """
        self._http.check(url)
        if self._site_match(url):
            return self._from_page(url, budget)
        fetched = self._http.open(url)
        raise_for_status(fetched)
        kind = _kind(fetched)
        if kind == "page":
            fetched.response.close()
            return self._from_page(url, budget)
        if kind == "hls":
            return self._hls(fetched, budget, title_from_url(url), None, {})
        if kind == "direct":
            return Resolved("direct", fetched.url, title_from_url(fetched.url), None, fetched=fetched)
        content_type = fetched.response.headers.get("content-type", "no Content-Type")
        fetched.response.close()
        raise PermanentError(f"the URL is not audio or video (it answered {content_type})")

    def _from_page(self, url: str, budget: Budget) -> Resolved:
        media = self._page(url)
        budget.check()
        title = media.title or title_from_url(url)
        fetched = self._http.open(media.url, media.headers)
        raise_for_status(fetched)
        if media.protocol.startswith("m3u8") or _kind(fetched) == "hls":
            return self._hls(fetched, budget, title, media.duration_s, media.headers)
        if _kind(fetched) == "page":
            fetched.response.close()
            raise PermanentError("the URL is a web page with no media yt-dlp can extract: "
                                 "the media URL it found answered with another web page")
        return Resolved("direct", fetched.url, title, media.duration_s, headers=media.headers, fetched=fetched)

    def _hls(self, fetched: Fetched, budget: Budget, title: str | None, duration_s: float | None,
             headers: dict[str, str]) -> Resolved:
        text = read_small(fetched, budget, hls.MAX_PLAYLIST_BYTES, "HLS playlist").decode("utf-8", "replace")
        playlist = hls.parse(text, fetched.url)
        if isinstance(playlist, hls.MasterPlaylist):
            chosen = playlist.choose()
            log.info("HLS master playlist: reading %s", chosen)
            inner = self._http.open(chosen, headers)
            raise_for_status(inner)
            text = read_small(inner, budget, hls.MAX_PLAYLIST_BYTES, "HLS playlist").decode("utf-8", "replace")
            playlist = hls.parse(text, inner.url)
            if isinstance(playlist, hls.MasterPlaylist):
                raise PermanentError("the HLS master playlist points at another master playlist")
        if not playlist.ended:
            raise PermanentError("live streams are not supported; submit the VOD when it ends "
                                 "(the HLS playlist has no #EXT-X-ENDLIST)")
        return Resolved("hls", fetched.url, title, duration_s or playlist.duration_s, headers=headers,
                        playlist=playlist)


def _kind(fetched: Fetched) -> Literal["direct", "hls", "page", "other"]:
    content_type = fetched.response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    path = urlsplit(fetched.url).path.lower()
    if hls.is_hls(content_type, path):
        return "hls"
    if content_type.startswith(("audio/", "video/")):
        return "direct"
    if content_type in _PAGE_TYPES:
        return "page"
    if content_type in _GENERIC_TYPES and os.path.splitext(path)[1] in MEDIA_EXTENSIONS:
        return "direct"
    return "other"
