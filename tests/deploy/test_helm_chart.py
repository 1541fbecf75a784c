"""The Helm chart (deploy/helm/shop): it lints, renders with the default and the production
values, every object it renders is valid for Kubernetes, and the objects say what the chart
promises (probes, resources, hardened pods, each process kind with its own accounts and only
its own passwords, a migration hook that alone holds its password, the CA mounted for TLS to
every server, disruption budgets and autoscalers on the right pods, no password in the
ConfigMap).

helm is built from the Go module proxy by tools/install-helm (`make helm-tools`)."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from shop.runtime.cli import _parser
from shop.settings import Settings, flat_names, load_settings
from shop.storage.migrations import RIGHTS
from shop.web.health import health_router

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy/helm/shop"
ACCOUNTS_SQL = {"mariadb": CHART / "sql/mariadb-10.11.sql", "mysql": CHART / "sql/mysql-8.4.sql"}
HELM_VERSION = "v3.22.0"  # the version tools/install-helm builds
KUBERNETES_VERSION = "1.37.0"  # the release the objects must be valid for
HELM = (
    Path(os.environ.get("SHOP_TOOLS_DIR", Path.home() / ".cache/shop/bin"))
    / f"helm-{HELM_VERSION}"
    / "helm"
)
MIGRATION_SECRET_KEY = "DB_MIGRATE_PASSWORD"
KINDS = ("products", "orders", "consumers")
# Each account's password in the chart-made render, all different, so that a value found in the
# wrong Secret shows. The consumers' DB and Kafka passwords are the order service's (the same
# accounts): the chart takes them from identities.orders when identities.consumers leaves them out.
PASSWORDS = {
    "products": {"DB_PASSWORD": "db-products-8d1f", "KAFKA_PASSWORD": "kafka-products-2a9c"},
    "orders": {
        "DB_PASSWORD": "db-orders-51c2",
        "KAFKA_PASSWORD": "kafka-orders-77e0",
        "RABBITMQ_PASSWORD": "mq-intake-3b4d",
    },
    "consumers": {
        "DB_PASSWORD": "db-orders-51c2",
        "KAFKA_PASSWORD": "kafka-orders-77e0",
        "RABBITMQ_CONSUMER_PASSWORD": "mq-consumer-9f12",
    },
}
MIGRATION_PASSWORD = "migrate-pass-0b7e"
ALL_PASSWORDS = {v for kind in PASSWORDS.values() for v in kind.values()} | {MIGRATION_PASSWORD}
# Who each process kind is, on every server (values.yaml's identities).
DB_USERS = {"products": "shop_products", "orders": "shop_orders", "consumers": "shop_orders"}
KAFKA_USERS = {"products": "products", "orders": "orders", "consumers": "orders"}
CA_BUNDLE = "-----BEGIN CERTIFICATE-----\nMIIBtestCA\n-----END CERTIFICATE-----\n"
CA_FILE_SETTINGS = ("DB_CA_FILE", "KAFKA_CA_FILE", "RABBITMQ_CA_FILE")
OTLP_ENDPOINT = "http://jaeger-collector.observability:4318"  # the "traced" render's
TRACING_SETTINGS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_TRACES_SAMPLER_ARG")

Manifest = dict[str, Any]


def _helm(*args: str) -> subprocess.CompletedProcess[str]:
    if not HELM.is_file():
        pytest.fail(f"helm not found at {HELM}: run `make helm-tools` (tools/install-helm)")
    return subprocess.run(
        [str(HELM), *args], capture_output=True, text=True, timeout=120, check=False
    )


def _render(*values: str) -> list[Manifest]:
    result = _helm("template", "shop", str(CHART), "--kube-version", KUBERNETES_VERSION, *values)
    assert result.returncode == 0, f"helm template failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def chart_made_secrets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Values that make the chart create its Secrets and its CA ConfigMap, log in to Kafka with
    SASL over TLS, and mount a PEM key instead of a JWKS."""
    values = tmp_path_factory.mktemp("helm") / "values-secrets.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "config": {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"},
                "identities": {
                    "products": {
                        "existingSecret": "",
                        "dbPassword": PASSWORDS["products"]["DB_PASSWORD"],
                        "kafkaPassword": PASSWORDS["products"]["KAFKA_PASSWORD"],
                    },
                    "orders": {
                        "existingSecret": "",
                        "dbPassword": PASSWORDS["orders"]["DB_PASSWORD"],
                        "kafkaPassword": PASSWORDS["orders"]["KAFKA_PASSWORD"],
                        "rabbitmqPassword": PASSWORDS["orders"]["RABBITMQ_PASSWORD"],
                    },
                    "consumers": {
                        "existingSecret": "",
                        "rabbitmqPassword": PASSWORDS["consumers"]["RABBITMQ_CONSUMER_PASSWORD"],
                    },
                },
                "tls": {"caBundle": CA_BUNDLE},
                "migration": {"existingSecret": "", "password": MIGRATION_PASSWORD},
                "auth": {
                    "jwksUrl": "",
                    "publicKey": "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n"
                    "-----END PUBLIC KEY-----\n",
                },
            }
        )
    )
    return values


