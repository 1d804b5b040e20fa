"""Metric types and labels, defined once for the exporter and the Terraform dashboard.

``parascribe names --json`` prints these so Terraform can read them.
"""

from __future__ import annotations

PREFIX = "custom.googleapis.com/parascribe"

AUDIO_SECONDS = f"{PREFIX}/audio_seconds"            # labels: engine, path; DELTA-like counter (GAUGE per flush)
PROCESSING_SECONDS = f"{PREFIX}/processing_seconds"  # labels: engine, path
SPEECH_SECONDS = f"{PREFIX}/speech_seconds"        # labels: engine, path; audio sent to the engine as speech
SKIPPED_SECONDS = f"{PREFIX}/skipped_seconds"      # labels: engine, path; audio the VAD left out
RTFX = f"{PREFIX}/rtfx"                              # labels: engine; audio/processing over the flush window
COST_USD = f"{PREFIX}/cost_usd"                      # labels: method (gpu|deepgram)
SAVINGS_USD = f"{PREFIX}/savings_usd"                # vs. all-Deepgram
JOB_LATENCY_SECONDS = f"{PREFIX}/job_latency_seconds"  # labels: status
JOBS = f"{PREFIX}/jobs"                              # labels: status (done|failed)
FALLBACKS = f"{PREFIX}/fallbacks"                    # labels: reason, from_path, to_path
WEBHOOK_FAILURES = f"{PREFIX}/webhook_failures"
DEEPGRAM_AUTH_ERRORS = f"{PREFIX}/deepgram_auth_errors"
BUDGET_SPENT_USD = f"{PREFIX}/budget_spent_usd"      # the month's spend so far (mean per flush window)
BUDGET_USED_FRACTION = f"{PREFIX}/budget_used_fraction"  # spend / MONTHLY_BUDGET_USD; alerts at 0.5, 0.8, 1
SPILLED_CHUNKS = f"{PREFIX}/spilled_chunks"          # labels: reason (deadline|backlog|method|failure|...)

ALL: tuple[str, ...] = (
    AUDIO_SECONDS,
    PROCESSING_SECONDS,
    SPEECH_SECONDS,
    SKIPPED_SECONDS,
    RTFX,
    COST_USD,
    SAVINGS_USD,
    JOB_LATENCY_SECONDS,
    JOBS,
    FALLBACKS,
    WEBHOOK_FAILURES,
    DEEPGRAM_AUTH_ERRORS,
    BUDGET_SPENT_USD,
    BUDGET_USED_FRACTION,
    SPILLED_CHUNKS,
)
