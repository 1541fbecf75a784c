"""tools/trace-viewer/index.html in headless Chromium, against a stand-in for Jaeger's query API
in this process: the page as Jaeger serves it (at every path that is no API route) and
/api/services, /api/traces and /api/traces/<id> answering in Jaeger's JSON from two traces of an
order batch, spans as Jaeger's OTLP translation gives them (a batch's parent, also one of its
links, comes as its first reference, FOLLOWS_FROM). Needs no Jaeger: the page against the real
one is checked by hand (docs/observability.md)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

pytestmark = pytest.mark.e2e

PAGE = Path(__file__).resolve().parents[2] / "tools" / "trace-viewer" / "index.html"
ORDER_A = "0193a6f0-aaaa-7000-8000-000000000001"
ORDER_B = "0193a6f0-bbbb-7000-8000-000000000002"
TRACE_A = "2f1d7117abe6a1211e937750bf045e03"
TRACE_B = "d00d3921b3eb1e021c9546de22eae2e0"
T0 = 1_796_635_663_000_000  # µs since the epoch
WAIT_SECONDS = 30


def _tags(**values: Any) -> list[dict[str, Any]]:
    """Jaeger's tags; a key's dots are written as double underscores here."""
    return [
        {"key": key.replace("__", "."), "type": "string", "value": value}
        for key, value in sorted(values.items())
    ]


def _span(
    trace: str, span: str, operation: str, process: str, start: int, duration: int,
    refs: list[tuple[str, str, str]], **tags: Any,
) -> dict[str, Any]:  # fmt: skip
    return {
        "traceID": trace,
        "spanID": span,
        "operationName": operation,
        "references": [{"refType": t, "traceID": tr, "spanID": s} for t, tr, s in refs],
        "startTime": T0 + start,
        "duration": duration,
        "tags": _tags(**tags),
        "logs": [],
        "processID": process,
        "warnings": None,
    }


PROCESSES = {
    "p1": {"serviceName": "order-service", "tags": _tags(telemetry__sdk__language="python")},
    "p2": {"serviceName": "order-consumer", "tags": _tags(telemetry__sdk__language="python")},
}
TRACES = {
    TRACE_A: [  # order A's request, and the batch of A and B under A's command
        _span(TRACE_A, "a1", "POST /orders/async/kafka", "p1", 0, 10_000, [],
              span__kind="server", shop__order_id=ORDER_A),
        _span(TRACE_A, "a2", "publish order", "p1", 3_000, 4_000, [("CHILD_OF", TRACE_A, "a1")],
              span__kind="producer", shop__order_id=ORDER_A),
        _span(TRACE_A, "a5", "publish events", "p2", 38_000, 2_000, [("CHILD_OF", TRACE_A, "a3")],
              span__kind="producer"),
        _span(TRACE_A, "a4", "transaction", "p2", 28_000, 8_000, [("CHILD_OF", TRACE_A, "a3")],
              span__kind="client", otel__status_code="ERROR"),
        _span(TRACE_A, "a3", "process kafka orders", "p2", 20_000, 20_000,
              [("FOLLOWS_FROM", TRACE_A, "a2"), ("FOLLOWS_FROM", TRACE_B, "b2")],
              span__kind="consumer", shop__order_ids=json.dumps([ORDER_A, ORDER_B])),
    ],
    TRACE_B: [  # order B's request
        _span(TRACE_B, "b1", "POST /orders/async/kafka", "p1", 1_000, 9_000, [],
              span__kind="server", shop__order_id=ORDER_B),
        _span(TRACE_B, "b2", "publish order", "p1", 4_000, 4_000, [("CHILD_OF", TRACE_B, "b1")],
              span__kind="producer", shop__order_id=ORDER_B),
    ],
}  # fmt: skip
ROWS_A = [  # (depth, operation): the tree by parent, children by start
    ("0", "POST /orders/async/kafka"),
    ("1", "publish order"),
    ("2", "process kafka orders"),
    ("3", "transaction"),
    ("3", "publish events"),
]


def _trace(trace_id: str) -> dict[str, Any]:
    return {"traceID": trace_id, "spans": TRACES[trace_id], "processes": PROCESSES}


def _matches(trace_id: str, service: str, tags: dict[str, str]) -> bool:
    """Jaeger's search: one span of the service carries every tag."""
    return any(
        PROCESSES[span["processID"]]["serviceName"] == service
        and all({"key": k, "type": "string", "value": v} in span["tags"] for k, v in tags.items())
        for span in TRACES[trace_id]
    )


