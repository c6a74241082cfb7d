"""The webhook signature contract: what a receiver checks with ``verify``."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from bastionary.dunning.notify.webhook import SignatureError, sign, verify

SECRET = "whsec_test"
BODY = b'{"specversion":"1.0","type":"bastionary.dunning.step.v1","data":{"amount_due":"42.50"}}'
NOW = 1_772_000_000


def _reason(excinfo: pytest.ExceptionInfo[SignatureError]) -> str:
    return excinfo.value.reason


def test_round_trip_returns_the_timestamp():
    header = sign(SECRET, NOW, BODY)
    assert verify(SECRET, header, BODY, now=NOW) == NOW


def test_header_format_is_the_documented_hmac():
    header = sign(SECRET, NOW, BODY)
    expected = hmac.new(SECRET.encode(), f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert header == f"t={NOW},v1={expected}"


def test_bytes_and_str_secrets_agree():
    assert sign(SECRET, NOW, BODY) == sign(SECRET.encode(), NOW, BODY)


def test_tampered_body_is_a_mismatch():
    header = sign(SECRET, NOW, BODY)
    with pytest.raises(SignatureError) as excinfo:
        verify(SECRET, header, BODY.replace(b"42.50", b"4.25"), now=NOW)
    assert _reason(excinfo) == "mismatch"


def test_wrong_secret_is_a_mismatch():
    with pytest.raises(SignatureError) as excinfo:
        verify("other", sign(SECRET, NOW, BODY), BODY, now=NOW)
    assert _reason(excinfo) == "mismatch"


def test_changed_timestamp_is_a_mismatch():
    signature = sign(SECRET, NOW, BODY).split(",", 1)[1]
    with pytest.raises(SignatureError) as excinfo:
        verify(SECRET, f"t={NOW + 1},{signature}", BODY, now=NOW)
    assert _reason(excinfo) == "mismatch"


@pytest.mark.parametrize("skew", [-301, 301, -10_000, 10_000])
def test_old_or_future_timestamp_is_stale(skew):
    header = sign(SECRET, NOW + skew, BODY)
    with pytest.raises(SignatureError) as excinfo:
        verify(SECRET, header, BODY, now=NOW)
    assert _reason(excinfo) == "stale"


@pytest.mark.parametrize("skew", [-300, 0, 300])
def test_within_tolerance_is_accepted(skew):
    assert verify(SECRET, sign(SECRET, NOW + skew, BODY), BODY, now=NOW) == NOW + skew


def test_tolerance_is_configurable():
    header = sign(SECRET, NOW - 20, BODY)
    with pytest.raises(SignatureError) as excinfo:
        verify(SECRET, header, BODY, now=NOW, tolerance=10)
    assert _reason(excinfo) == "stale"


@pytest.mark.parametrize("header", [None, "", "   "])
def test_missing_header(header):
    with pytest.raises(SignatureError) as excinfo:
        verify(SECRET, header, BODY, now=NOW)
    assert _reason(excinfo) == "missing"


@pytest.mark.parametrize(
    "header",
    [
        "garbage",
        "v1=abc",  # no timestamp
        f"t={NOW}",  # no signature
        "t=soon,v1=abc",
        f"t=+{NOW},v1=abc",
        f"t={NOW},t={NOW},v1=abc",
        f"t={NOW},v1=",
        f"t={NOW},,v1=abc",
    ],
)
def test_malformed_header(header):
    with pytest.raises(SignatureError) as excinfo:
        verify(SECRET, header, BODY, now=NOW)
    assert _reason(excinfo) == "malformed"


def test_signature_error_is_a_value_error():
    assert issubclass(SignatureError, ValueError)


def test_unknown_schemes_are_ignored():
    header = sign(SECRET, NOW, BODY) + ",v0=deadbeef"
    assert verify(SECRET, header, BODY, now=NOW) == NOW


def test_rotation_receiver_holds_old_and_new_secrets():
    old, new = "whsec_old", "whsec_new"
    # A sender still on the old secret, and one already moved to the new one, both pass.
    assert verify([new, old], sign(old, NOW, BODY), BODY, now=NOW) == NOW
    assert verify([new, old], sign(new, NOW, BODY), BODY, now=NOW) == NOW
    with pytest.raises(SignatureError):
        verify([new], sign(old, NOW, BODY), BODY, now=NOW)


def test_rotation_sender_signs_with_both_secrets():
    old, new = "whsec_old", "whsec_new"
    header = sign([new, old], NOW, BODY)
    assert header.count("v1=") == 2
    # Whichever of the two the receiver has, it verifies.
    assert verify(old, header, BODY, now=NOW) == NOW
    assert verify(new, header, BODY, now=NOW) == NOW


def test_a_bad_entry_beside_a_good_one_still_verifies():
    header = sign(SECRET, NOW, BODY).replace(",v1=", ",v1=00ff,v1=")
    assert verify(SECRET, header, BODY, now=NOW) == NOW


def test_no_secrets_is_a_configuration_error():
    with pytest.raises(ValueError, match="no webhook secret"):
        verify([], sign(SECRET, NOW, BODY), BODY, now=NOW)
