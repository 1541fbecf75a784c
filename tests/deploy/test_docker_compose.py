"""The `docker compose up -d` path: the compose file is valid and wires the system as documented.

These check the files without an engine; tests/compose/ runs the containers (`make test-compose`).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
IDENTITIES = REPO / "deploy/compose/identities.py"
APP_SERVICES = (
    "secrets",
    "auth-key",
    "token",
    "rabbitmq-user",
    "kafka-access",
    "migrate",
    "product-service",
    "order-service",
)
API_SERVICES = ("product-service", "order-service")
# `${NAME:-default}` as compose reads it when NAME is unset.
_DEFAULTED = re.compile(r"\$\{[A-Za-z0-9_]+:-([^}]*)\}")
REQUIRED_SERVICES = {"mysql", "kafka", "rabbitmq", *APP_SERVICES}


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    """The compose file's services, with YAML anchors and merge keys resolved."""
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(document, dict), "docker-compose.yml is not a mapping"
    found = document.get("services")
    assert isinstance(found, dict), "docker-compose.yml has no services"
    return found


def _published_host_ports(service: dict[str, Any]) -> set[int]:
    """Host ports of a service, from short ("[ip:]host:container") or long syntax."""
    ports: set[int] = set()
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            ports.add(int(_DEFAULTED.sub(r"\1", str(entry["published"]))))
            continue
        parts = _DEFAULTED.sub(r"\1", str(entry)).split("/")[0].split(":")
        if len(parts) >= 2:
            ports.add(int(parts[-2]))
    return ports


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(str(item).partition("=")[::2] for item in env)
    return {str(key): str(value) for key, value in env.items()}


def _built_from(service: dict[str, Any]) -> Path | None:
    """The Dockerfile a service's `build:` (short or long form) points at, if any."""
    build = service.get("build")
    if build is None:
        return None
    if isinstance(build, dict):
        context, dockerfile = build.get("context", "."), build.get("dockerfile", "Dockerfile")
    else:
        context, dockerfile = build, "Dockerfile"
    return (COMPOSE_FILE.parent / str(context) / str(dockerfile)).resolve()


