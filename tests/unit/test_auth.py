"""Access tokens: what verifies, what is refused and how, and how keys are fetched."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from shop.access.verifier import (
    ADMIN_SCOPE,
    Authenticator,
    Forbidden,
    StaticKey,
    Unauthorized,
    thumbprint,
)
from shop.settings import Auth, ConfigError, load_settings
from tests.clock import FakeClock
from tests.tokens import AUDIENCE, ISSUER, Issuer

issuer = Issuer()


def _verify(auth: Authenticator, headers: dict[str, str]) -> Any:
    return asyncio.run(auth.principal(headers.get("Authorization")))


def _with(**auth: Any) -> Authenticator:
    """An authenticator trusting the test issuer's key, with these AUTH settings."""
    settings = Auth(issuer=ISSUER, audience=AUDIENCE, leeway_seconds=5, **auth)
    return Authenticator(StaticKey(issuer.public_pem), settings)


def test_a_valid_token_names_its_user_and_scopes() -> None:
    principal = _verify(issuer.authenticator(), issuer.bearer(42, ["products:write"]))
    assert principal.user_id == 42
    assert principal.subject == "42"
    assert principal.has("products:write")
    assert not principal.has("orders:admin")


@pytest.mark.parametrize("subject", ["catalogue-importer", "7abc", "abc7", "f81d4fae-7dec", ""])
def test_a_subject_that_is_not_a_user_id_is_no_customer(subject: str) -> None:
    principal = _verify(issuer.authenticator(), issuer.bearer(subject))
    assert principal.user_id is None
    with pytest.raises(Forbidden):
        principal.customer()


@pytest.mark.parametrize(
    ("value", "user"),
    [("7", 7), (7, 7), ("9223372036854775807", 2**63 - 1), (2**63 - 1, 2**63 - 1)],
)
def test_a_user_id_is_a_canonical_decimal_or_an_integer_in_range(value: Any, user: int) -> None:
    auth = _with(user_claim="uid")
    assert _verify(auth, issuer.bearer("someone", uid=value)).user_id == user


@pytest.mark.parametrize(
    "value",
    [
        "007", "07", "0", "00", "+7", "-7", " 7", "7 ", "\t7", "7\n", "7.0", "7.", ".7", "7e0",
        "1_000", "\u0667", "\uff17", "9223372036854775808", "99999999999999999999", 0, -7,
        2**63, 7.0,
    ],
)  # fmt: skip
def test_a_user_id_spelled_any_other_way_is_refused(value: Any) -> None:
    with pytest.raises(Unauthorized, match="user id") as refused:
        _verify(_with(user_claim="uid"), issuer.bearer("someone", uid=value))
    assert 'error="invalid_token"' in refused.value.headers["WWW-Authenticate"]


def test_007_and_7_are_never_the_same_customer() -> None:
    assert _verify(issuer.authenticator(), issuer.bearer("7")).customer() == 7
    with pytest.raises(Unauthorized):
        _verify(issuer.authenticator(), issuer.bearer("007"))


@pytest.mark.parametrize("value", [True, None, ["7"], {"id": 7}])
def test_a_user_id_claim_of_another_type_names_no_customer(value: Any) -> None:
    assert _verify(_with(user_claim="uid"), issuer.bearer("x", uid=value)).user_id is None


@pytest.mark.parametrize("case", sorted(issuer.refused(7, ["products:write"])))
def test_every_bad_token_is_refused_with_a_bearer_challenge(case: str) -> None:
    headers = issuer.refused(7, ["products:write"])[case]
    with pytest.raises(Unauthorized) as refused:
        _verify(issuer.authenticator(), headers)
    assert refused.value.status == 401
    challenge = refused.value.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer")
    if headers:  # a token was sent: the challenge says what was wrong with it
        assert 'error="invalid_token"' in challenge or 'error="invalid_request"' in challenge
    else:
        assert "error=" not in challenge


@pytest.mark.parametrize("typ", ["at+jwt", "AT+JWT", "application/at+jwt", "Application/AT+JWT"])
def test_the_access_token_type_is_compared_without_regard_to_case(typ: str) -> None:
    principal = _verify(issuer.authenticator(), issuer.bearer(3, headers={"typ": typ}))
    assert principal.user_id == 3


@pytest.mark.parametrize("typ", ["JWT", "jwt", "", "id_token+jwt", "at+jwt2", "application/jwt"])
def test_a_token_that_is_not_typed_as_an_access_token_is_refused(typ: str) -> None:
    with pytest.raises(Unauthorized, match="at\\+jwt") as refused:
        _verify(issuer.authenticator(), issuer.bearer(3, headers={"typ": typ}))
    assert 'error="invalid_token"' in refused.value.headers["WWW-Authenticate"]