@pytest.fixture(scope="module")
def renders(chart_made_secrets: Path) -> dict[str, list[Manifest]]:
    return {
        "default": _render(),
        "production": _render("-f", str(CHART / "values-production.yaml")),
        "chart-made secrets": _render("-f", str(chart_made_secrets)),
        "traced": _render(
            "--set", f"tracing.otlpEndpoint={OTLP_ENDPOINT}", "--set", "tracing.samplingRatio=0.25"
        ),
    }


def _all(renders: dict[str, list[Manifest]]) -> Iterator[tuple[str, Manifest]]:
    for name, objects in renders.items():
        for obj in objects:
            yield name, obj


def _of_kind(objects: list[Manifest], kind: str) -> dict[str, Manifest]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def _pod_specs(objects: list[Manifest]) -> dict[str, dict[str, Any]]:
    return {
        f"{o['kind']}/{o['metadata']['name']}": o["spec"]["template"]["spec"]
        for o in objects
        if o["kind"] in ("Deployment", "Job")
    }


def _env_names(container: dict[str, Any]) -> set[str]:
    return {item["name"] for item in container.get("env", [])}


def _secret_refs(pod: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (item["valueFrom"]["secretKeyRef"]["name"], item["valueFrom"]["secretKeyRef"]["key"])
        for container in pod["containers"]
        for item in container.get("env", [])
        if "secretKeyRef" in item.get("valueFrom", {})
    }


def _literal_env(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container.get("env", []) if "value" in item}


def _settings(objects: list[Manifest], container: dict[str, Any]) -> dict[str, str]:
    """What a container reads as literal settings: its ConfigMaps, then its own env."""
    maps = _of_kind(objects, "ConfigMap")
    settings: dict[str, str] = {}
    for source in container.get("envFrom", []):
        settings.update(maps[source["configMapRef"]["name"]]["data"])
    return settings | _literal_env(container)


def _mounts(pod: dict[str, Any]) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Mount path -> (the mount, its volume)."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    return {
        m["mountPath"]: (m, volumes[m["name"]])
        for c in pod["containers"]
        for m in c.get("volumeMounts", [])
    }


def _kafka_sasl(objects: list[Manifest]) -> bool:
    config = _of_kind(objects, "ConfigMap")["shop-config"]["data"]
    return str(config["KAFKA_SECURITY_PROTOCOL"]).startswith("SASL_")


def _expected_keys(kind: str, sasl: bool) -> set[str]:
    """The passwords a process kind needs: its database account's, its Kafka principal's (with
    SASL) and its RabbitMQ user's (none for the product service)."""
    rabbitmq = {"products": set(), "orders": {"RABBITMQ_PASSWORD"}}
    return (
        {"DB_PASSWORD"}
        | ({"KAFKA_PASSWORD"} if sasl else set())
        | rabbitmq.get(kind, {"RABBITMQ_CONSUMER_PASSWORD"})
    )


@pytest.mark.parametrize("values", [[], ["-f", str(CHART / "values-production.yaml")]])
def test_the_chart_lints_strictly(values: list[str]) -> None:
    result = _helm("lint", "--strict", "--kube-version", KUBERNETES_VERSION, str(CHART), *values)
    assert result.returncode == 0, f"helm lint failed:\n{result.stdout}\n{result.stderr}"


def test_every_rendered_object_is_valid_for_kubernetes(
    renders: dict[str, list[Manifest]],
) -> None:
    problems = []
    for name, obj in _all(renders):
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{name}: {obj['kind']}/{obj['metadata']['name']}: {exc}")
    assert not problems, "\n".join(problems)


def test_the_chart_renders_every_process_and_its_objects(
    renders: dict[str, list[Manifest]],
) -> None:
    for name, objects in renders.items():
        kinds = {obj["kind"] for obj in objects}
        assert {"Deployment", "Job", "Service", "ConfigMap", "PodDisruptionBudget"} <= kinds, name
        assert set(_of_kind(objects, "Deployment")) == {
            "shop-products",
            "shop-orders",
            "shop-consumers",
        }, name
    assert "Ingress" not in {obj["kind"] for obj in renders["default"]}
    assert {"Secret"} <= {obj["kind"] for obj in renders["chart-made secrets"]}