def test_compose_file_is_valid_for_docker_compose() -> None:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.fail(
            "docker-compose not found: install Debian's docker-compose "
            "(`apt-get install docker-compose`) to validate docker-compose.yml"
        )
    result = subprocess.run(
        [binary, "-f", str(COMPOSE_FILE), "config", "-q"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"


def _resolved_services(**shell: str) -> dict[str, dict[str, Any]]:
    """The services as `docker-compose config` resolves them, with `shell` as the only OTEL_
    variables of the environment it runs in."""
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.fail("docker-compose not found: install Debian's docker-compose")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")} | shell
    result = subprocess.run(
        [binary, "-f", str(COMPOSE_FILE), "config"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"
    found: dict[str, dict[str, Any]] = yaml.safe_load(result.stdout)["services"]
    return found


def test_the_api_services_send_traces_where_the_shell_says_and_by_default_nowhere(
    services: dict[str, dict[str, Any]],
) -> None:
    """OTEL_EXPORTER_OTLP_ENDPOINT and OTEL_TRACES_SAMPLER_ARG come from the shell, default
    empty (no tracing) and 0.1; the order service's consumer process inherits its environment.
    The one-shot containers trace nothing."""
    for name, service in services.items():
        traced = {k: v for k, v in _environment(service).items() if k.startswith("OTEL_")}
        expected = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "${OTEL_EXPORTER_OTLP_ENDPOINT:-}",
            "OTEL_TRACES_SAMPLER_ARG": "${OTEL_TRACES_SAMPLER_ARG:-0.1}",
        }
        assert traced == (expected if name in API_SERVICES else {}), name
    by_default = _resolved_services()
    to_jaeger = _resolved_services(
        OTEL_EXPORTER_OTLP_ENDPOINT="http://jaeger:4318", OTEL_TRACES_SAMPLER_ARG="1.0"
    )
    for name in API_SERVICES:
        default_env = by_default[name]["environment"]
        assert default_env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "", name
        assert str(default_env["OTEL_TRACES_SAMPLER_ARG"]) == "0.1", name
        env = to_jaeger[name]["environment"]
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318", name
        assert str(env["OTEL_TRACES_SAMPLER_ARG"]) == "1.0", name


def test_compose_defines_the_whole_system(services: dict[str, dict[str, Any]]) -> None:
    missing = REQUIRED_SERVICES - services.keys()
    assert not missing, f"docker-compose.yml lacks {sorted(missing)}"


def test_services_publish_their_documented_ports(services: dict[str, dict[str, Any]]) -> None:
    assert 8080 in _published_host_ports(services["product-service"])
    assert 8081 in _published_host_ports(services["order-service"])


def test_every_published_port_listens_on_loopback_only(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        for entry in service.get("ports", []):
            address = entry.get("host_ip") if isinstance(entry, dict) else str(entry).split(":")[0]
            assert address == "127.0.0.1", f"{name} publishes {entry} beyond loopback"


def test_no_password_is_written_into_the_compose_file(services: dict[str, dict[str, Any]]) -> None:
    """Passwords come from files in the `secrets` volume (random unless the shell gives one)."""
    for name, service in services.items():
        for key, value in _environment(service).items():
            if key.endswith(("PASSWORD", "PASS")) and key != "MYSQL_RANDOM_ROOT_PASSWORD":
                assert _DEFAULTED.sub(r"\1", value) == "", f"{name}: {key}={value}"


def test_the_api_containers_get_only_the_issuers_public_key(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in API_SERVICES:
        volumes = [str(volume).split(":")[0] for volume in services[name]["volumes"]]
        assert "auth-public" in volumes
        assert "auth-signing" not in volumes, f"{name} mounts the private signing key"


def test_app_containers_are_locked_down(services: dict[str, dict[str, Any]]) -> None:
    for name in APP_SERVICES:
        service = services[name]
        assert service.get("read_only") is True, f"{name} has a writable root filesystem"
        assert service.get("cap_drop") == ["ALL"], f"{name} keeps capabilities"
        assert "user" not in service, f"{name} overrides the image's non-root user"


def test_kafka_runs_in_kraft_mode_without_zookeeper(services: dict[str, dict[str, Any]]) -> None:
    assert not [name for name in services if "zookeeper" in name.lower()]
    env = _environment(services["kafka"])
    assert not [key for key in env if "ZOOKEEPER" in key.upper()]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}


def test_app_services_run_the_image_built_from_the_dockerfile(
    services: dict[str, dict[str, Any]],
) -> None:
    images: set[object] = set()
    for name in APP_SERVICES:
        assert _built_from(services[name]) == DOCKERFILE, f"{name} is not built from the Dockerfile"
        images.add(services[name].get("image"))
    assert len(images) == 1, f"app services should share one image, got {images}"


def test_dockerfile_runs_as_a_non_root_user() -> None:
    users = [
        line.split(maxsplit=1)[1].strip()
        for line in DOCKERFILE.read_text().splitlines()
        if line.strip().upper().startswith("USER ") and len(line.split()) > 1
    ]
    assert users, "Dockerfile has no USER instruction"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}, f"the final USER is {users[-1]}"


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return command.split() if isinstance(command, str) else [str(arg) for arg in command]


def test_mysql_syncs_the_redo_log_at_every_commit(services: dict[str, dict[str, Any]]) -> None:
    """Orders acknowledged after a commit (201, Kafka offsets, RabbitMQ acks) survive a crash."""
    flags = [
        arg.replace("_", "-")
        for arg in _command(services["mysql"])
        if arg.replace("_", "-").startswith("--innodb-flush-log-at-trx-commit")
    ]
    assert flags == ["--innodb-flush-log-at-trx-commit=1"]


def test_the_services_use_accounts_of_their_own(services: dict[str, dict[str, Any]]) -> None:
    """Each service logs in as itself on every server, and as nothing else: the product service
    as shop_products and Kafka's `products`, with no RabbitMQ account; the order service as
    shop_orders, `orders`, shop-intake and shop-consumer. Neither gets the migration account
    or an administrator's; the migration gets only the migration account."""
    products = _environment(services["product-service"])
    orders = _environment(services["order-service"])
    assert (products["DB_USER"], products["KAFKA_USER"]) == ("shop_products", "products")
    assert products["RABBITMQ_USER"] == products["RABBITMQ_PASSWORD"] == ""
    assert not {"RABBITMQ_PASSWORD_FILE", "RABBITMQ_CONSUMER_USER"} & products.keys()
    assert (orders["DB_USER"], orders["KAFKA_USER"]) == ("shop_orders", "orders")
    assert (orders["RABBITMQ_USER"], orders["RABBITMQ_CONSUMER_USER"]) == (
        "shop-intake",
        "shop-consumer",
    )
    for app in (products, orders):
        assert not [key for key in app if key.startswith(("DB_MIGRATE", "RABBITMQ_ADMIN"))]
        assert app["KAFKA_USER"] != "admin"
    migrate = _environment(services["migrate"])
    assert migrate["DB_MIGRATE_USER"] == "shop_migrate"
    assert not [key for key in migrate if key.startswith(("DB_USER", "DB_PASSWORD"))]
    for name in API_SERVICES:
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["kafka-access"]["condition"] == "service_completed_successfully"
    assert services["order-service"]["depends_on"]["rabbitmq-user"]["condition"] == (
        "service_completed_successfully"
    )
    user = _environment(services["rabbitmq-user"])
    assert (
        user["RABBITMQ_ADMIN_USER"] == _environment(services["rabbitmq"])["RABBITMQ_DEFAULT_USER"]
    )
    assert (user["RABBITMQ_USER"], user["RABBITMQ_CONSUMER_USER"]) == (
        orders["RABBITMQ_USER"],
        orders["RABBITMQ_CONSUMER_USER"],
    )


def test_mysql_makes_the_accounts_from_the_charts_sql(services: dict[str, dict[str, Any]]) -> None:
    """deploy/mysql/initdb runs deploy/helm/shop/sql (the one definition of the roles and
    accounts): every account REQUIRE SSL, each service's holding its role only."""
    volumes = [str(v) for v in services["mysql"]["volumes"]]
    assert "./deploy/mysql/initdb:/docker-entrypoint-initdb.d:ro" in volumes
    assert "./deploy/helm/shop/sql:/shop-sql:ro" in volumes
    script = REPO / "deploy/mysql/initdb/10-accounts.sh"
    assert os.access(script, os.X_OK), f"{script} is not executable (the image would source it)"
    for sql in ("mariadb-10.11.sql", "mysql-8.4.sql"):
        assert f"/shop-sql/{sql}" in script.read_text()
        text = (REPO / "deploy/helm/shop/sql" / sql).read_text()
        for account in ("shop_migrate", "shop_products", "shop_orders"):
            assert f"CREATE USER IF NOT EXISTS '{account}'@'%'" in text
            assert re.search(rf"ALTER USER '{account}'@'%' IDENTIFIED BY .* REQUIRE SSL;", text)


def _volume_names(service: dict[str, Any]) -> list[str]:
    return [str(volume).split(":")[0] for volume in service.get("volumes", [])]


def _holders() -> dict[str, dict[str, str]]:
    spec = importlib.util.spec_from_file_location("identities", IDENTITIES)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    holders: dict[str, dict[str, str]] = module.HOLDERS
    return holders


# Which holder's secrets each container mounts (deploy/compose/identities.py, HOLDERS).
HOLDER_OF = {
    "mysql": "mysql",
    "kafka": "kafka",
    "rabbitmq": "rabbitmq",
    "kafka-access": "kafka-access",
    "rabbitmq-user": "rabbitmq-user",
    "migrate": "migrate",
    "product-service": "products",
    "order-service": "orders",
}


def test_each_container_mounts_only_its_own_secrets(services: dict[str, dict[str, Any]]) -> None:
    """The `secrets` volume (every password and the CA's key) is the `secrets` service's alone;
    it writes each holder's volume, and every other container mounts its own holder's only."""
    holders = _holders()
    assert set(HOLDER_OF.values()) == holders.keys()
    writer = services["secrets"]
    assert [str(v) for v in writer["volumes"] if str(v).startswith("secrets:")] == [
        "secrets:/run/shop-secrets"
    ]
    dockerfile = DOCKERFILE.read_text()
    for holder in holders:
        assert f"{holder}-secrets:/run/shop-identities/{holder}" in writer["volumes"]
        assert f"/run/shop-identities/{holder} " in dockerfile, f"the image lacks {holder}'s mount"
    for name, service in services.items():
        if name == "secrets":
            continue
        mounted = [v for v in _volume_names(service) if v.endswith("secrets")]
        expected = [f"{HOLDER_OF[name]}-secrets"] if name in HOLDER_OF else []
        assert mounted == expected, f"{name} mounts {mounted}"


def test_every_connection_to_a_server_is_tls_with_an_account(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        env = _environment(service)
        if "DB_HOST" in env:
            assert env["DB_CA_FILE"] == "/run/shop-secrets/ca.pem", name
        if "KAFKA_BROKERS" in env:
            assert env["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL", name
            assert env["KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512", name
            assert env["KAFKA_CA_FILE"] == "/run/shop-secrets/ca.pem", name
        if "RABBITMQ_HOST" in env:
            assert env["RABBITMQ_CA_FILE"] == "/run/shop-secrets/ca.pem", name
    mysql = _command(services["mysql"])
    assert "--require-secure-transport=ON" in mysql
    assert "--ssl-cert=/run/shop-secrets/server.pem" in mysql
    kafka = _environment(services["kafka"])
    protocols = dict(p.split(":") for p in kafka["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(protocols.values()) == {"SASL_SSL"}
    assert kafka["KAFKA_SASL_ENABLED_MECHANISMS"] == "SCRAM-SHA-512"
    assert kafka["KAFKA_AUTHORIZER_CLASS_NAME"].endswith("StandardAuthorizer")
    assert kafka["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
    assert "ANONYMOUS" not in kafka["KAFKA_SUPER_USERS"]
    rabbitmq_conf = (REPO / "deploy/rabbitmq/rabbitmq.conf").read_text().splitlines()
    assert "listeners.tcp = none" in rabbitmq_conf
    assert "listeners.ssl.default = 5672" in rabbitmq_conf
    assert (
        "./deploy/rabbitmq/rabbitmq.conf:/etc/rabbitmq/rabbitmq.conf:ro"
        in (services["rabbitmq"]["volumes"])
    )
