"""What the operator copies from KubeRay, Kueue and the API server: one line, at most 1 KiB, secrets redacted."""

from __future__ import annotations

from loka_operator.messages import MAX_MESSAGE_BYTES, REDACTED, Redactor, brief

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"
TOKEN = "hf_abcdefghijklmnop"


def test_a_driver_log_becomes_its_first_line() -> None:
    log = "\n\nTraceback (most recent call last):\n  File 'x.py', line 1\nValueError: boom\n"
    assert brief(log) == "Traceback (most recent call last):"


def test_a_long_line_is_cut_to_1_kib_with_an_ellipsis() -> None:
    line = "é" * 5000
    out = brief(line)
    assert len(out.encode()) <= MAX_MESSAGE_BYTES
    assert out.endswith("…")


def test_secret_values_are_redacted_anywhere_in_the_kept_line() -> None:
    redactor = Redactor.of([SECRET, TOKEN])
    line = f"aws secret={SECRET} hf={TOKEN} again {SECRET}"
    assert brief(line, redactor) == f"aws secret={REDACTED} hf={REDACTED} again {REDACTED}"


def test_a_secret_across_the_cut_leaks_none_of_its_head() -> None:
    redactor = Redactor.of([SECRET])
    line = "x" * (MAX_MESSAGE_BYTES - 10) + SECRET + "tail"
    out = brief(line, redactor)
    assert SECRET[:8] not in out
    assert len(out.encode()) <= MAX_MESSAGE_BYTES


def test_redaction_does_not_shift_a_later_secret_into_view() -> None:
    long_secret = "S" * 200 + "-long-secret"
    redactor = Redactor.of([long_secret, SECRET])
    line = long_secret * 4 + "x" * 900 + SECRET
    out = brief(line, redactor)
    assert "SSSS" not in out and SECRET[:6] not in out


def test_the_redactor_holds_no_value() -> None:
    redactor = Redactor.of([SECRET])
    assert SECRET not in repr(redactor)
    assert SECRET.encode() not in b"".join(d for ds in redactor.digests.values() for d in ds)