def test_every_deployment_has_probes_on_the_paths_the_services_serve_and_resource_requests(
    renders: dict[str, list[Manifest]],
) -> None:
    served = {route.path for route in health_router(dict, timeout=1.0).routes}  # type: ignore[attr-defined]
    for name, objects in renders.items():
        for deployment, obj in _of_kind(objects, "Deployment").items():
            (container,) = obj["spec"]["template"]["spec"]["containers"]
            ports = {port["name"] for port in container["ports"]}
            for probe in ("livenessProbe", "readinessProbe"):
                check = container[probe]["httpGet"]
                assert check["path"] in served, f"{name}: {deployment} {probe} {check}"
                assert check["port"] in ports, f"{name}: {deployment} {probe} {check}"
            assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
            requests = container["resources"]["requests"]
            assert {"cpu", "memory"} <= requests.keys(), f"{name}: {deployment}"
            assert "memory" in container["resources"]["limits"], f"{name}: {deployment}"


def test_every_pod_runs_a_shop_command_that_parses(renders: dict[str, list[Manifest]]) -> None:
    for name, objects in renders.items():
        for pod_name, pod in _pod_specs(objects).items():
            (container,) = pod["containers"]
            command = [str(arg) for arg in container["command"]]
            assert command[0] == "shop", f"{name}: {pod_name}"
            _parser().parse_args(command[1:])
    consumers = _of_kind(renders["default"], "Deployment")["shop-consumers"]
    (container,) = consumers["spec"]["template"]["spec"]["containers"]
    args = _parser().parse_args(container["command"][1:])
    assert (args.command, args.health_port) == ("consume", container["ports"][0]["containerPort"])


def test_every_pod_runs_as_non_root_with_a_read_only_root_and_no_capabilities(
    renders: dict[str, list[Manifest]],
) -> None:
    for name, objects in renders.items():
        for pod_name, pod in _pod_specs(objects).items():
            assert pod["securityContext"]["runAsNonRoot"] is True, f"{name}: {pod_name}"
            assert pod["automountServiceAccountToken"] is False, f"{name}: {pod_name}"
            for container in pod["containers"]:
                context = container["securityContext"]
                assert context["readOnlyRootFilesystem"] is True, f"{name}: {pod_name}"
                assert context["allowPrivilegeEscalation"] is False, f"{name}: {pod_name}"
                assert context["capabilities"]["drop"] == ["ALL"], f"{name}: {pod_name}"


def test_the_migration_job_is_a_hook_and_alone_gets_the_migration_password(
    renders: dict[str, list[Manifest]],
) -> None:
    for name, objects in renders.items():
        (job,) = _of_kind(objects, "Job").values()
        hooks = job["metadata"]["annotations"]["helm.sh/hook"].split(",")
        assert set(hooks) == {"pre-install", "pre-upgrade"}, name
        job_pod = job["spec"]["template"]["spec"]
        (container,) = job_pod["containers"]
        assert container["command"] == ["shop", "migrate"]
        assert {"DB_MIGRATE_USER", MIGRATION_SECRET_KEY} <= _env_names(container), name
        (migration_secret,) = {
            secret for secret, key in _secret_refs(job_pod) if key == MIGRATION_SECRET_KEY
        }
        assert {secret for secret, _ in _secret_refs(job_pod)} == {migration_secret}, name
        for deployment, obj in _of_kind(objects, "Deployment").items():
            pod = obj["spec"]["template"]["spec"]
            refs = _secret_refs(pod)
            assert MIGRATION_SECRET_KEY not in {key for _, key in refs}, f"{name}: {deployment}"
            assert migration_secret not in {secret for secret, _ in refs}, f"{name}: {deployment}"
            for container in pod["containers"]:
                assert not {"DB_MIGRATE_USER", MIGRATION_SECRET_KEY} & _env_names(container)
                assert not container.get("envFrom", []) or all(
                    "secretRef" not in source for source in container["envFrom"]
                )
        made = _of_kind(objects, "Secret")
        if migration_secret in made:  # made by the chart: before the Job, as a hook itself
            annotations = made[migration_secret]["metadata"]["annotations"]
            assert int(annotations["helm.sh/hook-weight"]) < int(
                job["metadata"]["annotations"].get("helm.sh/hook-weight", "0")
            )


def test_the_configmap_holds_settings_by_their_names_and_no_secret(
    renders: dict[str, list[Manifest]],
) -> None:
    known = {name.upper() for name in flat_names(Settings)}  # the OTEL_* ones too
    assert set(TRACING_SETTINGS) <= known
    for name, objects in renders.items():
        config = _of_kind(objects, "ConfigMap")["shop-config"]["data"]
        assert not [key for key in config if "PASSWORD" in key or "SECRET" in key], name
        assert not set(config.values()) & ALL_PASSWORDS, name
        # accounts are per process, never shared through the ConfigMap
        assert not {"DB_USER", "KAFKA_USER", "RABBITMQ_USER", "RABBITMQ_CONSUMER_USER"} & set(
            config
        ), name
        assert not set(config) - known, f"{name}: unknown settings {set(config) - known}"
        for pod_name, pod in _pod_specs(objects).items():
            for container in pod["containers"]:
                assert not _env_names(container) - known, f"{name}: {pod_name}"
        assert {"DB_HOST", "DB_NAME", "KAFKA_BROKERS", "RABBITMQ_HOST", "AUTH_ISSUER"} <= set(
            config
        )