def test_an_id_token_for_the_shops_audience_is_refused_unless_the_type_check_is_off() -> None:
    id_token = {"Authorization": f"Bearer {issuer.id_token(4)}"}
    with pytest.raises(Unauthorized, match="at\\+jwt"):
        _verify(issuer.authenticator(), id_token)
    lenient = Authenticator(
        StaticKey(issuer.public_pem),
        Auth(issuer=ISSUER, audience=AUDIENCE, require_at_jwt=False),
    )
    assert _verify(lenient, id_token).user_id == 4


def test_the_access_token_type_is_required_unless_it_is_turned_off_explicitly(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no config.yaml
    monkeypatch.delenv("AUTH_REQUIRE_AT_JWT", raising=False)
    assert load_settings().auth.require_at_jwt
    monkeypatch.setenv("AUTH_REQUIRE_AT_JWT", "false")
    assert not load_settings().auth.require_at_jwt
    monkeypatch.setenv("AUTH_REQUIRE_AT_JWT", "")
    with pytest.raises(ConfigError, match="AUTH_REQUIRE_AT_JWT"):
        load_settings()


def test_listed_clients_are_accepted_by_client_id_or_else_azp_and_others_refused() -> None:
    auth = _with(allowed_clients="shop-web, shop-mobile")  # as the environment gives it
    assert auth._auth.allowed_clients == ("shop-web", "shop-mobile")
    assert _verify(auth, issuer.bearer(1, client_id="shop-web")).user_id == 1
    azp_only = _without(issuer.token(2, azp="shop-mobile"), "client_id")
    assert _verify(auth, {"Authorization": f"Bearer {azp_only}"}).user_id == 2
    refused = {
        "another client": issuer.bearer(3, client_id="reporting"),
        "client_id wins over azp": issuer.bearer(3, client_id="reporting", azp="shop-web"),
        "no client at all": {"Authorization": f"Bearer {_without(issuer.token(3), 'client_id')}"},
        "a client that is no string": issuer.bearer(3, client_id=["shop-web"]),
        "a differently spelled client": issuer.bearer(3, client_id="Shop-Web"),
    }
    for case, headers in refused.items():
        with pytest.raises(Unauthorized, match="client") as refusal:
            _verify(auth, headers)
        assert 'error="invalid_token"' in refusal.value.headers["WWW-Authenticate"], case


def test_without_a_client_list_any_client_is_accepted() -> None:
    assert _verify(_with(), issuer.bearer(1, client_id="anything")).user_id == 1
    assert _verify(_with(allowed_clients=""), issuer.bearer(1, client_id="x")).user_id == 1


def _without(token: str, *names: str) -> str:
    """`token` re-signed by the test issuer without the claims `names`."""
    claims = jwt.decode(token, options={"verify_signature": False})
    header = jwt.get_unverified_header(token)
    for name in names:
        claims.pop(name, None)
    key = serialization.load_pem_private_key(issuer.signing_pem, password=None)
    return jwt.encode(claims, key, algorithm=header["alg"], headers=header)  # type: ignore[arg-type]


BOTH = {"products:write", "orders:admin"}


@pytest.mark.parametrize(
    ("claims", "granted"),
    [
        ({"scope": "products:write orders:admin"}, BOTH),
        ({"scope": ["products:write", "orders:admin"]}, BOTH),
        ({"scope": "", "scp": "products:write orders:admin"}, BOTH),
        ({"scope": "", "scp": ["products:write", "orders:admin"]}, BOTH),
        ({"scope": "products:write", "scp": ["orders:admin"]}, BOTH),
        ({"scope": "", "scp": ["products:write", 7, None, {"a": 1}]}, {"products:write"}),
        ({"scope": 7, "scp": {"products:write": True}}, set()),
    ],
)
def test_scopes_are_read_from_scope_and_scp_as_a_string_or_a_list(
    claims: dict[str, Any], granted: set[str]
) -> None:
    principal = _verify(issuer.authenticator(), issuer.bearer(5, **claims))
    assert principal.scopes == granted


NAMESPACED = "https://shop.example/roles"


@pytest.mark.parametrize(
    ("settings", "claims"),
    [
        ({"admin_claim": "realm_access.roles"}, {"realm_access": {"roles": ["x", "shop-admin"]}}),
        ({"admin_claim": "groups"}, {"groups": ["/staff", "shop-admin"]}),
        ({"admin_claim": "role"}, {"role": "shop-admin"}),
        (
            {"admin_claim": "https://shop.example/roles"},
            {"https://shop.example/roles": ["shop-admin"]},
        ),
        (
            {"admin_claim": "resource_access.shop.roles", "admin_role": "support"},
            {"resource_access": {"shop": {"roles": ["support"]}}},
        ),
    ],
)
def test_the_admin_role_or_group_grants_what_orders_admin_grants(
    settings: dict[str, str], claims: dict[str, Any]
) -> None:
    principal = _verify(_with(**settings), issuer.bearer(12, **claims))
    assert principal.has(ADMIN_SCOPE)
    assert principal.user_id == 12  # still the customer its subject names


@pytest.mark.parametrize(
    ("settings", "claims"),
    [
        ({}, {"realm_access": {"roles": ["shop-admin"]}}),  # no admin claim configured
        ({"admin_claim": ""}, {"realm_access": {"roles": ["shop-admin"]}}),
        ({"admin_claim": "realm_access.roles"}, {"realm_access": {"roles": ["shop-admins"]}}),
        ({"admin_claim": "realm_access.roles"}, {"realm_access": {"roles": "shop-admin-x"}}),
        ({"admin_claim": "realm_access.roles"}, {"realm_access": ["shop-admin"]}),
        ({"admin_claim": "realm_access.roles"}, {"realm_access.role": ["shop-admin"]}),
        ({"admin_claim": "realm_access.roles"}, {"roles": ["shop-admin"]}),
        ({"admin_claim": "groups"}, {"groups": {"shop-admin": True}}),
        ({"admin_claim": "groups", "admin_role": "ops"}, {"groups": ["shop-admin"]}),
    ],
)
def test_no_other_claim_or_value_makes_an_admin(
    settings: dict[str, str], claims: dict[str, Any]
) -> None:
    assert not _verify(_with(**settings), issuer.bearer(12, **claims)).has(ADMIN_SCOPE)


def test_a_missing_scope_is_forbidden_and_names_the_scope() -> None:
    principal = _verify(issuer.authenticator(), issuer.bearer(7))
    with pytest.raises(Forbidden) as refused:
        principal.require("products:write")
    assert refused.value.status == 403
    assert 'error="insufficient_scope"' in refused.value.headers["WWW-Authenticate"]
    assert 'scope="products:write"' in refused.value.headers["WWW-Authenticate"]


class _CountingKey(StaticKey):
    def __init__(self, pem: bytes) -> None:
        super().__init__(pem)
        self.asked = 0

    async def key(self, kid: str | None) -> Any:
        self.asked += 1
        return await super().key(kid)


def test_a_token_is_verified_once_and_remembered_only_until_it_expires() -> None:
    keys = _CountingKey(issuer.public_pem)
    clock = FakeClock()
    auth = Authenticator(
        keys, Auth(issuer=ISSUER, audience=AUDIENCE, leeway_seconds=0), clock=clock
    )
    token = issuer.bearer(5, ttl=60)["Authorization"]

    async def until_then_after_expiry() -> None:
        await auth.principal(token)
        clock.now += 30
        await auth.principal(token)
        assert keys.asked == 1
        clock.now += 40  # past `exp` on the cache's clock (PyJWT reads the real one)
        await auth.principal(token)
        assert keys.asked == 2

    asyncio.run(until_then_after_expiry())


class _SlowKey(StaticKey):
    """Answers after a turn of the event loop, as a JWKS fetch would."""

    async def key(self, kid: str | None) -> Any:
        await asyncio.sleep(0)
        return await super().key(kid)


def test_requests_that_verify_one_token_together_count_its_bytes_once() -> None:
    auth = Authenticator(
        _SlowKey(issuer.public_pem), Auth(issuer=ISSUER, audience=AUDIENCE, leeway_seconds=5)
    )
    header = issuer.bearer(9)["Authorization"]

    async def together() -> None:
        await asyncio.gather(*(auth.principal(header) for _ in range(3)))

    asyncio.run(together())
    assert auth._verified.currsize == len(header.removeprefix("Bearer "))


def test_the_static_key_id_is_the_rfc_7638_thumbprint() -> None:
    # RFC 7638 section 3.1's example key and thumbprint.
    jwk = {
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6t"
        "Soc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65Y"
        "GjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdk"
        "t-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqD"
        "Kgw",
        "e": "AQAB",
    }
    key = jwt.PyJWK(jwk).key
    assert thumbprint(key) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    pem_key = load_pem_public_key(issuer.public_pem)
    assert StaticKey(issuer.public_pem).kid == thumbprint(pem_key)
