"""OIDC/JWT bearer tokens for people: HS256 and RS256 verified, a claim mapped to a role, audited by name."""
from __future__ import annotations

import time

import aiohttp
import pytest

from tests.admin_support import Api, admin_harness

jwt = pytest.importorskip("joserfc.jwt")
jwk = pytest.importorskip("joserfc.jwk")

ISSUER, AUDIENCE, SECRET = "https://idp.acme.example/", "llmgw-admin", "hs256-shared-secret-for-tests-0123456789"


@pytest.fixture(scope="module")
def rsa():
    key = jwk.RSAKey.generate_key(2048)
    public = key.as_dict(private=False)
    public["kid"] = "idp-1"
    return key, {"keys": [public]}


@pytest.fixture
async def gw(fake_provider, tmp_path, rsa):
    oidc = {"issuer": ISSUER, "audience": AUDIENCE, "algorithms": ["RS256", "HS256"], "jwks": rsa[1],
            "hs256_secret": SECRET, "role_claim": "groups",
            "role_map": {"platform-admins": "owner", "eng-leads": "workspace_admin", "finops": "finance"},
            "workspaces_claim": "llmgw_workspaces", "name_claim": "email"}
    h = admin_harness(fake_provider, tmp_path, file_config={"admin": {"oidc": oidc}})
    await h.start()
    yield h
    await h.stop()


def token(claims: dict, *, rsa=None, **over) -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 300, "sub": "u1", **claims, **over}
    if rsa is not None:
        return jwt.encode({"alg": "RS256", "kid": "idp-1"}, body, rsa[0])
    return jwt.encode({"alg": "HS256"}, body, jwk.OctKey.import_key(SECRET))


async def test_rs256_and_hs256_tokens_map_groups_to_roles(gw, rsa):
    async with aiohttp.ClientSession() as http:
        owner = Api(http, gw.url, token({"email": "root@acme.example", "groups": ["staff", "platform-admins"]}, rsa=rsa))
        me = await owner.ok("GET", "/admin/whoami")
        assert me == {"name": "root@acme.example", "role": "owner", "workspaces": [], "via": "oidc",
                      "actor": "oidc:root@acme.example#u1"}          # the name claim and the subject
        await owner.ok("POST", "/admin/orgs", {"name": "acme", "reason": "sso"}, 201)
        audit = (await owner.ok("GET", "/admin/audit?type=org"))["data"]
        assert audit[-1]["actor"] == "oidc:root@acme.example#u1"

        lead = owner.as_(token({"email": "lead@acme.example", "groups": "eng-leads",
                                "llmgw_workspaces": ["acme/backend"]}))
        assert (await lead.ok("GET", "/admin/whoami"))["role"] == "workspace_admin"
        await lead.ok("POST", "/admin/keys", {"org": "acme", "workspace": "backend", "user": "a"}, 201)
        assert (await lead.post("/admin/keys", {"org": "acme", "workspace": "frontend", "user": "a"}))[0] == 403
        fin = owner.as_(token({"groups": ["finops"]}))
        assert (await fin.post("/admin/keys", {"org": "acme", "workspace": "backend", "user": "a"}))[0] == 403


@pytest.mark.parametrize("bad", ["expired", "issuer", "audience", "signature", "no-role"])
async def test_bad_tokens_get_401(gw, rsa, bad):
    claims = {"groups": ["platform-admins"]}
    tok = {"expired": lambda: token(claims, exp=int(time.time()) - 3600),
           "issuer": lambda: token(claims, iss="https://evil.example/"),
           "audience": lambda: token(claims, aud="someone-else"),
           "signature": lambda: token(claims)[:-4] + "AAAA",
           "no-role": lambda: token({"groups": ["interns"]}, rsa=rsa)}[bad]()
    async with aiohttp.ClientSession() as http:
        status, out = await Api(http, gw.url, tok).get("/admin/whoami")
    assert status == 401 and out["error"]["type"] == "authentication_error", out
