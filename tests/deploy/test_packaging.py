"""What ships: the shop wheel and the Docker image hold the services, never the dev stack."""

from __future__ import annotations

import re
import subprocess
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
# Imports of the local stack, under its old name inside the package or its new one in tools/.
_STACK_IMPORT = re.compile(r"^\s*(?:from|import)\s+(?:devstack|shop\.stack)\b", re.MULTILINE)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    """The product wheel, built as a release would build it (`uv build`, the same uv as make)."""
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run(
        ["python3", "-m", "uv", "build", "--wheel", "--quiet", "--out-dir", str(out), str(REPO)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"uv build failed:\n{result.stdout}\n{result.stderr}"
    (built,) = out.glob("shop-*.whl")
    return zipfile.ZipFile(built)


def test_wheel_holds_the_services_and_no_stack_code(wheel: zipfile.ZipFile) -> None:
    names = wheel.namelist()
    assert {"shop/runtime/cli.py", "shop/runtime/composition.py", "shop/settings.py"} <= set(names)
    packages = {
        name.split("/", 1)[0] for name in names if not name.split("/")[0].endswith(".dist-info")
    }
    assert packages == {"shop"}
    stack_files = [n for n in names if n.startswith(("devstack", "shop/stack/"))]
    assert not stack_files, f"the wheel ships local-stack files: {stack_files}"
    importing = [
        name
        for name in names
        if name.endswith(".py") and _STACK_IMPORT.search(wheel.read(name).decode())
    ]
    assert not importing, f"wheel modules import the local stack: {importing}"


def test_wheel_installs_only_the_shop_command(wheel: zipfile.ZipFile) -> None:
    (entry_points,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    scripts = re.findall(r"^(\S+)\s*=", wheel.read(entry_points).decode(), re.MULTILINE)
    assert scripts == ["shop"]


def test_image_copies_only_the_services() -> None:
    """The Dockerfile copies src/ (only the shop package) and the files it runs with."""
    sources = [
        source
        for line in DOCKERFILE.read_text().splitlines()
        if line.startswith("COPY ") and "--from=" not in line
        for source in line.split()[1:-1]
    ]
    assert sources, "the Dockerfile copies nothing from the checkout"
    allowed = {"pyproject.toml", "uv.lock", "README.md", "src/", "migrations/"}
    allowed |= {"alembic.ini", "config.yaml"}
    assert set(sources) <= allowed, f"unexpected COPY sources: {sources}"
    src_packages = {p.name for p in (REPO / "src").iterdir() if (p / "__init__.py").is_file()}
    assert src_packages == {"shop"}
    assert not (REPO / "src" / "shop" / "stack").exists()


def test_no_layout_allows_the_development_passwords() -> None:
    """`ALLOW_DEFAULT_PASSWORDS` stays false everywhere (issue 22): compose and Helm generate or
    take real passwords, and the local stack and cluster listen on loopback, which needs none."""
    layouts = [REPO / "docker-compose.yml", DOCKERFILE, REPO / "config.yaml", REPO / "Makefile"]
    layouts += [p for d in ("deploy", "tools/devstack") for p in (REPO / d).rglob("*")]
    setting = re.compile(r"allow_default_passwords", re.IGNORECASE)
    found = [
        str(path.relative_to(REPO))
        for path in layouts
        if path.is_file() and setting.search(path.read_text(errors="replace"))
    ]
    assert not found, f"these set ALLOW_DEFAULT_PASSWORDS: {found}"
