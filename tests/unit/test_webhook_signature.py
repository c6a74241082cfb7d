"""The webhook signature contract (Standard Webhooks): what a receiver checks with ``verify``."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from bastionary.dunning.notify.webhook import (
    CONTENT_TYPE,
    ID_HEADER,
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    SignatureError,
    sign,
    signed_headers,
    verify,
)
from bastionary.outbound import secret_bytes

KEY = bytes(range(24))  # Standard Webhooks secrets are 24 to 64 random bytes
SECRET = "whsec_" + base64.b64encode(KEY).decode()
OLD_KEY = bytes(range(100, 132))
OLD_SECRET = "whsec_" + base64.b64encode(OLD_KEY).decode()
NOTICE_ID = "1190256c-5425-5f4c-8500-9819729e7cc6"
BODY = b'{"specversion":"1.0","type":"bastionary.dunning.step.v1","data":{"amount_due":"42.50"}}'
NOW = 1_772_000_000


def _headers(secrets=SECRET, webhook_id: str = NOTICE_ID, timestamp: int = NOW, body: bytes = BODY) -> dict[str, str]:
    return signed_headers(secrets, webhook_id, timestamp, body)


def _reason(secrets, headers, body: bytes = BODY, **kwargs) -> str:
    with pytest.raises(SignatureError) as excinfo:
        verify(secrets, headers, body, now=kwargs.pop("now", NOW), **kwargs)
    return excinfo.value.reason


def _v1(key: bytes, webhook_id: str, timestamp: str, body: bytes) -> str:
    """The documented signature, computed here without the module's help."""
    signed = webhook_id.encode() + b"." + timestamp.encode() + b"." + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


# --- signing ---------------------------------------------------------------------------


def test_round_trip_returns_the_timestamp():
    assert verify(SECRET, _headers(), BODY, now=NOW) == NOW


def test_signature_is_the_documented_hmac_in_base64():
    assert sign(SECRET, NOTICE_ID, NOW, BODY) == _v1(KEY, NOTICE_ID, str(NOW), BODY)


def test_headers_are_the_documented_ones_in_order():
    headers = _headers()
    assert list(headers) == ["Content-Type", "webhook-id", "webhook-timestamp", "webhook-signature", "Idempotency-Key"]
    assert list(headers)[1:] == [ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER, IDEMPOTENCY_HEADER]
    assert headers["Content-Type"] == CONTENT_TYPE == "application/cloudevents+json"
    assert headers[ID_HEADER] == headers[IDEMPOTENCY_HEADER] == NOTICE_ID
    assert headers[TIMESTAMP_HEADER] == str(NOW)
    assert headers[SIGNATURE_HEADER] == _v1(KEY, NOTICE_ID, str(NOW), BODY)


def test_standard_webhooks_reference_vector():
    # test_sign_function of the reference Python library (standard-webhooks/standard-webhooks),
    # so a receiver using any Standard Webhooks library agrees with us.
    signature = sign(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}'
    )
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_header_names_are_matched_whatever_their_case():
    headers = {name.upper(): value for name, value in _headers().items()}
    assert verify(SECRET, headers, BODY, now=NOW) == NOW
    headers = {name.title(): value for name, value in _headers().items()}
    assert verify(SECRET, headers, BODY, now=NOW) == NOW


def test_surrounding_blanks_in_header_values_are_ignored():
    headers = {name: f" {value} " for name, value in _headers().items()}
    assert verify(SECRET, headers, BODY, now=NOW) == NOW


# --- secrets ---------------------------------------------------------------------------


def test_whsec_secret_is_the_base64_decoded_key():
    assert secret_bytes(SECRET) == KEY
    assert sign(SECRET, NOTICE_ID, NOW, BODY) == sign(KEY, NOTICE_ID, NOW, BODY)


def test_other_strings_are_their_utf8_bytes_and_bytes_pass_through():
    assert secret_bytes("plain-secret-é") == "plain-secret-é".encode()
    assert secret_bytes(b"whsec_not-decoded") == b"whsec_not-decoded"
    assert sign("plain-secret", NOTICE_ID, NOW, BODY) == _v1(b"plain-secret", NOTICE_ID, str(NOW), BODY)


@pytest.mark.parametrize(
    "secret", ["whsec_not base64", "whsec_abc", "whsec_ab$d", "whsec_YWJj\n", "whsec_éé==", "whsec_YW-j", "whsec_YW_j"]
)
def test_whsec_secret_with_bad_base64_is_refused_clearly(secret):
    with pytest.raises(ValueError, match="whsec_ must be followed by standard base64") as excinfo:
        secret_bytes(secret)
    assert secret.removeprefix("whsec_") not in str(excinfo.value)  # the secret stays out of logs


def test_no_secrets_or_an_empty_one_is_a_configuration_error():
    with pytest.raises(ValueError, match="no webhook secret"):
        verify([], _headers(), BODY, now=NOW)
    with pytest.raises(ValueError, match="empty"):
        sign("whsec_", NOTICE_ID, NOW, BODY)
    with pytest.raises(ValueError, match="empty"):
        sign([SECRET, ""], NOTICE_ID, NOW, BODY)


# --- what does not verify --------------------------------------------------------------


def test_tampered_body_is_a_mismatch():
    assert _reason(SECRET, _headers(), BODY.replace(b"42.50", b"4.25")) == "mismatch"


def test_changed_id_is_a_mismatch():
    # The id receivers dedupe on is signed: a replay under a fresh id does not verify.
    headers = _headers() | {ID_HEADER: "1190256c-5425-5f4c-8500-000000000000"}
    assert _reason(SECRET, headers) == "mismatch"


