"""Kernels are built for the fleet's architectures only, and each host gets its own binary."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

import pytest

from cnd_fab import kernels
from cnd_fab.inventory import Inventory, StaticHost
from cnd_fab.providers import ProviderOptions, provider_class


@pytest.fixture
def builds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> List[str]:
    """Record each compile instead of running a compiler; the binaries are placeholders."""
    monkeypatch.setenv("CND_FAB_CACHE_DIR", str(tmp_path / "cache"))
    built: List[str] = []

    def compile_stub(architecture: str, source: Path, output: Path, cache: Path) -> Tuple[bool, str]:
        built.append(architecture)
        output.write_bytes(architecture.encode())
        return True, ""

    monkeypatch.setattr(kernels, "_compile", compile_stub)
    return built


def static_options(*arches: Optional[str]) -> ProviderOptions:
    hosts = tuple(StaticHost(f"h{i}", "127.0.0.1", 22, "u", Path("/k"), arch=arch) for i, arch in enumerate(arches))
    return ProviderOptions(inventory=Inventory(hosts=hosts))


def test_only_the_asked_architectures_are_built_once(builds: List[str]) -> None:
    folder, problems = kernels.ensure_kernels(("x86_64",))
    assert builds == ["x86_64"] and not problems and folder is not None
    kernels.ensure_kernels(("x86_64",))
    assert builds == ["x86_64"]  # cached
    kernels.ensure_kernels(("aarch64", "x86_64"))
    assert builds == ["x86_64", "aarch64"]


def test_each_provider_names_its_fleets_architectures() -> None:
    machine = kernels.machine_architecture()
    assert provider_class("local")().architectures() == (machine,)
    assert provider_class("docker")().architectures() == (machine,)
    ec2 = provider_class("ec2")
    assert ec2(ProviderOptions(instance_type="c7g.large")).architectures() == ("aarch64",)
    assert ec2(ProviderOptions(instance_type="c7a.large")).architectures() == ("x86_64",)
    static = provider_class("static")
    assert static(static_options("aarch64", "aarch64")).architectures() == ("aarch64",)
    assert static(static_options("aarch64", None)).architectures() == kernels.ARCHITECTURES


def test_a_host_of_known_architecture_gets_only_its_own_binary(builds: List[str]) -> None:
    folder, _ = kernels.ensure_kernels(kernels.ARCHITECTURES)
    assert set(kernels.kernel_files(folder)) == {"sha256d-x86_64", "sha256d-aarch64"}
    assert kernels.kernel_files(folder, "aarch64") == {"sha256d-aarch64": b"aarch64"}
    assert kernels.kernel_files(None, "x86_64") == {}


def test_payload_builds_for_the_fleet_and_says_so(builds: List[str]) -> None:
    from io import StringIO

    from rich.console import Console

    said = StringIO()
    payload = kernels.prepare_payload("auto", ("aarch64",), Console(file=said))
    assert builds == ["aarch64"] and payload.kernel_dir is not None
    assert "building the native kernel for aarch64" in said.getvalue()
    assert kernels.prepare_payload("python", ("aarch64",), Console(file=said)).kernel_dir is None
