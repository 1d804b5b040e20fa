"""Test speech from espeak-ng, shared by every test that needs real spoken words."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import jiwer
import pytest


def speak(text: str, path: Path, rate: int = 150, voice: str | None = None) -> Path:
    """Speak ``text`` with espeak-ng into the WAV file ``path``.

    Skips the calling test when espeak-ng is not installed.

    Args:
        text: What to say.
        path: Where to write the WAV file.
        rate: Speaking rate in words per minute (espeak-ng's own default is 175).
        voice: An espeak-ng voice (``en-us``, ``en-gb-scotland``, ``en-us+f3``...); its default when None.

    Returns:
        ``path``, now holding the speech.
    """
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (make setup installs it): no test speech")
    voice_args = ["-v", voice] if voice else []
    subprocess.run(["espeak-ng", "-s", str(rate), *voice_args, "-w", str(path), text], check=True,
                   capture_output=True)
    return path


_NORMALISE = jiwer.Compose([jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces(), jiwer.Strip()])


def word_error_rate(reference: str, hypothesis: str) -> float:
    """WER of ``hypothesis`` against ``reference``, ignoring case and punctuation."""
    return float(jiwer.wer(_NORMALISE(reference), _NORMALISE(hypothesis)))
