"""The product service's load -> decide -> store path, on an in-memory store
(`tests.unit.fake_product_store`): creations, changes, deletions, stock taken by orders in
between, Idempotency-Key replays and races, and the versions the events carry."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections import defaultdict
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shop import jsonutil
from shop.errors import IdempotencyMismatch, InvalidInput, NotFound, OutOfStock
from shop.products.domain import ProductQuery, ProductView
from shop.products.models import ProductCreate, ProductPatch, ProductReplace
from shop.products.service import ProductService
from shop.settings import Products
from tests.unit.fake_product_store import FakeProductStore


class _Catalogue:
    """The service over a fake store, counting the relay's wake-ups."""

    def __init__(self, *, cache_seconds: float = 0.0) -> None:
        self.store = FakeProductStore()
        self.notified = 0
        self.service = ProductService(
            self.store, on_event=self._notify, settings=Products(cache_seconds=cache_seconds)
        )

    def _notify(self) -> None:
        self.notified += 1

    async def create(self, owner: str = "alice", key: str | None = None, **fields: Any) -> int:
        body = {"name": "chair", "price": 10, **fields}
        answer = await self.service.create_product(
            ProductCreate.model_validate(body), owner=owner, idempotency_key=key
        )
        assert answer.status == 201
        product_id: int = jsonutil.loads(answer.body)["id"]
        return product_id

    async def patch(self, product_id: int, **fields: Any) -> ProductView:
        """A PATCH of `fields`, validated as the API validates it."""
        patch = ProductPatch.model_validate(fields)
        return await self.service.update_product(product_id, patch.changes())

    def versions(self, product_id: int) -> list[tuple[str, int]]:
        key = str(product_id)
        return [(e.type, e.version) for e in self.store.events if e.key == key]


async def test_a_created_product_reads_back_as_answered_and_emits_version_1() -> None:
    catalogue = _Catalogue()
    answer = await catalogue.service.create_product(
        ProductCreate(name="lamp", price=Decimal("19.90"), stock=5), owner="alice"
    )
    product = await catalogue.service.get_product(jsonutil.loads(answer.body)["id"])
    assert answer.body == jsonutil.dumps(product)
    assert b'"price":19.90' in answer.body
    (event,) = catalogue.store.events
    assert (event.type, event.version) == ("product.created", 1)
    assert event.data == dataclasses.asdict(product)
    assert catalogue.notified == 1


async def test_a_patch_changes_only_its_fields_and_emits_the_next_version() -> None:
    catalogue = _Catalogue()
    product_id = await catalogue.create(description="old", stock=3)
    before = await catalogue.service.get_product(product_id)
    after = await catalogue.patch(product_id, price=Decimal("12.50"))
    assert after == dataclasses.replace(before, price=Decimal("12.50"), updated_at=after.updated_at)
    assert after.updated_at >= before.updated_at
    assert await catalogue.service.get_product(product_id) == after
    assert catalogue.versions(product_id) == [("product.created", 1), ("product.updated", 2)]
    assert catalogue.store.events[-1].data == dataclasses.asdict(after)


async def test_a_price_of_minus_zero_is_answered_as_the_database_keeps_it() -> None:
    catalogue = _Catalogue()
    product_id = await catalogue.create()
    after = await catalogue.service.update_product(
        product_id, ProductPatch.model_validate_json(b'{"price": -0.0}').changes()
    )
    assert jsonutil.dumps(after.price) == b"0.00"
    assert await catalogue.service.get_product(product_id) == after


async def test_an_empty_patch_changes_nothing_and_emits_nothing() -> None:
    catalogue = _Catalogue()
    product_id = await catalogue.create()
    before = await catalogue.service.get_product(product_id)
    assert await catalogue.patch(product_id) == before
    assert catalogue.versions(product_id) == [("product.created", 1)]
    assert catalogue.notified == 1


async def test_a_put_replaces_every_field_and_defaults_the_omitted() -> None:
    catalogue = _Catalogue()
    product_id = await catalogue.create(description="kept?", stock=4)
    replacement = ProductReplace.model_validate({"name": "desk", "price": 99})
    after = await catalogue.service.update_product(product_id, replacement.model_dump())
    assert (after.name, after.description, after.price, after.stock) == (
        "desk",
        "",
        Decimal("99.00"),
        None,
    )


async def test_stock_can_be_set_and_untracked() -> None:
    catalogue = _Catalogue()
    product_id = await catalogue.create()
    assert (await catalogue.service.get_product(product_id)).stock is None
    tracked = await catalogue.patch(product_id, stock=7)
    assert tracked.stock == 7
    untracked = await catalogue.patch(product_id, stock=None)
    assert untracked.stock is None
    assert [v for _, v in catalogue.versions(product_id)] == [1, 2, 3]


async def test_stock_an_order_took_between_two_changes_is_kept_and_versions_follow_it() -> None:
    catalogue = _Catalogue()
    product_id = await catalogue.create(stock=10)
    catalogue.store.take_stock(product_id, 3)  # an order, through the order service
    after = await catalogue.patch(product_id, name="sofa")
    assert after.stock == 7
    assert catalogue.versions(product_id) == [
        ("product.created", 1),
        ("product.stock_changed", 2),
        ("product.updated", 3),
    ]


