"""Settings: defaults < config.yaml < environment; bad values name the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from shop.settings import ConfigError, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in (
        "DB_HOST",
        "DB_PORT",
        "DB_NAME",
        "KAFKA_BROKERS",
        "PRODUCT_SERVICE_PORT",
        "ORDER_SERVICE_PORT",
        "SHOP_CONFIG",
        "RABBITMQ_PORT",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def test_defaults_without_a_config_file() -> None:
    settings = load_settings()
    assert settings.db.port == 3306
    assert settings.http.product_port == 8080
    assert settings.http.order_port == 8081
    assert settings.kafka.topic == "orders"


def test_config_yaml_overrides_defaults_and_env_overrides_yaml(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "config.yaml").write_text(
        "db:\n  host: db.internal\n  port: 3307\nproduct_service:\n  port: 9000\n"
    )
    from_file = load_settings()
    assert (from_file.db.host, from_file.db.port, from_file.http.product_port) == (
        "db.internal",
        3307,
        9000,
    )
    monkeypatch.setenv("DB_PORT", "3308")
    assert load_settings().db.port == 3308
    assert load_settings().db.host == "db.internal"


def test_invalid_environment_value_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORDER_SERVICE_PORT", "eighty")
    with pytest.raises(ConfigError, match="ORDER_SERVICE_PORT"):
        load_settings()


def test_out_of_range_port_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_PORT", "70000")
    with pytest.raises(ConfigError, match="DB_PORT"):
        load_settings()


def test_malformed_broker_list_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BROKERS", "localhost")
    with pytest.raises(ConfigError, match="KAFKA_BROKERS"):
        load_settings()


def test_unknown_key_in_config_yaml_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("db:\n  hots: x\n")
    with pytest.raises(ConfigError, match="db_hots"):
        load_settings()


def test_named_config_file_must_exist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_CONFIG", "/nonexistent.yaml")
    with pytest.raises(ConfigError, match="SHOP_CONFIG"):
        load_settings()


def test_repository_config_yaml_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    repo_config = Path(__file__).resolve().parents[2] / "config.yaml"
    monkeypatch.setenv("SHOP_CONFIG", str(repo_config))
    assert load_settings().db.name == "shop"


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::", "shop.example"])  # noqa: S104
def test_listening_beyond_loopback_with_a_default_password_is_refused(host: str) -> None:
    with pytest.raises(ConfigError, match="DB_PASSWORD and RABBITMQ_PASSWORD"):
        load_settings(bind_host=host)
    with pytest.raises(ConfigError, match="RABBITMQ_PASSWORD"):
        load_settings(bind_host=host, db_password="a-real-one")
    assert load_settings(bind_host=host, db_password="x1", rabbitmq_password="x2")
    assert load_settings(bind_host=host, allow_default_passwords=True)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.53", "::1", "localhost"])
def test_loopback_may_keep_the_development_passwords(host: str) -> None:
    assert load_settings(bind_host=host).http.bind_host == host


def test_a_leaf_may_come_from_the_file_its_name_FILE_names(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secret = tmp_path / "db_password"
    secret.write_text("from-a-file\n")
    monkeypatch.setenv("DB_PASSWORD_FILE", str(secret))
    monkeypatch.delenv("DB_PASSWORD", raising=False)
    assert load_settings().db.password == "from-a-file"
    monkeypatch.setenv("DB_PASSWORD", "from-the-environment")  # the variable itself wins
    assert load_settings().db.password == "from-the-environment"


def test_a_missing_secret_file_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("RABBITMQ_PASSWORD", raising=False)
    monkeypatch.setenv("RABBITMQ_PASSWORD_FILE", str(tmp_path / "absent"))
    with pytest.raises(ConfigError, match=r"RABBITMQ_PASSWORD_FILE=.*absent"):
        load_settings()


def test_the_limits_settings_are_checked_and_named() -> None:
    with pytest.raises(
        ConfigError, match=r"CUSTOMER_UNITS_BURST \(10\) is below MAX_ORDER_QUANTITY"
    ):
        load_settings(customer_units_burst=10)
    assert load_settings(customer_units_burst=10, max_order_quantity=10).orders.units_burst == 10
    with pytest.raises(ConfigError, match=r"RATE_LIMIT_SLOTS: .*power of two"):
        load_settings(rate_limit_slots=3000)
    with pytest.raises(ConfigError, match=r"FORWARDED_ALLOW_IPS: .*'proxy\.internal'"):
        load_settings(forwarded_allow_ips="10.0.0.0/8,proxy.internal")
    trusted = load_settings(forwarded_allow_ips=" 10.0.0.0/8, fd00::/8 ").http.forwarded_allow_ips
    assert trusted == ("10.0.0.0/8", "fd00::/8")


def test_the_retry_delays_are_a_comma_separated_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_RETRY_DELAYS_SECONDS", "0.1, 0.2,0.3")
    assert load_settings().db.retry_delays_seconds == (0.1, 0.2, 0.3)
    monkeypatch.setenv("DB_RETRY_DELAYS_SECONDS", "0.1,soon")
    with pytest.raises(ConfigError, match="DB_RETRY_DELAYS_SECONDS"):
        load_settings()
