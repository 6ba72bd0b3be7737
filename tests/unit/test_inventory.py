"""The inventory file: good files load, bad ones name the file, the line and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from cnd_fab.errors import InventoryError
from cnd_fab.inventory import load
from tests.helpers import REPO


@pytest.fixture
def key(tmp_path: Path) -> Path:
    path = tmp_path / "id_ed25519"
    path.write_text("not read here")
    return path


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "inventory.yaml"
    path.write_text(text)
    return str(path)


def test_example_inventory_is_valid(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "id_ed25519").write_text("x")
    monkeypatch.setenv("HOME", str(tmp_path))
    inventory = load(str(REPO / "inventory.example.yaml"))
    assert [h.name for h in inventory.hosts] == ["build-box", "127.0.0.1:2202"]
    assert inventory.hosts[0].cores == 2 and inventory.hosts[1].port == 2202
    assert inventory.docker.cpus == (1.0, 1.0, 0.25, 0.25)
    assert inventory.ec2.region == "eu-west-2" and inventory.ec2.instance_type == "c7a.large"


def test_arch_takes_uname_and_debian_names(tmp_path: Path, key: Path) -> None:
    text = "hosts:\n  - {{host: a, user: u, key: {key}, arch: arm64}}\n  - {{host: b, user: u, key: {key}, arch: x86_64}}\n"
    inventory = load(write(tmp_path, text.format(key=key)))
    assert [h.arch for h in inventory.hosts] == ["aarch64", "x86_64"]


def test_relative_key_paths_are_relative_to_the_file(tmp_path: Path, key: Path) -> None:
    inventory = load(write(tmp_path, "hosts:\n  - {host: h, user: u, key: id_ed25519}\n"))
    assert inventory.hosts[0].key == key and inventory.hosts[0].port == 22


@pytest.mark.parametrize(
    "text, message",
    [
        ("hosts:\n  - host: h\n    user: u\n    key: {key}\n    port: ssh\n", ":5: hosts[0].port must be a whole number from 1 to 65535, not 'ssh'"),
        ("hosts:\n  - host: h\n    user: u\n    key: {key}\n    port: 70000\n", ":5: hosts[0].port must be a whole number from 1 to 65535, not 70000"),
        ("hosts:\n  - host: h\n    key: {key}\n", ":2: hosts[0] needs a 'user' field"),
        ("hosts:\n  - host: h\n    user: u\n    key: /nonexistent/key\n", ":4: hosts[0].key names /nonexistent/key, which is not a readable file"),
        ("hosts:\n  - host: h\n    user: u\n    key: {key}\n    colour: red\n", ":5: hosts[0].colour is not a known field"),
        ("hosts:\n  - host: h\n    user: u\n    key: {key}\n    cores: 0\n", ":5: hosts[0].cores must be a whole number at least 1, not 0"),
        ("hosts: {{}}\n", ":1: hosts must be a list of hosts"),
        ("docker:\n  cpus: [1, fast]\n", ":2: docker.cpus[1] must be a number of CPUs above 0, not 'fast'"),
        ("docker:\n  image: ''\n", ":2: docker.image must be non-empty text"),
        ("ec2:\n  zone: x\n", ":2: ec2.zone is not a known field"),
        ("clouds: 3\n", ":1: clouds is not a known field"),
        ("hosts:\n  - host: h\n    user: u\n    key: {key}\n  - host: h\n    user: u\n    key: {key}\n", ":5: hosts[1].name repeats the name 'h:22'"),
        ("hosts: [\n", ": not valid YAML"),
        ("hosts:\n  - host: h\n    user: u\n    key: {key}\n    arch: riscv64\n", ":5: hosts[0].arch must be one of x86_64, aarch64, not 'riscv64'"),
    ],
)
def test_bad_fields_name_file_line_and_field(tmp_path: Path, key: Path, text: str, message: str) -> None:
    path = write(tmp_path, text.format(key=key))
    with pytest.raises(InventoryError) as caught:
        load(path)
    assert str(caught.value).startswith(path)
    assert message in str(caught.value)


def test_missing_file_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(InventoryError, match="cannot read the inventory .*nope.yaml: No such file"):
        load(str(tmp_path / "nope.yaml"))