async def test_a_delete_emits_the_version_after_the_last_change() -> None:
    catalogue = _Catalogue()
    product_id = await catalogue.create(stock=2)
    catalogue.store.take_stock(product_id, 1)
    await catalogue.service.delete_product(product_id)
    assert catalogue.versions(product_id)[-1] == ("product.deleted", 3)
    assert catalogue.store.events[-1].data == {"id": product_id}
    events, notified = len(catalogue.store.events), catalogue.notified
    with pytest.raises(NotFound):
        await catalogue.service.get_product(product_id)
    with pytest.raises(NotFound):
        await catalogue.patch(product_id, stock=1)
    with pytest.raises(NotFound):
        await catalogue.service.delete_product(product_id)
    assert (len(catalogue.store.events), catalogue.notified) == (events, notified)


async def test_the_same_key_and_body_replay_the_first_answer() -> None:
    catalogue = _Catalogue()
    first = await catalogue.create(key="k1")
    assert await catalogue.create(key="k1") == first
    assert list(catalogue.store.products) == [first]
    assert len(catalogue.store.events) == 1


async def test_the_same_key_with_another_body_is_refused_and_writes_nothing() -> None:
    catalogue = _Catalogue()
    await catalogue.create(key="k1")
    with pytest.raises(IdempotencyMismatch):
        await catalogue.create(key="k1", price=11)
    assert len(catalogue.store.products) == len(catalogue.store.events) == 1


async def test_keys_belong_to_their_owner() -> None:
    catalogue = _Catalogue()
    assert await catalogue.create(owner="alice", key="k1") != await catalogue.create(
        owner="bob", key="k1"
    )


async def test_a_twin_that_stored_its_answer_first_is_answered_as_it_was() -> None:
    twin = _Catalogue()
    twin_id = await twin.create(key="k1")
    catalogue = _Catalogue()
    catalogue.store.last_id = 100  # the loser's insert gets another id, then rolls back
    catalogue.store.twin_answers = dict(twin.store.answers)
    assert await catalogue.create(key="k1") == twin_id
    assert not catalogue.store.products
    assert not catalogue.store.events


async def test_pages_follow_their_cursors_and_writes_show_at_once() -> None:
    catalogue = _Catalogue(cache_seconds=60)
    ids = [await catalogue.create(name=f"p{n}", price=n) for n in range(5)]
    seen, cursor = [], None
    while True:
        page = await catalogue.service.list_products_json(ProductQuery(limit=2, cursor=cursor))
        seen += [row["id"] for row in jsonutil.loads(page.body)]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == ids
    everything = ProductQuery(limit=10)
    await catalogue.service.list_products_json(everything)
    await catalogue.patch(ids[0], name="renamed")
    page = await catalogue.service.list_products_json(everything)
    assert b'"renamed"' in page.body


async def test_a_price_range_upside_down_matches_nothing() -> None:
    """A valid filter no product passes (JSON Schema cannot relate two parameters, so it is no
    refusal the document would hide); a foreign cursor is still refused."""
    catalogue = _Catalogue()
    await catalogue.create(price=1.5)
    upside_down = ProductQuery(min_price=Decimal(2), max_price=Decimal(1))
    page = await catalogue.service.list_products_json(upside_down)
    assert (page.body, page.next_cursor) == (b"[]", None)
    with pytest.raises(InvalidInput):
        await catalogue.service.list_products_json(upside_down._replace(cursor="x"))


@dataclasses.dataclass(frozen=True)
class _Step:
    action: str
    product: int  # an index into the products created so far
    amount: int


steps = st.lists(
    st.builds(
        _Step,
        st.sampled_from(["create", "patch_stock", "patch_price", "put", "order", "delete"]),
        st.integers(0, 3),
        st.integers(0, 6),
    ),
    max_size=30,
)


@settings(max_examples=150, deadline=None)
@given(steps=steps)
def test_versions_are_consecutive_per_product_and_stock_never_negative(
    steps: list[_Step],
) -> None:
    async def run() -> FakeProductStore:
        catalogue = _Catalogue()
        ids: list[int] = []
        for step in steps:
            if step.action == "create" or not ids:
                ids.append(await catalogue.create(stock=step.amount))
                continue
            product_id = ids[step.product % len(ids)]
            with contextlib.suppress(NotFound, OutOfStock):
                await _apply(catalogue, step, product_id)
        return catalogue.store

    store = asyncio.run(run())
    by_product: defaultdict[str, list[int]] = defaultdict(list)
    for event in store.events:
        by_product[event.key].append(event.version)
    for versions in by_product.values():
        assert versions == list(range(1, len(versions) + 1))
    for product_id, stored in store.products.items():
        assert stored.version == by_product[str(product_id)][-1]
        assert stored.product.stock is None or stored.product.stock >= 0


async def _apply(catalogue: _Catalogue, step: _Step, product_id: int) -> None:
    service = catalogue.service
    if step.action == "patch_stock":
        await catalogue.patch(product_id, stock=step.amount)
    elif step.action == "patch_price":
        await catalogue.patch(product_id, price=Decimal(step.amount))
    elif step.action == "put":
        await service.update_product(
            product_id, ProductReplace(name="p", price=Decimal(1), stock=step.amount).model_dump()
        )
    elif step.action == "order":
        if product_id not in catalogue.store.products:
            raise NotFound("gone")
        catalogue.store.take_stock(product_id, step.amount)
    else:
        await service.delete_product(product_id)


async def test_a_product_is_written_alike_as_a_view_and_as_a_page_row() -> None:
    catalogue = _Catalogue()
    product_id = await catalogue.create(stock=1)
    product = await catalogue.service.get_product(product_id)
    page = await catalogue.service.list_products_json(ProductQuery())
    assert isinstance(product, ProductView)
    assert page.body == b"[" + jsonutil.dumps(product) + b"]"
