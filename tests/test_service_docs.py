"""The service's API pages: /docs (Swagger UI) and /redoc render in a real Chromium on a closed
network, every resource served by the service itself; the OpenAPI schema describes every
endpoint and its response model; every response names the one scale its scores are on."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tasks import registry
from tasks.export import export
from tasks.params import load_params
from tasks.train import train
from tests.browser import Browser
from tests.conftest import synthetic_features
from tests.test_serve import server

ENDPOINTS = ("/recommend/{user_id}", "/recommend", "/items/{item_id}/similar")
ENDPOINTS += ("/healthz", "/readyz", "/metrics")


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """The service on a loopback port, serving a popularity champion of tiny synthetic data."""
    root = tmp_path_factory.mktemp("docs")
    synthetic_features(root, 60, 40, 1500, seed=3)
    features, models, artifacts = root / "features", root / "models", root / "artifacts"
    params = load_params(root / "absent.yaml", {"features.out": str(features)})
    train("popularity", features, models / "popularity", params)
    version = export("popularity", models, features, artifacts, parity_users=16, latency_calls=5)
    registry.promote(artifacts, "popularity", version["version"], "test")
    with server(artifacts, root / "service.log") as c:
        yield c


def local_urls(html: str, base: str) -> list[str]:
    """Every src/href/url(...) of a page, made absolute against `base`."""
    found = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html)
    found += re.findall(r"""url\s*:\s*["']([^"']+)["']""", html)
    found += re.findall(r"""spec-url\s*=\s*["']([^"']+)["']""", html)
    return [urllib.parse.urljoin(base, url) for url in found]


def test_the_docs_pages_name_only_resources_of_the_service(client: httpx.Client):
    base = str(client.base_url)
    for page in ("/docs", "/redoc"):
        response = client.get(page)
        assert "default-src 'self'" in response.headers["content-security-policy"]
        html = response.text
        urls = local_urls(html, base + page)
        assert urls, f"{page}: no resources found in {html[:200]}"
        for url in urls:
            assert url.startswith(base + "/"), f"{page} loads {url} from elsewhere"
            assert client.get(url).status_code == 200, url


def test_every_endpoint_has_a_description_and_a_response_schema(client: httpx.Client):
    spec = client.get("/openapi.json").json()
    assert spec["info"]["description"].count("`score_scale`") >= 1
    paths = spec["paths"]
    assert set(ENDPOINTS) <= set(paths)
    for path in ENDPOINTS:
        for method, op in paths[path].items():
            where = f"{method.upper()} {path}"
            assert op.get("summary") and op.get("description"), f"{where}: undocumented"
            ok = op["responses"]["200"]
            assert ok["content"], f"{where}: no response content"
            if path != "/metrics":
                assert "$ref" in ok["content"]["application/json"]["schema"], where
    recommendation = spec["components"]["schemas"]["Recommendations"]["properties"]
    assert recommendation["score_scale"]["enum"] == ["model", "popularity", "cosine"]
    assert all(field.get("description") for field in recommendation.values())


def test_each_response_names_its_score_scale_and_flags_fallbacks(client: httpx.Client):
    unknown = client.get("/recommend/no-such-user", params={"k": 3}).json()
    assert (unknown["fallback"], unknown["reason"], unknown["score_scale"]) == (
        True,
        "unknown user",
        "popularity",
    )
    counts = [item["score"] for item in unknown["items"]]
    assert counts == sorted(counts, reverse=True) and all(c == int(c) for c in counts)
    known = client.get("/readyz").json()
    assert known["ready"] is True and known["model"] == "popularity"
    assert known["items"] > 0 and "users" in known


def test_swagger_ui_and_redoc_render_with_the_network_unreachable(
    client: httpx.Client, tmp_path: Path
):
    base = str(client.base_url)
    browser = Browser(tmp_path / "chromium-profile", offline=True)
    try:
        browser.send("Network.enable")
        browser.send("Page.navigate", url=base + "/docs")
        shown = browser.wait_js(
            "document.querySelectorAll('#swagger-ui .opblock').length",
            "the Swagger UI operations",
            failure="service-docs-failure.png",
        )
        assert shown >= len(ENDPOINTS)
        text = browser.js("document.querySelector('#swagger-ui').innerText")
        assert "Recommend items to a known user" in text and "score_scale" in text

        browser.send("Page.navigate", url=base + "/redoc")
        # the sidebar's footer mounts a logo from ReDoc's CDN, hidden again once it fails: the
        # page has settled when the footer shows without it
        browser.wait_js(
            "document.body.innerText.includes('Items similar to an item')"
            " && document.body.innerText.includes('API docs by Redocly')"
            " && !document.querySelector('img[alt=\"redocly logo\"]')",
            "the ReDoc page",
            failure="service-redoc-failure.png",
        )
        # a request the page's Content-Security-Policy refused never reached the network
        refused = {
            event["params"]["requestId"]
            for event in browser.events
            if event["method"] == "Network.loadingFailed"
            and event["params"].get("blockedReason") == "csp"
        }
        requested = {
            event["params"]["request"]["url"]
            for event in browser.events
            if event["method"] == "Network.requestWillBeSent"
            and event["params"]["requestId"] not in refused
        }
        failed = [
            event["params"]
            for event in browser.events
            if event["method"] == "Network.loadingFailed"
            and event["params"]["requestId"] not in refused
        ]
    finally:
        browser.close()
    outside = [url for url in requested if not url.startswith((base + "/", "data:", "blob:"))]
    assert requested and outside == []
    assert failed == []
