"""The local stack's settings: the services' tree, and the stack's own administrator accounts
(the RabbitMQ management API's), which the services never get."""

from __future__ import annotations

import os
from typing import Any

from pydantic import Field

from shop.settings import Group, Settings, load

from . import identities


class StackAdmin(Group):
    prefix = "rabbitmq_"
    # An administrator of the management API, for the local stack, the tests and the bench
    # (queue depths, clean-up). RABBITMQ_USER is not an administrator.
    admin_user: str = "shop-admin"
    admin_password: str = "shop-admin"  # noqa: S105 (the local stack's, like config.yaml's)
    management_port: int = Field(15672, ge=1, le=65535)


class StackKafkaAdmin(Group):
    prefix = "kafka_"
    # Kafka's super user (the broker's own identity), for the local stack, the tests and the
    # bench: they read every topic, create and delete their own, and set the services' ACLs.
    admin_user: str = "admin"
    admin_password: str = Field("", repr=False)


class StackPrometheus(Group):
    prefix = "prometheus_"
    # `make up PROMETHEUS=1`: Debian's Prometheus on this port, scraping both services.
    port: int = Field(9090, ge=1, le=65535)


class StackJaeger(Group):
    prefix = "jaeger_"
    # `make up TRACING=1`: Jaeger's query API and UI on ui_port, OTLP/HTTP taken on otlp_port.
    ui_port: int = Field(16686, ge=1, le=65535)
    otlp_port: int = Field(4318, ge=1, le=65535)


class StackSettings(Settings):
    """The services' settings and the stack's administrators (RABBITMQ_ADMIN_USER, ...)."""

    stack: StackAdmin = StackAdmin()
    kafka_admin: StackKafkaAdmin = StackKafkaAdmin()
    prometheus: StackPrometheus = StackPrometheus()
    jaeger: StackJaeger = StackJaeger()


def load_stack_settings(**overrides: Any) -> StackSettings:
    """`shop.settings.load_settings` with the stack's administrators, and the accounts and CA
    the stack generated (`identities.settings`: the order service's and the tools') where
    neither the environment nor `overrides` name others."""
    environ = {name.lower() for name in os.environ}
    generated = {k: v for k, v in identities.settings().items() if k not in environ}
    return load(StackSettings, **{**generated, **overrides})
