"""The repository's shape: compose file valid, every service runnable."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess

import pytest

from tests.helpers.procs import ROOT

SERVICES = ("ipam", "network", "netagent", "lb", "dns")


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is not installed")
def test_docker_compose_file_is_valid() -> None:
    out = subprocess.run(
        ["docker-compose", "-f", os.path.join(ROOT, "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_has_its_folder_and_entry_point(service: str) -> None:
    assert os.path.isfile(os.path.join(ROOT, "services", service, "__main__.py"))
    module = importlib.import_module(f"services.{service}.app")
    app = module.app_factory()
    assert app.name == service


def test_pinet_command_lists_services() -> None:
    out = subprocess.run(
        [os.path.join(ROOT, ".venv/bin/pinet"), "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0
    for service in SERVICES:
        assert service in out.stdout
