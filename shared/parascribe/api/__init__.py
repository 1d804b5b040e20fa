"""The HTTP API: puts objects and requests in front of the pipeline, and reports on them.

The bucket drop stays the pipeline's one entry. The API records an
:class:`~parascribe.contracts_api.ApiRequest`, then either publishes an
:class:`~parascribe.contracts_api.IngestRequest` (a URL for the ingest worker),
copies a ``gs://`` object into the uploads bucket, or hands out a resumable upload
session so audio never passes through it. Every upload it causes lands under
``api/<request_id>/`` with the ``parascribe-*`` metadata.
"""