def test_disruption_budgets_and_autoscalers_select_their_deployments_pods(
    renders: dict[str, list[Manifest]],
) -> None:
    for name, objects in renders.items():
        deployments = _of_kind(objects, "Deployment")
        budgets = _of_kind(objects, "PodDisruptionBudget")
        assert set(budgets) == set(deployments), name
        for budget_name, budget in budgets.items():
            pods = deployments[budget_name]["spec"]["template"]["metadata"]["labels"]
            selector = budget["spec"]["selector"]["matchLabels"]
            assert selector.items() <= pods.items(), f"{name}: {budget_name}"
            others = [d for d in deployments if d != budget_name]
            for other in others:  # and no other Deployment's pods
                labels = deployments[other]["spec"]["template"]["metadata"]["labels"]
                assert not selector.items() <= labels.items(), f"{name}: {budget_name}"
        for scaler_name, scaler in _of_kind(objects, "HorizontalPodAutoscaler").items():
            target = scaler["spec"]["scaleTargetRef"]
            assert (target["kind"], target["name"]) == ("Deployment", scaler_name), name
            assert "replicas" not in deployments[scaler_name]["spec"], f"{name}: {scaler_name}"


def test_production_values_autoscale_the_services_from_at_least_two_replicas(
    renders: dict[str, list[Manifest]],
) -> None:
    objects = renders["production"]
    scalers = _of_kind(objects, "HorizontalPodAutoscaler")
    assert {"shop-products", "shop-orders"} <= set(scalers)
    for scaler in scalers.values():
        assert scaler["apiVersion"] == "autoscaling/v2"
        assert scaler["spec"]["minReplicas"] >= 2
        assert scaler["spec"]["maxReplicas"] > scaler["spec"]["minReplicas"]
    consumers = _of_kind(objects, "Deployment")["shop-consumers"]
    assert "shop-consumers" in scalers or consumers["spec"]["replicas"] >= 2
    for budget in _of_kind(objects, "PodDisruptionBudget").values():
        assert budget["spec"].get("minAvailable", 0) >= 1 or "maxUnavailable" in budget["spec"]
    config = _of_kind(objects, "ConfigMap")["shop-config"]["data"]
    assert config["KAFKA_REPLICATION_FACTOR"] == "3"
    assert config["RABBITMQ_QUEUE_TYPE"] == "quorum"
    assert config["AUTH_JWKS_URL"].startswith("https://")


def test_the_chart_refuses_to_render_without_a_way_to_verify_tokens() -> None:
    result = _helm("template", "shop", str(CHART), "--set", "auth.jwksUrl=")
    assert result.returncode != 0
    assert "auth.jwksUrl" in result.stderr


def test_the_chart_refuses_a_password_in_the_configmap() -> None:
    result = _helm("template", "shop", str(CHART), "--set", "config.DB_PASSWORD=oops")
    assert result.returncode != 0
    assert "looks like a secret" in result.stderr


def _tracing_env(pod: dict[str, Any]) -> dict[str, str]:
    (container,) = pod["containers"]
    return {k: v for k, v in _literal_env(container).items() if k in TRACING_SETTINGS}


def test_only_an_otlp_endpoint_turns_tracing_on_and_then_in_every_deployment(
    renders: dict[str, list[Manifest]],
) -> None:
    """tracing.otlpEndpoint and tracing.samplingRatio become OTEL_EXPORTER_OTLP_ENDPOINT and
    OTEL_TRACES_SAMPLER_ARG in the products', orders' and consumers' pods, and nowhere while
    the endpoint is empty (the default and production values); the migration Job traces
    nothing, and the ConfigMap holds neither."""
    for name, objects in renders.items():
        for pod_name, pod in _pod_specs(objects).items():
            traced = name == "traced" and pod_name.startswith("Deployment/")
            expected = (
                {"OTEL_EXPORTER_OTLP_ENDPOINT": OTLP_ENDPOINT, "OTEL_TRACES_SAMPLER_ARG": "0.25"}
                if traced
                else {}
            )
            assert _tracing_env(pod) == expected, f"{name}: {pod_name}"
        for config in _of_kind(objects, "ConfigMap").values():
            assert not set(config.get("data", {})) & set(TRACING_SETTINGS), name
    assert len(_of_kind(renders["traced"], "Deployment")) == len(KINDS)


def test_traces_are_kept_one_in_ten_unless_the_values_say_otherwise() -> None:
    objects = _render("--set", f"tracing.otlpEndpoint={OTLP_ENDPOINT}")
    for pod_name, pod in _pod_specs(objects).items():
        if pod_name.startswith("Deployment/"):
            assert _tracing_env(pod)["OTEL_TRACES_SAMPLER_ARG"] == "0.1", pod_name