class FakeJaeger(BaseHTTPRequestHandler):
    searches: ClassVar[list[dict[str, list[str]]]] = []  # the queries of /api/traces

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if not url.path.startswith("/api/"):  # as Jaeger: the page at every other path
            self._answer(200, PAGE.read_bytes(), "text/html; charset=utf-8")
        elif url.path == "/api/services":
            self._json(200, {"data": ["order-service", "order-consumer"], "errors": None})
        elif url.path == "/api/traces":
            query = parse_qs(url.query)
            self.searches.append(query)
            tags = json.loads(query.get("tags", ["{}"])[0])
            found = [_trace(t) for t in TRACES if _matches(t, query["service"][0], tags)]
            self._json(200, {"data": found, "errors": None})
        elif url.path.removeprefix("/api/traces/") in TRACES:
            self._json(200, {"data": [_trace(url.path.removeprefix("/api/traces/"))]})
        else:
            self._json(404, {"data": None, "errors": [{"code": 404, "msg": "trace not found"}]})

    def _json(self, status: int, body: object) -> None:
        self._answer(status, json.dumps(body).encode(), "application/json")

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def jaeger() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeJaeger)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _wait(driver: WebDriver) -> WebDriverWait[WebDriver]:
    return WebDriverWait(driver, WAIT_SECONDS)


def _open(driver: WebDriver, url: str) -> None:
    driver.get("about:blank")  # a new page, not only a new fragment
    driver.get(url)


def _rows(driver: WebDriver) -> list[WebElement]:
    _wait(driver).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".wf .row[data-span]"))
    return driver.find_elements(By.CSS_SELECTOR, ".wf .row[data-span]")


def _row(driver: WebDriver, span: str) -> WebElement:
    return driver.find_element(By.CSS_SELECTOR, f".wf .row[data-span='{span}']")


def _classes(element: WebElement) -> set[str]:
    return set((element.get_attribute("class") or "").split())


def _percent(style: str, prop: str) -> float:
    """`left: 50%; width: 25%; ...` -> 50.0 for "left"."""
    for declaration in style.split(";"):
        name, _, value = declaration.partition(":")
        if name.strip() == prop:
            return float(value.strip().removesuffix("%"))
    raise AssertionError(f"no {prop} in {style!r}")


