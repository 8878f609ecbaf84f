"""/docs and /redoc work without internet (assets served by the API itself) and the OpenAPI document declares how
to sign in, so Swagger UI has an Authorize button (issue 16.5)."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient


def _assets(html: str) -> list[str]:
    return re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", html)


def test_swagger_ui_loads_everything_from_this_server(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    assets = _assets(page.text)
    assert "/docs-assets/swagger-ui-bundle.js" in assets
    assert "/docs-assets/swagger-ui.css" in assets
    assert all(a.startswith("/") for a in assets), assets  # nothing from a CDN
    assert "http" not in page.text.replace("http-equiv", "")
    for asset in assets:
        served = client.get(asset)
        assert served.status_code == 200, asset
        assert len(served.content) > 1000, asset
    assert "SwaggerUIBundle" in client.get("/docs-assets/swagger-ui-bundle.js").text


def test_redoc_loads_everything_from_this_server(client: TestClient) -> None:
    page = client.get("/redoc")
    assert page.status_code == 200
    assets = _assets(page.text)
    assert "/docs-assets/redoc.standalone.js" in assets
    assert all(a.startswith("/") for a in assets), assets
    assert "fonts.googleapis" not in page.text
    assert client.get("/docs-assets/redoc.standalone.js").status_code == 200


def test_the_openapi_document_declares_bearer_and_x_api_key(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    schemes = schema["components"]["securitySchemes"]
    assert schemes["bearer"] == {"type": "http", "scheme": "bearer", "description": schemes["bearer"]["description"]}
    assert schemes["apiKey"]["type"] == "apiKey"
    assert schemes["apiKey"]["in"] == "header"
    assert schemes["apiKey"]["name"] == "x-api-key"
    both: list[dict[str, list[str]]] = [{"bearer": []}, {"apiKey": []}]
    assert schema["paths"]["/v1/jobs"]["post"]["security"] == both
    assert schema["paths"]["/v1/batches/{batch_id}"]["get"]["security"] == both
    assert schema["paths"]["/anthropic/v1/messages/batches"]["post"]["security"] == both
    # Public endpoints ask for nothing.
    assert "security" not in schema["paths"]["/healthz"]["get"]
    assert "/docs" not in schema["paths"]


def test_a_key_sent_as_swagger_ui_sends_it_is_accepted(client: TestClient, auth: dict[str, str]) -> None:
    """What Authorize + "Try it out" send, for each scheme, is what the API authenticates."""
    key = auth["Authorization"].removeprefix("Bearer ")
    assert client.get("/v1/jobs", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert client.get("/v1/jobs", headers={"x-api-key": key}).status_code == 200
    assert client.get("/v1/jobs").status_code == 401


def test_docs_pages_tell_the_browser_to_load_nothing_from_elsewhere(client: TestClient) -> None:
    """ReDoc's bundle names an outside logo (cdn.redoc.ly); the policy keeps the page from fetching it."""
    for page in ("/docs", "/redoc"):
        policy = client.get(page).headers["content-security-policy"]
        assert "default-src 'self';" in policy
        assert "img-src 'self' data:;" in policy
    assert '"validatorUrl": null' in client.get("/docs").text