@pytest.mark.parametrize("ratio", ["1.5", "-0.1"])
def test_the_chart_refuses_a_sampling_ratio_outside_0_to_1(ratio: str) -> None:
    result = _helm("template", "shop", str(CHART), "--set", f"tracing.samplingRatio={ratio}")
    assert result.returncode != 0
    assert "tracing.samplingRatio" in result.stderr


def test_a_private_jwks_ca_is_mounted_and_named_in_the_settings() -> None:
    bundle = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"
    objects = _render("--set-string", f"auth.jwksCaBundle={bundle}")
    maps = _of_kind(objects, "ConfigMap")
    [ca_map] = [m for name, m in maps.items() if name.endswith("-auth-ca")]
    assert ca_map["data"]["ca.pem"].strip() == bundle.strip()
    [config] = [m for name, m in maps.items() if name.endswith("-config")]
    assert config["data"]["AUTH_JWKS_CA_FILE"] == "/auth-ca/ca.pem"
    deployments = [o for o in objects if o["kind"] == "Deployment"]
    assert deployments
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        mounts = {
            (m["name"], m["mountPath"], m.get("readOnly"))
            for c in pod["containers"]
            for m in c.get("volumeMounts", [])
        }
        assert ("auth-ca", "/auth-ca", True) in mounts, deployment["metadata"]["name"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["auth-ca"]["configMap"]["name"] == ca_map["metadata"]["name"]


def test_without_a_private_ca_the_system_trust_store_is_used(
    renders: dict[str, list[Manifest]],
) -> None:
    for name, objects in renders.items():
        maps = _of_kind(objects, "ConfigMap")
        assert not [m for m in maps if m.endswith("-auth-ca")], name
        for m in maps.values():
            assert "AUTH_JWKS_CA_FILE" not in m.get("data", {}), name


def test_each_process_kind_logs_in_as_itself_with_only_its_own_passwords(
    renders: dict[str, list[Manifest]],
) -> None:
    """Products: their DB account (and Kafka principal), no RabbitMQ account at all. Order HTTP
    pods: the order service's DB account and principal, RabbitMQ as intake. Consumers: the same
    DB account and principal, RabbitMQ as the consumers' user, not intake's. Each from a Secret
    of its own kind, by key; no Secret mounted whole, none shared between kinds."""
    for name, objects in renders.items():
        sasl = _kafka_sasl(objects)
        deployments = _of_kind(objects, "Deployment")
        secrets_of = {}
        for kind in KINDS:
            pod = deployments[f"shop-{kind}"]["spec"]["template"]["spec"]
            (container,) = pod["containers"]
            where = f"{name}: {kind}"
            refs = _secret_refs(pod)
            (secret,) = {secret for secret, _ in refs}  # one Secret per kind
            secrets_of[kind] = secret
            assert {key for _, key in refs} == _expected_keys(kind, sasl), where
            assert all("secretRef" not in source for source in container.get("envFrom", []))
            for volume in pod.get("volumes", []):  # a Secret volume is the CA's, its key alone
                if "secret" in volume:
                    assert volume["name"] == "ca", where
                    assert len(volume["secret"]["items"]) == 1, where
            env = _literal_env(container)
            assert env["DB_USER"] == DB_USERS[kind], where
            if sasl:
                assert env["KAFKA_USER"] == KAFKA_USERS[kind], where
            else:
                assert "KAFKA_USER" not in env, where
            if kind == "orders":
                assert env["RABBITMQ_USER"] == "shop-intake", where
                assert "RABBITMQ_CONSUMER_USER" not in _env_names(container), where
            else:  # no intake account: empty, not the development guest/guest
                assert (env["RABBITMQ_USER"], env["RABBITMQ_PASSWORD"]) == ("", ""), where
            if kind == "consumers":
                assert env["RABBITMQ_CONSUMER_USER"] == "shop-consumer", where
            elif kind == "products":
                assert not {n for n in _env_names(container) if n.startswith("RABBITMQ_C")}
        assert len(set(secrets_of.values())) == len(KINDS), f"{name}: {secrets_of}"


def test_chart_made_secrets_hold_each_kind_its_own_passwords_and_nothing_else(
    renders: dict[str, list[Manifest]],
) -> None:
    objects = renders["chart-made secrets"]
    made = _of_kind(objects, "Secret")
    for kind in KINDS:
        assert made[f"shop-{kind}-credentials"]["stringData"] == PASSWORDS[kind], kind
    assert made["shop-migration-credentials"]["stringData"] == {
        MIGRATION_SECRET_KEY: MIGRATION_PASSWORD
    }
    # where each password ends up: the product pods never see the order service's, the order
    # HTTP pods never the consumers' RabbitMQ password, the consumers never intake's
    reachable = {
        obj["metadata"]["name"]: {
            made[secret]["stringData"][key]
            for secret, key in _secret_refs(obj["spec"]["template"]["spec"])
        }
        for obj in _of_kind(objects, "Deployment").values()
    }
    orders, consumers = PASSWORDS["orders"], PASSWORDS["consumers"]
    assert not reachable["shop-products"] & set(orders.values())
    assert consumers["RABBITMQ_CONSUMER_PASSWORD"] not in reachable["shop-orders"]
    assert orders["RABBITMQ_PASSWORD"] not in reachable["shop-consumers"]
    assert not set(PASSWORDS["products"].values()) & (
        reachable["shop-orders"] | reachable["shop-consumers"]
    )
    assert MIGRATION_PASSWORD not in set().union(*reachable.values())


def test_production_values_give_every_pod_the_ca_file_and_kafka_sasl_ssl(
    renders: dict[str, list[Manifest]],
) -> None:
    objects = renders["production"]
    assert not _of_kind(objects, "Secret")  # every password from a Secret kept outside the chart
    config = _of_kind(objects, "ConfigMap")["shop-config"]["data"]
    assert config["RABBITMQ_PORT"] == "5671"  # amqps
    for pod_name, pod in _pod_specs(objects).items():
        (container,) = pod["containers"]
        settings = _settings(objects, container)
        wanted = ("DB_CA_FILE",) if pod_name.startswith("Job/") else CA_FILE_SETTINGS
        for setting in wanted:
            ca_file = Path(settings[setting])
            mount, volume = _mounts(pod)[str(ca_file.parent)]
            assert mount["readOnly"] is True, f"{pod_name} {setting}"
            assert volume["configMap"]["name"] == "shop-ca", f"{pod_name} {setting}"
            assert {"key": "ca.pem", "path": ca_file.name} in volume["configMap"]["items"]
        if pod_name.startswith("Deployment/"):
            assert settings["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL", pod_name
            assert settings["KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512", pod_name
            assert "KAFKA_PASSWORD" in _env_names(container), pod_name


def test_a_ca_given_as_values_is_a_configmap_and_a_hook_copy_for_the_migration_job(
    renders: dict[str, list[Manifest]],
) -> None:
    objects = renders["chart-made secrets"]
    maps = _of_kind(objects, "ConfigMap")
    assert maps["shop-ca"]["data"]["ca.pem"].strip() == CA_BUNDLE.strip()
    hook_copy = maps["shop-hook-ca"]
    assert hook_copy["data"] == maps["shop-ca"]["data"]
    (job,) = _of_kind(objects, "Job").values()
    assert int(hook_copy["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
        job["metadata"]["annotations"]["helm.sh/hook-weight"]
    )
    for pod_name, pod in _pod_specs(objects).items():
        (container,) = pod["containers"]
        settings = _settings(objects, container)
        _, volume = _mounts(pod)[str(Path(settings["DB_CA_FILE"]).parent)]
        wanted = "shop-hook-ca" if pod_name.startswith("Job/") else "shop-ca"
        assert volume["configMap"]["name"] == wanted, pod_name
        if pod_name.startswith("Deployment/"):
            for setting in CA_FILE_SETTINGS:
                assert settings[setting] == settings["DB_CA_FILE"], f"{pod_name} {setting}"
            assert settings["RABBITMQ_PORT"] == "5671", pod_name


def test_a_ca_from_an_existing_secret_mounts_that_key_alone() -> None:
    objects = _render(
        "--set", "tls.existingSecret=shop-kafka-cluster-ca-cert", "--set", "tls.key=ca.crt"
    )
    for pod_name, pod in _pod_specs(objects).items():
        (container,) = pod["containers"]
        ca_file = Path(_settings(objects, container)["DB_CA_FILE"])
        mount, volume = _mounts(pod)[str(ca_file.parent)]
        assert mount["readOnly"] is True, pod_name
        assert volume["secret"] == {
            "secretName": "shop-kafka-cluster-ca-cert",
            "items": [{"key": "ca.crt", "path": ca_file.name}],
        }, pod_name


def test_without_a_ca_no_server_is_reached_over_tls(renders: dict[str, list[Manifest]]) -> None:
    objects = renders["default"]
    config = _of_kind(objects, "ConfigMap")["shop-config"]["data"]
    assert not set(CA_FILE_SETTINGS) & set(config)
    assert config["RABBITMQ_PORT"] == "5672"
    for pod_name, pod in _pod_specs(objects).items():
        assert "ca" not in {v["name"] for v in pod["volumes"]}, pod_name


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["--set", "config.DB_USER=shop"], "config.DB_USER: accounts are per process"),
        (["--set", "config.RABBITMQ_CA_FILE=/x.pem"], "config.RABBITMQ_CA_FILE"),
        (["--set", "products.env.RABBITMQ_PASSWORD=x"], "products.env.RABBITMQ_PASSWORD"),
        (["--set", "secrets.existingSecret=shop-credentials"], "secrets.* is gone"),
        (["--set", "config.KAFKA_SECURITY_PROTOCOL=SASL"], "KAFKA_SECURITY_PROTOCOL=SASL:"),
        (
            ["--set", "tls.caBundle=x", "--set", "tls.existingConfigMap=shop-ca"],
            "give one of caBundle, existingConfigMap and existingSecret",
        ),
        (
            [
                "--set",
                "config.KAFKA_SECURITY_PROTOCOL=SASL_SSL",
                "--set",
                "identities.products.existingSecret=",
                "--set",
                "identities.products.dbPassword=x",
            ],
            "identities.products.kafkaPassword (or identities.products.existingSecret)",
        ),
        (
            [
                "--set",
                "identities.consumers.existingSecret=",
                "--set",
                "identities.orders.dbPassword=x",
            ],
            "identities.consumers.rabbitmqPassword",
        ),
    ],
)
def test_the_chart_refuses_values_that_would_share_or_misplace_an_account(
    values: list[str], message: str
) -> None:
    result = _helm("template", "shop", str(CHART), *values)
    assert result.returncode != 0
    assert message in result.stderr


def _statements(path: Path) -> list[str]:
    lines = [line for line in path.read_text().splitlines() if not line.startswith("--")]
    return [" ".join(st.split()) for st in " ".join(lines).split(";") if st.strip()]


def test_the_accounts_sql_makes_the_accounts_the_values_name_with_the_migrations_roles() -> None:
    """The administrator's SQL (README.md): per flavour the same statements but SET DEFAULT ROLE;
    the roles `shop migrate` grants to; the accounts values.yaml names, each holding its role
    as default role and nothing else, over TLS only; the migration account with the grant
    option; passwords as placeholders only."""
    mariadb, mysql = (_statements(path) for path in ACCOUNTS_SQL.values())
    assert [st.replace(" FOR '", " TO '") for st in mariadb] == mysql
    assert len([st for st in mysql if st.startswith("SET DEFAULT ROLE")]) == 2
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    identities = values["identities"]
    roles = {"shop_products": "shop_products_rights", "shop_orders": "shop_orders_rights"}
    assert {identities[kind]["dbUser"] for kind in KINDS} == set(roles)
    assert set(roles.values()) == set(RIGHTS)
    migrate = values["migration"]["user"]
    for role in RIGHTS:
        assert f"CREATE ROLE IF NOT EXISTS {role}" in mariadb
    for statement in mariadb:
        if statement.startswith(("CREATE USER", "ALTER USER")):
            assert statement.endswith("REQUIRE SSL"), statement
            assert "IDENTIFIED BY '${" in statement, statement
    grants = [st for st in mariadb if st.startswith("GRANT")]
    assert f"GRANT ALL PRIVILEGES ON shop.* TO '{migrate}'@'%' WITH GRANT OPTION" in grants
    for user, role in roles.items():
        account = f"'{user}'@'%'"
        assert [st for st in grants if account in st] == [f"GRANT {role} TO {account}"]
        assert f"SET DEFAULT ROLE {role} FOR {account}" in mariadb
        assert f"REVOKE ALL PRIVILEGES, GRANT OPTION FROM {account}" in mariadb


def _readme_objects(kind: str) -> dict[str, Manifest]:
    """The operator resources of kind `kind` in the chart README's yaml blocks."""
    text = (CHART / "README.md").read_text()
    blocks = [block.split("```", 1)[0] for block in text.split("```yaml\n")[1:]]
    docs = [doc for block in blocks for doc in yaml.safe_load_all(block) if doc]
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def test_the_readme_gives_each_kafka_principal_the_acls_of_its_topics_and_group() -> None:
    config = yaml.safe_load((CHART / "values-production.yaml").read_text())["config"]
    write = {"Write", "Describe", "Create"}
    expected = {
        "orders": {
            ("topic", config["KAFKA_TOPIC"]): write | {"Read"},
            ("topic", config["KAFKA_ORDER_EVENTS_TOPIC"]): write,
            ("topic", config["KAFKA_DLQ_TOPIC"]): write,
            ("group", config["KAFKA_CONSUMER_GROUP"]): {"Read"},
        },
        "products": {("topic", config["KAFKA_PRODUCT_EVENTS_TOPIC"]): write},
    }
    users = _readme_objects("KafkaUser")
    assert set(users) == {KAFKA_USERS[kind] for kind in KINDS}
    for name, user in users.items():
        assert user["spec"]["authentication"]["type"] == "scram-sha-512"
        acls = {
            (acl["resource"]["type"], acl["resource"]["name"]): set(acl["operations"])
            for acl in user["spec"]["authorization"]["acls"]
        }
        assert all(
            acl["resource"]["patternType"] == "literal"
            for acl in user["spec"]["authorization"]["acls"]
        )
        assert acls == expected[name], name
    (kafka,) = _readme_objects("Kafka").values()
    (listener,) = kafka["spec"]["kafka"]["listeners"]
    assert listener["tls"] is True
    assert listener["authentication"]["type"] == "scram-sha-512"
    assert config["KAFKA_BROKERS"].endswith(f":{listener['port']}")


def test_the_readme_limits_each_rabbitmq_user_to_what_its_role_needs() -> None:
    """Intake may publish to the order exchange only; the consumers declare, bind and consume
    their queue and publish dead letters, but may not publish order commands. Where the
    checkout has `Topology.permissions` (the RabbitMQ adapter's own patterns), they match it."""
    queue = yaml.safe_load((CHART / "values-production.yaml").read_text())["config"][
        "RABBITMQ_QUEUE"
    ]
    # RabbitMQ checks the default exchange ("") by the name amq.default
    names = {queue, f"{queue}.dlq", f"{queue}.dlx", f"{queue}.exchange", "amq.default"}
    allowed = {
        "shop-intake": {"configure": set(), "write": {f"{queue}.exchange"}, "read": set()},
        "shop-consumer": {
            "configure": {queue, f"{queue}.dlq", f"{queue}.dlx", f"{queue}.exchange"},
            "write": {queue, f"{queue}.dlq", f"{queue}.dlx"},
            "read": {queue, f"{queue}.dlx", f"{queue}.exchange"},
        },
    }
    permissions = {
        p["spec"]["userReference"]["name"]: p["spec"]["permissions"]
        for p in _readme_objects("Permission").values()
    }
    users = {
        "shop-intake": _readme_objects("User")["shop-intake"],
        "shop-consumer": _readme_objects("User")["shop-consumer"],
    }
    assert set(permissions) == set(users) == {"shop-intake", "shop-consumer"}
    for user, patterns in permissions.items():
        assert users[user]["spec"]["tags"] == [], user  # not an administrator
        for kind, pattern in patterns.items():
            matched = {name for name in names if re.fullmatch(pattern, name)}
            assert matched == allowed[user][kind], f"{user} {kind}: {pattern}"
    try:
        from shop.messaging.rabbitmq import Topology
        from shop.settings import RabbitMQ
    except ImportError:  # pragma: no cover
        return
    needs = getattr(Topology, "permissions", None)  # lands with the per-role RabbitMQ accounts
    if needs is not None:
        topology = Topology(RabbitMQ(queue=queue))
        for user, role in (("shop-intake", "intake"), ("shop-consumer", "consumer")):
            assert permissions[user] == needs(topology, role)._asdict(), user


def test_every_pod_starts_with_the_settings_the_chart_gives_it(
    renders: dict[str, list[Manifest]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Each pod's environment (its ConfigMap, its literal env, its Secrets' keys) passes the
    settings' start-up checks, the refusal of development passwords beyond loopback among them,
    and names each process's own accounts."""
    monkeypatch.chdir(tmp_path)  # no config.yaml: the pod's environment alone
    for name, objects in renders.items():
        for pod_name, pod in _pod_specs(objects).items():
            (container,) = pod["containers"]
            env = _settings(objects, container) | {
                item["name"]: f"secret-{item['valueFrom']['secretKeyRef']['key']}"
                for item in container.get("env", [])
                if "secretKeyRef" in item.get("valueFrom", {})
            }
            for variable in list(os.environ):
                if variable.split("_")[0] in {"DB", "KAFKA", "RABBITMQ", "AUTH", "BIND", "SHOP"}:
                    monkeypatch.delenv(variable)
            for variable, value in env.items():
                monkeypatch.setenv(variable, str(value))
            settings = load_settings()
            if pod_name.startswith("Job/"):
                assert settings.db.migrate_password == f"secret-{MIGRATION_SECRET_KEY}"
                continue
            kind = pod_name.removeprefix("Deployment/shop-")
            assert settings.db.user == DB_USERS[kind], f"{name}: {pod_name}"
            assert settings.db.password == "secret-DB_PASSWORD", f"{name}: {pod_name}"
            assert settings.http.bind_host == "0.0.0.0", f"{name}: {pod_name}"  # noqa: S104
            rabbitmq = settings.rabbitmq
            accounts = {
                "products": ("", "", None),
                "orders": ("shop-intake", "secret-RABBITMQ_PASSWORD", None),
                "consumers": ("", "", "shop-consumer"),
            }
            assert (rabbitmq.user, rabbitmq.password, rabbitmq.consumer_user) == accounts[kind]
            kafka = settings.kafka
            assert kafka.security_protocol == env["KAFKA_SECURITY_PROTOCOL"], pod_name
            if kafka.security_protocol.startswith("SASL_"):
                assert (kafka.user, kafka.password) == (KAFKA_USERS[kind], "secret-KAFKA_PASSWORD")
            if "DB_CA_FILE" in env:
                ca_files = {settings.db.ca_file, rabbitmq.ca_file, kafka.ca_file}
                assert ca_files == {env["DB_CA_FILE"]}, f"{name}: {pod_name}"
