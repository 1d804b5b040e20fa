"""The spoken language a job asks for, and which path can transcribe it.

A job may name its language (``parascribe-language`` object metadata, ``language`` in the API, the
SDK and the CLI). Without one it is transcribed as the deployment's default: English on the GPU, and
``DEEPGRAM_LANGUAGE`` on Deepgram.

- Parakeet TDT 0.6B v2 transcribes English only (its model card), so a job in any other language
  goes to Deepgram whole: ``auto`` and ``hybrid`` become ``deepgram``, and ``gpu`` fails with a
  reason rather than return English-sounding nonsense.
- Deepgram takes a BCP-47 tag (``es``, ``pt-BR``, ``zh-TW``) or ``multi`` for code-switching
  speech. Tags are checked for shape here; whether Nova-3 knows one is Deepgram's to say, and its
  answer fails the job with Deepgram's own words.
"""

from __future__ import annotations

import re

MAX_LENGTH = 35
_TAG = re.compile(r"multi|[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*")
GPU_LANGUAGES = "English only: Parakeet TDT 0.6B v2 has no other language"


def parse_language(value: object) -> str:
    """A language tag, stripped, as the client wrote it (Deepgram's tags are case-sensitive: ``pt-BR``).

    Raises:
        ValueError: not a BCP-47-shaped tag or ``multi``; the message says what is allowed.
    """
    text = str(value).strip()
    if len(text) > MAX_LENGTH or not _TAG.fullmatch(text):
        raise ValueError(f"language {text[:40]!r} is not a language tag such as en, es, pt-BR or multi")
    return text


def optional_language(value: object) -> str | None:
    """:func:`parse_language`, where a missing or blank value means the deployment's default (None)."""
    return None if value is None or str(value).strip() == "" else parse_language(value)


def gpu_transcribes(language: str | None) -> bool:
    """Whether the GPU path (Parakeet, English only) can transcribe speech in ``language``; None is the default."""
    return language is None or language.lower() == "en" or language.lower().startswith("en-")
