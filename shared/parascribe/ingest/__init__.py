"""URL ingest: fetch a user's URL (direct media, HLS, or a page yt-dlp understands) into the uploads bucket.

The API publishes an :class:`~parascribe.contracts_api.IngestRequest`; the worker here pulls it,
resolves the URL through the SSRF guard (:mod:`parascribe.netguard`), keeps only the audio track
(copied, or re-encoded to FLAC), uploads it under ``ingest/<request_id>/`` and records the outcome
on ``requests/<request_id>.json``. The bucket notification then starts the pipeline's job.
"""
