"""yt-dlp as a resolver only: a page URL (YouTube, Twitch VOD, a page with ``<video>``) to a media URL.

yt-dlp never downloads here (``extract_info(download=False)``); the media is fetched by the
guarded client. The options keep it to that:

- the Python API reads no configuration files (only the CLI does) and no cookies unless
  ``YTDLP_COOKIES_FILE`` is set; no ``.netrc``, no cache directory;
- no post-processors, no external downloader, no JavaScript runtime and no remote
  components (``js_runtimes={}``, ``remote_components=[]``), so nothing is executed;
- plugins are off through ``YTDLP_NO_PLUGINS`` in the image;
- every request yt-dlp makes is checked by the guard first, and the URL it ended at
  (after redirects) again before its body is used.

What remains: yt-dlp follows redirects inside its own HTTP handler, so a public page that
redirects to a private address is requested (its body is then refused). A GET without
headers gets nothing from the metadata server, which answers only requests carrying
``Metadata-Flavor: Google``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yt_dlp
from yt_dlp.networking.exceptions import HTTPError as YtHttpError
from yt_dlp.networking.exceptions import TransportError as YtTransportError

from parascribe.errors import ParascribeError, PermanentError, TransientError

log = logging.getLogger(__name__)

Guard = Callable[[str], object]


@dataclass(frozen=True)
class PageMedia:
    """What yt-dlp found on a page: the chosen format's URL and how to fetch it."""

    url: str
    protocol: str
    title: str | None
    duration_s: float | None
    headers: dict[str, str] = field(default_factory=dict)


class _Logger:
    def debug(self, msg: str) -> None:
        log.debug("yt-dlp: %s", msg)

    def info(self, msg: str) -> None:
        log.debug("yt-dlp: %s", msg)

    def warning(self, msg: str) -> None:
        log.info("yt-dlp: %s", msg)

    def error(self, msg: str) -> None:
        log.info("yt-dlp: %s", msg)


class _GuardedYoutubeDL(yt_dlp.YoutubeDL):
    """A YoutubeDL whose every request passes the guard, before it is sent and where it ended up."""

    guard: Guard

    def urlopen(self, req: Any) -> Any:
        self.guard(req if isinstance(req, str) else req.url)
        response = super().urlopen(req)
        self.guard(response.url)
        return response


def options(cookies_file: str | None, socket_timeout_s: float) -> dict[str, Any]:
    """The YoutubeDL options: resolve one item's best audio, run nothing, write nothing."""
    return {
        "format": "bestaudio/best",
        "noplaylist": True,
        "skip_download": True,
        "simulate": True,
        "quiet": True,
        "no_warnings": True,
        "noprogress": True,
        "logger": _Logger(),
        "cookiefile": cookies_file,
        "usenetrc": False,
        "cachedir": False,
        "postprocessors": [],
        "external_downloader": {},
        "js_runtimes": {},
        "remote_components": [],
        "check_formats": False,
        "allow_unplayable_formats": False,
        "socket_timeout": socket_timeout_s,
        "extract_flat": False,
    }


class YtDlpResolver:
    """Asks yt-dlp what a page's media is.

    Args:
        guard: checks a URL (raising :class:`~parascribe.netguard.UnsafeUrlError`).
        cookies_file: ``YTDLP_COOKIES_FILE``; no cookies when None.
        socket_timeout_s: yt-dlp's own network timeout.
    """

    def __init__(self, guard: Guard, cookies_file: str | None = None, socket_timeout_s: float = 30.0) -> None:
        self._guard = guard
        self._options = options(cookies_file, socket_timeout_s)

    def resolve(self, url: str) -> PageMedia:
        """The media yt-dlp would download from ``url``.

        Raises:
            PermanentError: no media, a live stream, a playlist of several items, or an unsupported protocol.
            TransientError: the site failed (5xx, 429, a network error).
        """
        ydl = _GuardedYoutubeDL(self._options)
        ydl.guard = self._guard
        try:
            with ydl:
                info = ydl.extract_info(url, download=False)
        except yt_dlp.utils.DownloadError as err:
            raise _classify(err) from None
        if not isinstance(info, dict):
            raise PermanentError("the URL is a web page with no media yt-dlp can extract")
        return _media(info)


def _media(info: dict[str, Any]) -> PageMedia:
    if info.get("_type") == "playlist":
        entries = [e for e in (info.get("entries") or []) if isinstance(e, dict)]
        if len(entries) != 1:
            raise PermanentError(f"the URL is a playlist of {len(entries)} items; submit the URL of one of them")
        info = entries[0]
    if info.get("is_live") or info.get("live_status") in ("is_live", "is_upcoming"):
        raise PermanentError("live streams are not supported; submit the VOD when it ends")
    url = info.get("url")
    if not isinstance(url, str):
        raise PermanentError("yt-dlp found no single audio or video stream on the page")
    protocol = str(info.get("protocol") or "https")
    if not (protocol in ("http", "https") or protocol.startswith("m3u8")):
        raise PermanentError(f"the page's media uses the {protocol} protocol, which is not supported "
                             "(only plain HTTP(S) files and HLS)")
    duration = info.get("duration")
    headers = {str(k): str(v) for k, v in (info.get("http_headers") or {}).items()}
    return PageMedia(url=url, protocol=protocol, title=info.get("title") or None,
                     duration_s=float(duration) if isinstance(duration, int | float) else None, headers=headers)


def _classify(err: yt_dlp.utils.DownloadError) -> ParascribeError:
    """A yt-dlp failure as ours: our own guard's error, a retryable network failure, or no media."""
    cause: BaseException | None = err.exc_info[1] if err.exc_info else None
    seen = 0
    while cause is not None and seen < 8:
        if isinstance(cause, ParascribeError):
            return cause
        if isinstance(cause, YtHttpError):
            if cause.status >= 500 or cause.status == 429:
                return TransientError(f"the page answered {cause.status} to yt-dlp")
            return PermanentError(f"the URL answered {cause.status} {cause.reason or ''}".rstrip())
        if isinstance(cause, YtTransportError):
            return TransientError(f"yt-dlp could not reach the page: {cause}")
        cause = getattr(cause, "cause", None) or cause.__cause__ or cause.__context__
        seen += 1
    message = str(err.msg if hasattr(err, "msg") else err).removeprefix("ERROR: ")
    if "live" in message.lower() and ("is live" in message.lower() or "not yet" in message.lower()):
        return PermanentError("live streams are not supported; submit the VOD when it ends")
    return PermanentError(f"the URL is a web page with no media yt-dlp can extract: {message}")


def site_extractor_claims(url: str) -> bool:
    """Whether a site-specific yt-dlp extractor (not the generic one) handles ``url``: YouTube, Twitch…"""
    for extractor in yt_dlp.extractor.gen_extractor_classes():
        if extractor.ie_key() != "Generic" and extractor.suitable(url):
            return True
    return False
