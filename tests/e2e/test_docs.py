"""`/docs` of the running services works without the internet: the page and every asset it
loads come from the service, and in headless Chromium (which cannot resolve any host but the
services' own) Swagger UI lists every operation, locks the protected ones, and calls the service
with the token entered under "Authorize"."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from tests.conftest import TOKENS
from tests.support import PageReferences, ServiceProcess

pytestmark = pytest.mark.e2e

WAIT_SECONDS = 30
METHODS = {"get", "put", "post", "delete", "patch"}
CONTENT_TYPES = {".js": "javascript", ".css": "text/css", ".png": "image/png"}


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
@pytest.mark.parametrize("which", ["products", "orders"])
async def test_docs_page_and_every_asset_load_from_the_service(
    which: str, page: str, product_service: ServiceProcess, order_service: ServiceProcess
) -> None:
    service = product_service if which == "products" else order_service
    async with httpx.AsyncClient(base_url=service.url, timeout=15) as client:
        response = await client.get(page)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        assert "http://" not in response.text
        assert "https://" not in response.text
        parser = PageReferences()
        parser.feed(response.text)
        assets = [url for url in parser.urls if url != "/openapi.json"]
        assert assets, response.text
        for url in assets:
            assert url.startswith("/docs/assets/"), url
            asset = await client.get(url)
            assert asset.status_code == 200, url
            assert CONTENT_TYPES[Path(url).suffix] in asset.headers["content-type"], url
            assert len(asset.content) > 1000, url


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    element_id: str  # Swagger UI's id of the operation's block
    locked: bool


def _operations(document: dict[str, Any]) -> list[Operation]:
    return [
        Operation(
            method=method.upper(),
            path=path,
            element_id=f"operations-{operation['tags'][0]}-{operation['operationId']}",
            locked=bool(operation.get("security")),
        )
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    ]


def _wait(driver: WebDriver) -> WebDriverWait[WebDriver]:
    return WebDriverWait(driver, WAIT_SECONDS)


def _open_docs(driver: WebDriver, service: ServiceProcess) -> list[Operation]:
    """Load /docs; wait until Swagger UI shows every operation of the service's document."""
    operations = _operations(httpx.get(f"{service.url}/openapi.json", timeout=15).json())
    driver.get(f"{service.url}/docs")
    _wait(driver).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock")) == len(operations),
        f"Swagger UI did not list the {len(operations)} operations of the document",
    )
    return operations


def _loaded_from_elsewhere(driver: WebDriver, service: ServiceProcess) -> list[str]:
    resources: list[str] = driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    return [url for url in resources if not url.startswith(service.url + "/")]


def _operation(driver: WebDriver, operation: Operation) -> WebElement:
    return driver.find_element(By.ID, operation.element_id)


def _authorize(driver: WebDriver, token: str) -> None:
    """Enter the token under "Authorize" (Swagger UI's buttons are found by their labels)."""
    driver.find_element(By.CSS_SELECTOR, ".auth-wrapper .btn.authorize").click()
    modal = _wait(driver).until(ec.visibility_of_element_located((By.CSS_SELECTOR, ".modal-ux")))
    modal.find_element(By.CSS_SELECTOR, "input[type=text], input[type=password]").send_keys(token)
    modal.find_element(By.CSS_SELECTOR, "button[aria-label='Apply credentials']").click()
    _wait(driver).until(
        lambda d: modal.find_elements(By.CSS_SELECTOR, "button[aria-label='Remove authorization']"),
        "Swagger UI did not take the token",
    )
    modal.find_element(By.CSS_SELECTOR, ".btn-done").click()
    _wait(driver).until(ec.invisibility_of_element_located((By.CSS_SELECTOR, ".modal-ux")))


def _try_it_out(driver: WebDriver, operation: Operation, *, body: Any = None) -> None:
    block = _operation(driver, operation)
    block.find_element(By.CSS_SELECTOR, ".opblock-summary-control").click()
    _wait(driver).until(lambda d: block.find_elements(By.CSS_SELECTOR, ".try-out__btn"))
    block.find_element(By.CSS_SELECTOR, ".try-out__btn").click()
    if body is not None:
        text = _wait(driver).until(
            lambda d: block.find_element(By.CSS_SELECTOR, "textarea.body-param__text")
        )
        text.clear()
        text.send_keys(json.dumps(body))


def _execute(driver: WebDriver, operation: Operation) -> str:
    """Press Execute; the status Swagger UI shows for the service's answer."""
    block = _operation(driver, operation)
    for old in block.find_elements(By.CSS_SELECTOR, ".btn-clear"):
        old.click()  # drop the previous answer, so that the wait below sees the new one
    block.find_element(By.CSS_SELECTOR, ".btn.execute").click()
    status = _wait(driver).until(
        lambda d: block.find_element(
            By.CSS_SELECTOR, ".live-responses-table .response .response-col_status"
        )
    )
    return status.text.split()[0]  # the code, without a note such as "Undocumented"


def _find(operations: list[Operation], method: str, path: str) -> Operation:
    (found,) = [o for o in operations if (o.method, o.path) == (method, path)]
    return found


@pytest.mark.parametrize("which", ["products", "orders"])
def test_docs_list_every_operation_and_lock_the_protected_ones(
    which: str,
    browser: WebDriver,
    product_service: ServiceProcess,
    order_service: ServiceProcess,
) -> None:
    service = product_service if which == "products" else order_service
    operations = _open_docs(browser, service)
    assert [o for o in operations if o.locked], "the document declares no protected operation"
    assert [o for o in operations if not o.locked], "the document declares no public operation"
    for operation in operations:
        lock = _operation(browser, operation).find_elements(By.CSS_SELECTOR, ".authorization__btn")
        assert bool(lock) == operation.locked, f"{operation.method} {operation.path}"
    assert browser.find_elements(By.CSS_SELECTOR, ".auth-wrapper .btn.authorize")
    assert _loaded_from_elsewhere(browser, service) == []


def test_authorize_then_execute_creates_a_product(
    browser: WebDriver, product_service: ServiceProcess
) -> None:
    operations = _open_docs(browser, product_service)
    create = _find(operations, "POST", "/products")
    name = f"docs-{uuid.uuid4().hex[:12]}"
    _try_it_out(browser, create, body={"name": name, "price": 12.5, "stock": 3})
    assert _execute(browser, create) == "401"  # no token yet

    _authorize(browser, TOKENS.token("docs-tester", ["products:write"]))
    assert _execute(browser, create) == "201"
    listed = httpx.get(f"{product_service.url}/products", params={"name": name}, timeout=15)
    assert [p["name"] for p in listed.json()] == [name]
    assert _loaded_from_elsewhere(browser, product_service) == []


def test_authorize_then_execute_lists_the_customers_orders(
    browser: WebDriver, order_service: ServiceProcess
) -> None:
    operations = _open_docs(browser, order_service)
    list_orders = _find(operations, "GET", "/orders")
    _try_it_out(browser, list_orders)
    assert _execute(browser, list_orders) == "401"

    customer = 1_000_000 + uuid.uuid4().int % 1_000_000_000
    _authorize(browser, TOKENS.token(customer))
    assert _execute(browser, list_orders) == "200"
    assert _loaded_from_elsewhere(browser, order_service) == []