def test_search_by_order_id_then_open_its_trace_as_a_waterfall(
    browser: WebDriver, jaeger: str
) -> None:
    _open(browser, f"{jaeger}/")
    options = "select[name=service] option"
    _wait(browser).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, options)) == 2)
    Select(browser.find_element(By.NAME, "service")).select_by_visible_text("order-service")
    browser.find_element(By.NAME, "order").send_keys(ORDER_A)
    FakeJaeger.searches.clear()
    browser.find_element(By.CSS_SELECTOR, "#search button").click()
    _wait(browser).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#results tr.result"))
    (query,) = FakeJaeger.searches
    assert query["service"] == ["order-service"]
    assert json.loads(query["tags"][0]) == {"shop.order_id": ORDER_A}
    (result,) = browser.find_elements(By.CSS_SELECTOR, "#results tr.result")
    assert TRACE_A in result.text
    assert "order-service: POST /orders/async/kafka" in result.text
    assert "1 failed" in result.text
    assert "order=" in browser.execute_script("return location.hash")  # the search, as a link

    result.find_element(By.TAG_NAME, "a").click()
    rows = _rows(browser)
    assert browser.execute_script("return location.hash") == f"#/trace/{TRACE_A}"
    shown = [
        (r.get_attribute("data-depth"), r.find_element(By.CSS_SELECTOR, ".op").text) for r in rows
    ]
    assert shown == ROWS_A
    kinds = [r.find_element(By.CSS_SELECTOR, ".kind").text for r in rows]
    assert kinds == ["server", "producer", "consumer", "client", "producer"]
    services = [r.find_element(By.CSS_SELECTOR, ".svc").text for r in rows]
    assert services == ["order-service"] * 2 + ["order-consumer"] * 3
    failed = [r.get_attribute("data-span") for r in rows if _classes(r) >= {"error"}]
    assert failed == ["a4"]
    assert (
        _row(browser, "a4").find_element(By.CSS_SELECTOR, ".op").value_of_css_property("color")
        == "rgba(198, 40, 40, 1)"
    )  # --err, #c62828
    # bars on one scale: the trace is 40 ms, from the request's start to the batch's end
    root_bar = _row(browser, "a1").find_element(By.CSS_SELECTOR, ".bar").get_attribute("style")
    batch_bar = _row(browser, "a3").find_element(By.CSS_SELECTOR, ".bar").get_attribute("style")
    assert (_percent(root_bar or "", "left"), _percent(root_bar or "", "width")) == (0, 25)
    assert (_percent(batch_bar or "", "left"), _percent(batch_bar or "", "width")) == (50, 50)
    assert "+20.0 ms · 20.0 ms" in _row(browser, "a3").text
    resources = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert [url for url in resources if not url.startswith(jaeger + "/")] == []


def test_a_span_shows_its_attributes_and_its_links_lead_to_the_linked_traces(
    browser: WebDriver, jaeger: str
) -> None:
    _open(browser, f"{jaeger}/#/trace/{TRACE_A}")
    _rows(browser)
    _row(browser, "a3").click()
    _wait(browser).until(lambda d: d.find_elements(By.ID, "attributes"))
    assert browser.execute_script("return location.hash") == f"#/trace/{TRACE_A}/a3"
    assert _classes(_row(browser, "a3")) >= {"selected"}
    attributes = browser.find_element(By.ID, "attributes").text
    assert "shop.order_ids" in attributes
    assert ORDER_B in attributes
    links = browser.find_elements(By.CSS_SELECTOR, "#links li")
    assert [link.find_element(By.TAG_NAME, "a").get_attribute("href") for link in links] == [
        f"{jaeger}/#/trace/{TRACE_A}/a2",
        f"{jaeger}/#/trace/{TRACE_B}/b2",
    ]
    assert "this trace: order-service: publish order, also the parent" in links[0].text
    assert "another trace" in links[1].text

    links[1].find_element(By.TAG_NAME, "a").click()  # to order B's trace, its command selected
    _wait(browser).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".row[data-span='b2']"))
    rows = _rows(browser)
    assert [r.get_attribute("data-span") for r in rows] == ["b1", "b2"]
    assert _classes(_row(browser, "b2")) >= {"selected"}
    assert ORDER_B in browser.find_element(By.ID, "attributes").text
    assert TRACE_B in browser.find_element(By.ID, "trace-link").text


def test_a_shared_trace_link_opens_the_trace_and_an_unknown_trace_says_so(
    browser: WebDriver, jaeger: str
) -> None:
    _open(browser, f"{jaeger}/#/trace/{TRACE_B}")
    assert len(_rows(browser)) == 2
    assert not browser.find_elements(By.CSS_SELECTOR, ".details")  # no span chosen
    unknown = "00000000000000000000000000000001"
    _open(browser, f"{jaeger}/#/trace/{unknown}")
    main = browser.find_element(By.ID, "main")
    _wait(browser).until(lambda d: "trace not found" in main.text)
    assert unknown in main.text
