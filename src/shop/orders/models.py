"""The order service's request and response shapes."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel

OrderStatus = Literal["pending", "confirmed", "rejected", "cancelled"]
Channel = Literal["sync", "kafka", "rabbitmq"]


class Order(BaseModel):
    """An order as the API shows it."""

    id: uuid.UUID
    user_id: int
    product_id: int
    quantity: int
    status: OrderStatus
    reason: str | None
    unit_price: Decimal | None
    total_price: Decimal | None
    channel: Channel
    created_at: dt.datetime
