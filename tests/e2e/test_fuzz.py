"""Schemathesis against both running services, every check on: every answer to generated
requests (valid and invalid ones, one operation at a time and in linked sequences) is declared
in the service's OpenAPI document, none is a 5xx, and a valid request is refused only for a
reason docs/fuzzing.md gives as by design."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Callable, MutableMapping
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import run_state_machine_as_test
from schemathesis import Case, GenerationMode, Response
from schemathesis.checks import CheckFunction
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Ok
from schemathesis.openapi.checks import RejectedPositiveData
from schemathesis.schemas import APIOperation
from schemathesis.specs.openapi.schemas import OpenApiSchema

from shop.settings import Settings
from tests.conftest import OPERATOR
from tests.support import ServiceProcess, eventually

pytestmark = pytest.mark.e2e

# Requests per operation and generation mode (valid, invalid), sequences and their most steps:
# 15-35 s inside the suite on the 2-core CI machine, depending on its load (docs/fuzzing.md).
EXAMPLES = 20
SEQUENCES = 15
STEPS = 6
IDEMPOTENCY_KEY = "Idempotency-Key"
# Adjusts a generated case before it is sent.
Prepare = Callable[[Case[Any]], None]
_SETTINGS: dict[str, Any] = {
    "deadline": None,
    "database": None,  # no .hypothesis folder in the checkout; each run explores afresh
    "suppress_health_check": list(HealthCheck),
}


def _schema(service: ServiceProcess) -> OpenApiSchema:
    schema = schemathesis.openapi.from_url(f"{service.url}/openapi.json", timeout=10)
    # The operator's token on every request, as Schemathesis's own headers: it generates no
    # Authorization header of its own (a negative case "without a token" would go out with this
    # one and be answered 200). The `ignored_auth` check still sends each secured request
    # without a token and with a wrong one, and expects 401.
    schema.config.update(base_url=service.url, headers=OPERATOR)
    schema.config.generation.update(with_security_parameters=False)
    # Sequences follow the declared links only. Links Schemathesis infers (a list to its items)
    # draw ids from whatever the shared database holds, so that Hypothesis sees a different
    # sequence each time it replays one; and for orders, sequences would start at the list
    # and rarely place an order.
    schema.config.phases.stateful.inference.algorithms = []
    return schema


def _validate(case: Case[Any], response: Response, **kwargs: Any) -> None:
    """Every check of Schemathesis on the answer; a valid request's refusal passes only when
    `_by_design` explains it."""
    try:
        case.validate_response(response, headers=OPERATOR, **kwargs)
    except FailureGroup as found:
        rejected = all(isinstance(failure, RejectedPositiveData) for failure in found.exceptions)
        if not (rejected and _by_design(case, response)):
            raise


def _by_design(case: Case[Any], response: Response) -> str | None:
    """Why the service rightly refuses this valid request, or None. JSON Schema cannot say
    these reasons: what the service issued or stored before, or a class of Unicode characters
    (docs/fuzzing.md).
    Unknown ids need nothing here: their 404 is an answer `positive_data_acceptance` expects."""
    if response.status_code != 422:
        return None
    problem = response.json()
    if problem.get("type") == "/problems/idempotency-key-reused":
        return "an Idempotency-Key this caller already sent with another body"
    named = {error["field"] for error in problem.get("errors", [])}
    if named == {"cursor"} and "cursor" in (case.query or {}):
        return "a cursor the service did not issue (cursors are opaque)"
    if named == {"name"} and case.path == "/products" and "name" in (case.query or {}):
        # A JSON Schema pattern's \w is ASCII (ECMA-262); the index's words are Unicode.
        return "a name search without a word of 3 letters or digits"
    return None


def _fuzz_each_operation(schema: OpenApiSchema, prepare: Prepare = lambda case: None) -> list[str]:
    """Each operation on its own; returns where the accepted (202) answers said to look."""
    failures: list[str] = []
    accepted: list[str] = []
    answered: dict[str, Counter[int]] = {}
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"the document has an invalid operation: {result}"
        operation = result.ok()
        answered[operation.label] = Counter()
        try:
            _fuzz(operation, answered[operation.label], accepted, prepare)
        except (Exception, FailureGroup) as exc:  # FailureGroup is a BaseExceptionGroup
            failures.append(f"{operation.label}:\n{exc}")
    assert not failures, "\n\n".join(failures)
    _assert_exercised(answered)
    return accepted


def _fuzz(
    operation: APIOperation[Any, Any, Any, Any],
    statuses: Counter[int],
    accepted: list[str],
    prepare: Prepare,
) -> None:
    """Valid and invalid requests to one operation, each answer checked against the document."""
    strategy = st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    )

    @given(case=strategy)
    @settings(max_examples=2 * EXAMPLES, **_SETTINGS)
    def answers_as_declared(case: Case[Any]) -> None:
        prepare(case)
        response = case.call(timeout=15)
        statuses[response.status_code] += 1
        if response.status_code == 202:
            accepted.append(response.headers["location"][0])
        _validate(case, response, transport_kwargs={"headers": OPERATOR})

    answers_as_declared()


def _assert_exercised(answered: dict[str, Counter[int]]) -> None:
    """The run got past the token and the schema: every operation whose path names no existing
    resource succeeded at least once, and every one that reads a body refused something."""
    summary = "\n".join(f"{label}: {dict(statuses)}" for label, statuses in answered.items())
    for label, statuses in answered.items():
        if "{" not in label:
            assert any(200 <= status < 300 for status in statuses), summary
        if label.startswith(("POST", "PUT", "PATCH")):
            assert any(400 <= status < 500 for status in statuses), summary


def _follow_links(
    schema: OpenApiSchema, prepare: Prepare = lambda case: None
) -> Counter[tuple[str, int]]:
    """Sequences of calls that follow the document's links, every answer checked; returns how
    often each operation answered each status. `prepare` may adjust a case before it is sent."""
    answered: Counter[tuple[str, int]] = Counter()

    class Machine(schema.as_state_machine()):  # type: ignore[misc]
        def setup(self) -> None:
            self.keys: dict[str, str] = {}

        def before_call(self, case: Case[Any]) -> None:
            prepare(case)
            # Hypothesis replays the start of earlier sequences, Idempotency-Keys included; the
            # service then rightly replays that sequence's answer, a product a later step may
            # have deleted, which `ensure_resource_availability` takes for a created product
            # that cannot be found. A valid key is therefore made unique to its sequence
            # (the same generated key stays the same key within it).
            headers: MutableMapping[str, Any] = case.headers or {}
            key = headers.get(IDEMPOTENCY_KEY)
            if _positive(case) and isinstance(key, str):
                headers[IDEMPOTENCY_KEY] = self.keys.setdefault(key, uuid.uuid4().hex)

        def get_call_kwargs(self, case: Case[Any]) -> dict[str, Any]:
            return {"timeout": 15}

        def after_call(self, response: Response, case: Case[Any]) -> None:
            super().after_call(response, case)
            answered[case.operation.label, response.status_code] += 1

        def validate_response(
            self,
            response: Response,
            case: Case[Any],
            additional_checks: list[CheckFunction] | None = None,
            **kwargs: Any,
        ) -> None:
            _validate(case, response, transport_kwargs=kwargs or None, recorder=self.recorder)

    run_state_machine_as_test(
        Machine,
        # Generation only: a sequence replayed to shrink it meets a service whose state moved on.
        settings=settings(
            max_examples=SEQUENCES,
            stateful_step_count=STEPS,
            phases=[Phase.generate],
            **_SETTINGS,
        ),
    )
    return answered


def test_product_service_answers_every_request_as_documented(
    product_service: ServiceProcess,
) -> None:
    _fuzz_each_operation(_schema(product_service))


async def test_order_service_answers_every_request_as_documented(
    order_service: ServiceProcess, product_service: ServiceProcess
) -> None:
    product = await asyncio.to_thread(_product_in_stock, product_service)
    schema = _schema(order_service)
    accepted = await asyncio.to_thread(_fuzz_each_operation, schema, _ordering(product))
    # Every order accepted for later is stored by the consumers (and is, before later tests
    # count orders).
    async with httpx.AsyncClient(base_url=order_service.url, headers=OPERATOR) as client:

        async def all_stored() -> bool:
            answers = await asyncio.gather(*(client.get(location) for location in accepted))
            return all(answer.status_code == 200 for answer in answers)

        await eventually(all_stored, timeout=30, what="accepted orders stored")


def test_product_service_follows_its_links_as_documented(product_service: ServiceProcess) -> None:
    answered = _follow_links(_schema(product_service))
    # The links were followed: a product created in a sequence was read back by its id.
    assert answered["GET /products/{product_id}", 200] > 0, answered


def test_order_service_follows_its_links_as_documented(
    order_service: ServiceProcess, product_service: ServiceProcess
) -> None:
    schema = _schema(order_service)
    answered = _follow_links(schema, _ordering(_product_in_stock(product_service)))
    assert answered["GET /orders/{order_id}", 200] > 0, answered
    assert answered["POST /orders/{order_id}/cancel", 200] > 0, answered


def _ordering(product: int) -> Prepare:
    """Valid orders name `product`: it exists and always has stock, so that they are placed
    (and a sequence goes on to read and cancel them). Invalid orders stay as generated."""

    def for_a_product_in_stock(case: Case[Any]) -> None:
        placing = case.operation.label.startswith(("POST /orders/sync", "POST /orders/async"))
        if placing and _positive(case) and isinstance(case.body, dict):
            case.body["product_id"] = product

    return for_a_product_in_stock


def _product_in_stock(service: ServiceProcess) -> int:
    """A new product whose stock is not tracked (it never runs out), by id."""
    with httpx.Client(base_url=service.url, headers=OPERATOR, timeout=15) as client:
        made = client.post("/products", json={"name": "fuzz", "price": 1})
    assert made.status_code == 201, made.text
    product_id: int = made.json()["id"]
    return product_id


def _positive(case: Case[Any]) -> bool:
    return case.meta is not None and case.meta.generation.mode is GenerationMode.POSITIVE


async def test_order_document_declares_the_configured_quantity_limit(
    orders: httpx.AsyncClient, settings: Settings
) -> None:
    document = (await orders.get("/openapi.json")).json()
    quantity = document["components"]["schemas"]["PlaceOrder"]["properties"]["quantity"]
    assert quantity["maximum"] == settings.orders.max_quantity
    assert quantity["minimum"] == 1