def test_changed_timestamp_is_a_mismatch():
    headers = _headers() | {TIMESTAMP_HEADER: str(NOW + 1)}
    assert _reason(SECRET, headers) == "mismatch"


def test_idempotency_key_is_not_signed():
    # Documented: receivers dedupe on webhook-id, the signed copy of the notice id.
    headers = _headers() | {IDEMPOTENCY_HEADER: "anything"}
    assert verify(SECRET, headers, BODY, now=NOW) == NOW


def test_wrong_secret_is_a_mismatch():
    assert _reason(OLD_SECRET, _headers()) == "mismatch"


def test_a_forgery_is_a_mismatch_whatever_its_timestamp():
    headers = _headers() | {TIMESTAMP_HEADER: str(NOW - 10_000)}
    assert _reason(SECRET, headers) == "mismatch"


@pytest.mark.parametrize("skew", [-301, 301, -10_000, 10_000])
def test_old_or_future_timestamp_is_stale(skew):
    assert _reason(SECRET, _headers(timestamp=NOW + skew)) == "stale"


@pytest.mark.parametrize("skew", [-300, 0, 300])
def test_within_tolerance_is_accepted(skew):
    assert verify(SECRET, _headers(timestamp=NOW + skew), BODY, now=NOW) == NOW + skew


def test_tolerance_is_configurable():
    assert _reason(SECRET, _headers(timestamp=NOW - 20), tolerance=10) == "stale"


def test_a_far_timestamp_is_stale_not_an_overflow():
    stamp = "9" * 20
    headers = _headers() | {TIMESTAMP_HEADER: stamp, SIGNATURE_HEADER: _v1(KEY, NOTICE_ID, stamp, BODY)}
    assert _reason(SECRET, headers) == "stale"


@pytest.mark.parametrize("name", [ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER])
@pytest.mark.parametrize("value", [None, "", "   "])
def test_missing_header(name, value):
    headers = _headers()
    if value is None:
        del headers[name]
    else:
        headers[name] = value
    assert _reason(SECRET, headers) == "missing"


@pytest.mark.parametrize(
    "timestamp",
    ["soon", f"+{NOW}", f"{NOW}.0", f"-{NOW}", f"{NOW:_}", "１７７２００００００", "1" * 21, f"0x{NOW:x}"],
)
def test_malformed_timestamp(timestamp):
    headers = _headers() | {TIMESTAMP_HEADER: timestamp}
    assert _reason(SECRET, headers) == "malformed"


@pytest.mark.parametrize(
    "signature",
    [
        "garbage",  # no version
        "v1",
        "v1,",
        ",abc",
        "t=1772000000,v1=deadbeef",  # the old Bastionary-Signature form
        "v2,xyz",  # only unknown versions
        "v1,not*base64",  # no usable v1 entry
        "v1," + base64.b64encode(b"short").decode(),  # not a SHA-256 digest
    ],
)
def test_malformed_signature_header(signature):
    headers = _headers() | {SIGNATURE_HEADER: signature}
    assert _reason(SECRET, headers) == "malformed"


def test_a_repeated_header_is_malformed():
    # A second webhook-id could pass the signature with one value and the dedupe with another.
    headers = list(_headers().items()) + [("Webhook-Id", "another-id")]

    class MultiDict(dict):
        def items(self):
            return headers

    assert _reason(SECRET, MultiDict()) == "malformed"


def test_signature_error_is_a_value_error():
    assert issubclass(SignatureError, ValueError)


# --- several signatures: unknown versions, rotation ------------------------------------


def test_unknown_version_entries_are_ignored():
    for extra in ("v2,xyz", "v1a,hnO3f9T8Ytu9HwrXslvumlUpqtNVqkhqw/enGzPCXe5BdqzCInXqYXFymVJaA7AZdpX=", "v0,deadbeef"):
        headers = _headers()
        headers[SIGNATURE_HEADER] = f"{extra} {headers[SIGNATURE_HEADER]}"
        assert verify(SECRET, headers, BODY, now=NOW) == NOW


def test_a_bad_entry_beside_a_good_one_still_verifies():
    headers = _headers()
    junk = "v1," + base64.b64encode(b"\0" * 32).decode()
    headers[SIGNATURE_HEADER] = f"{junk} v1,not*base64 {headers[SIGNATURE_HEADER]}"
    assert verify(SECRET, headers, BODY, now=NOW) == NOW


def test_rotation_receiver_holds_old_and_new_secrets():
    # A sender still on the old secret, and one already moved to the new one, both pass.
    assert verify([SECRET, OLD_SECRET], _headers(OLD_SECRET), BODY, now=NOW) == NOW
    assert verify([SECRET, OLD_SECRET], _headers(SECRET), BODY, now=NOW) == NOW
    assert _reason([SECRET], _headers(OLD_SECRET)) == "mismatch"


def test_rotation_sender_signs_with_both_secrets():
    headers = _headers([SECRET, OLD_SECRET])
    assert headers[SIGNATURE_HEADER] == " ".join(
        [_v1(KEY, NOTICE_ID, str(NOW), BODY), _v1(OLD_KEY, NOTICE_ID, str(NOW), BODY)]
    )
    # Whichever of the two the receiver has, it verifies.
    assert verify(OLD_SECRET, headers, BODY, now=NOW) == NOW
    assert verify(SECRET, headers, BODY, now=NOW) == NOW
    assert _reason("whsec_" + base64.b64encode(b"x" * 24).decode(), headers) == "mismatch"
