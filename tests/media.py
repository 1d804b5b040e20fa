"""Real media for URL-ingest tests: espeak-ng speech as AAC in MP4 and in HLS, served over HTTP on loopback.

Shared by the ingest integration tests and the API's end-to-end tests.
"""

from __future__ import annotations

import io
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import av
import numpy as np


def write_mp4(path: Path, samples: np.ndarray, rate: int, video: bool, audio: bool = True) -> None:
    """An MP4 (index at the end) with AAC audio and, when ``video``, a small MPEG-4 video track."""
    with av.open(str(path), "w", format="mp4") as out:
        vs = out.add_stream("mpeg4", rate=10) if video else None
        if vs is not None:
            vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
        a = out.add_stream("aac", rate=rate) if audio else None
        if a is not None:
            a.layout = "mono"
            frame_n = 1024
            pcm = (samples * 32767).astype(np.int16)
            for i in range(0, len(pcm), frame_n):
                frame = av.AudioFrame.from_ndarray(pcm[None, i:i + frame_n], format="s16", layout="mono")
                frame.sample_rate, frame.pts = rate, i
                out.mux(a.encode(frame))
            out.mux(a.encode(None))
        if vs is not None:
            for i in range(int(len(samples) / rate * 10)):
                img = np.full((48, 64, 3), i % 255, np.uint8)
                vf = av.VideoFrame.from_ndarray(img, format="rgb24")
                vf.pts = i
                out.mux(vs.encode(vf))
            out.mux(vs.encode(None))


def audio_packets(data: bytes) -> tuple[str, int, int]:
    with av.open(io.BytesIO(data)) as c:
        s = c.streams.audio[0]
        sizes = [p.size for p in c.demux(s) if p.size]
        return s.codec_context.name, len(sizes), sum(sizes)


def write_hls(root: Path, mp4: Path) -> None:
    """MPEG-TS segments of about 2 s cut from ``mp4``'s audio, and hand-written playlists."""
    (root / "hls").mkdir()
    with av.open(str(mp4)) as src, av.open(str(root / "hls" / "seg%03d.ts"), "w", format="segment",
                                            options={"segment_time": "2", "segment_format": "mpegts"}) as out:
        a = src.streams.audio[0]
        o = out.add_stream_from_template(a)
        for p in src.demux(a):
            if p.dts is None:
                continue
            p.stream = o
            out.mux(p)
    segments = sorted((root / "hls").glob("seg*.ts"))
    assert len(segments) >= 2
    media = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-TARGETDURATION:3", "#EXT-X-MEDIA-SEQUENCE:0"]
    for seg in segments:
        media += ["#EXTINF:2.0,", seg.name]
    (root / "hls" / "audio.m3u8").write_text("\n".join(media + ["#EXT-X-ENDLIST", ""]))
    (root / "hls" / "live.m3u8").write_text("\n".join(media + [""]))
    (root / "master.m3u8").write_text("\n".join([
        "#EXTM3U",
        '#EXT-X-STREAM-INF:BANDWIDTH=900000,CODECS="avc1.42e00a,mp4a.40.2"',
        "hls/missing-video.m3u8",
        '#EXT-X-STREAM-INF:BANDWIDTH=64000,CODECS="mp4a.40.2"',
        "hls/audio.m3u8",
        "",
    ]))


class _Handler(BaseHTTPRequestHandler):
    root: Path
    ranges: list[str]

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        path = self.path.split("?", 1)[0]
        if path == "/flaky.mp4":
            self._send(503, b"try later")
        elif path == "/redirect-private":
            self._send(302, b"", headers={"Location": "http://10.0.0.1/secret.mp4"})
        elif path == "/redirect-ok":
            self._send(302, b"", headers={"Location": "/talk.mp4"})
        elif path == "/chunked.mp4":
            self.send_response(200)
            self.send_header("Content-Type", "video/mp4")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            data = (self.root / "talk.mp4").read_bytes()
            for i in range(0, len(data), 4096):
                part = data[i:i + 4096]
                self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        else:
            file = self.root / path.lstrip("/")
            if not file.is_file():
                self._send(404, b"not found", "text/plain")
                return
            types = {".mp4": "video/mp4", ".html": "text/html; charset=utf-8", ".ts": "video/mp2t",
                     ".m3u8": "application/vnd.apple.mpegurl"}
            self._send_file(file, types.get(file.suffix, "application/octet-stream"))

    def _send_file(self, file: Path, content_type: str) -> None:
        data = file.read_bytes()
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match:
            self.ranges.append(f"{self.path} {match.group(0)}")
            start = int(match.group(1))
            end = int(match.group(2)) if match.group(2) else len(data) - 1
            self._send(206, data[start:end + 1], content_type,
                       {"Content-Range": f"bytes {start}-{end}/{len(data)}", "Accept-Ranges": "bytes"})
        else:
            self._send(200, data, content_type, {"Accept-Ranges": "bytes"})

    def _send(self, status: int, body: bytes, content_type: str = "text/plain",
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class MediaServer:
    """A threaded HTTP server for ``root`` on loopback, with the special paths of :class:`_Handler`.

    ``/redirect-private`` redirects to 10.0.0.1, ``/redirect-ok`` to ``/talk.mp4``, ``/flaky.mp4``
    answers 503 and ``/chunked.mp4`` streams ``talk.mp4`` without a length. Range requests are
    answered and recorded in ``ranges``.
    """

    def __init__(self, root: Path, ranges: list[str] | None = None) -> None:
        self.ranges = ranges if ranges is not None else []
        handler = type("Handler", (_Handler,), {"root": root, "ranges": self.ranges})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
