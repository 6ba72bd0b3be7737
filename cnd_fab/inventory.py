"""The inventory file: static hosts and provider settings, checked field by field.

Errors name the file, the line and the field, for example
``inventory.yaml:7: hosts[1].port must be a whole number from 1 to 65535, not 'ssh'``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple, Union


from .errors import InventoryError

if TYPE_CHECKING:
    import yaml

FieldPath = Tuple[Union[str, int], ...]

DEFAULT_DOCKER_IMAGE = "cnd-fab-sshd:latest"


@dataclass(frozen=True)
class StaticHost:
    """One host of the static provider, as listed in the inventory."""

    name: str
    host: str
    port: int
    user: str
    key: Path
    cores: Optional[int] = None
    #: Its CPU architecture as `uname -m` says it; None builds kernels for every one we know.
    arch: Optional[str] = None


@dataclass(frozen=True)
class DockerSettings:
    """The docker provider's settings from the inventory."""

    image: str = DEFAULT_DOCKER_IMAGE
    #: CPU limit per container: one value for all, or one per container in order.
    cpus: Tuple[float, ...] = ()


@dataclass(frozen=True)
class Ec2Settings:
    """The ec2 provider's settings from the inventory."""

    region: Optional[str] = None
    instance_type: Optional[str] = None
    ami: Optional[str] = None
    #: The public SSM parameter that names the AMI when `ami` is not given.
    ami_parameter: Optional[str] = None
    ssh_cidr: Optional[str] = None
    #: Seconds to wait for SSH on new instances.
    ssh_timeout: Optional[float] = None


@dataclass(frozen=True)
class Inventory:
    """A checked inventory file: static hosts and provider settings."""

    path: Optional[Path] = None
    hosts: Tuple[StaticHost, ...] = ()
    known_hosts: Optional[Path] = None
    docker: DockerSettings = DockerSettings()
    ec2: Ec2Settings = Ec2Settings()


def _lines(node: "yaml.Node", path: FieldPath = ()) -> Dict[FieldPath, int]:
    """Map each value's path in the document to its 1-based line."""
    import yaml

    lines = {path: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            lines.update(_lines(value, path + (str(key.value),)))
            lines[path + (str(key.value),)] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines.update(_lines(item, path + (index,)))
    return lines


class _Checker:
    def __init__(self, path: Path, lines: Dict[FieldPath, int]) -> None:
        self.path = path
        self.lines = lines

    def fail(self, where: FieldPath, message: str) -> InventoryError:
        line = self.lines.get(where) or self.lines.get(where[:-1]) or 1
        name = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in where).lstrip(".")
        return InventoryError(f"{self.path}:{line}: {name or 'the file'} {message}")

    def mapping(self, value: Any, where: FieldPath, allowed: Tuple[str, ...]) -> Dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(where, f"must be a mapping, not {type(value).__name__}")
        for key in value:
            if key not in allowed:
                raise self.fail(where + (str(key),), f"is not a known field (expected one of: {', '.join(allowed)})")
        return value

    def text(self, value: Any, where: FieldPath) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(where, f"must be non-empty text, not {value!r}")
        return value.strip()

    def whole(self, value: Any, where: FieldPath, low: int, high: Optional[int] = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
            bounds = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise self.fail(where, f"must be a whole number {bounds}, not {value!r}")
        return value

    def file(self, value: Any, where: FieldPath, must_exist: bool = True) -> Path:
        path = Path(self.text(value, where)).expanduser()
        if not path.is_absolute():
            path = (self.path.parent / path).resolve()
        if must_exist and not path.is_file():
            raise self.fail(where, f"names {path}, which is not a readable file")
        return path

    def arch(self, value: Any, where: FieldPath) -> str:
        """x86_64 or aarch64; amd64 and arm64 are the same two."""
        from .kernels import ARCHITECTURES, normal_architecture

        name = normal_architecture(self.text(value, where))
        if name not in ARCHITECTURES:
            raise self.fail(where, f"must be one of {', '.join(ARCHITECTURES)}, not {value!r}")
        return name

    def cpus(self, value: Any, where: FieldPath) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1024:
            raise self.fail(where, f"must be a number of CPUs above 0, not {value!r}")
        return float(value)


def load(path_text: str) -> Inventory:
    """Read and check an inventory file; InventoryError names the line and field."""
    path = Path(path_text).expanduser()
    try:
        text = path.read_text()
    except OSError as error:
        raise InventoryError(f"cannot read the inventory {path}: {error.strerror or error}") from None
    # Imported here: PyYAML compiles its resolver's patterns on import, which a run without
    # an inventory file should not pay for.
    import yaml

    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        raise InventoryError(f"{path}{line}: not valid YAML: {problem}") from None
    check = _Checker(path, _lines(node) if node is not None else {})
    data = check.mapping(data if data is not None else {}, (), ("hosts", "known_hosts", "docker", "ec2"))

    hosts: List[StaticHost] = []
    raw_hosts = data.get("hosts", [])
    if not isinstance(raw_hosts, list):
        raise check.fail(("hosts",), "must be a list of hosts")
    for index, raw in enumerate(raw_hosts):
        where: FieldPath = ("hosts", index)
        entry = check.mapping(raw, where, ("name", "host", "port", "user", "key", "cores", "arch"))
        for required in ("host", "user", "key"):
            if required not in entry:
                raise check.fail(where, f"needs a {required!r} field")
        address = check.text(entry["host"], where + ("host",))
        port = check.whole(entry.get("port", 22), where + ("port",), 1, 65535)
        hosts.append(
            StaticHost(
                name=check.text(entry.get("name", f"{address}:{port}"), where + ("name",)),
                host=address,
                port=port,
                user=check.text(entry["user"], where + ("user",)),
                key=check.file(entry["key"], where + ("key",)),
                cores=None if entry.get("cores") is None else check.whole(entry["cores"], where + ("cores",), 1),
                arch=None if entry.get("arch") is None else check.arch(entry["arch"], where + ("arch",)),
            )
        )
    names = [host.name for host in hosts]
    for index, name in enumerate(names):
        if names.index(name) != index:
            raise check.fail(("hosts", index, "name"), f"repeats the name {name!r}; give each host its own name")

    known_hosts = None
    if data.get("known_hosts") is not None:
        known_hosts = check.file(data["known_hosts"], ("known_hosts",), must_exist=False)

    docker = DockerSettings()
    if data.get("docker") is not None:
        raw_docker = check.mapping(data["docker"], ("docker",), ("image", "cpus"))
        cpus: Tuple[float, ...] = ()
        if "cpus" in raw_docker:
            raw_cpus = raw_docker["cpus"]
            if isinstance(raw_cpus, list):
                cpus = tuple(check.cpus(v, ("docker", "cpus", i)) for i, v in enumerate(raw_cpus))
            else:
                cpus = (check.cpus(raw_cpus, ("docker", "cpus")),)
        docker = DockerSettings(
            image=check.text(raw_docker.get("image", DEFAULT_DOCKER_IMAGE), ("docker", "image")),
            cpus=cpus,
        )

    ec2 = Ec2Settings()
    if data.get("ec2") is not None:
        text_fields = ("region", "instance_type", "ami", "ami_parameter", "ssh_cidr")
        raw_ec2 = check.mapping(data["ec2"], ("ec2",), text_fields + ("ssh_timeout",))
        texts = {name: check.text(raw_ec2[name], ("ec2", name)) for name in text_fields if name in raw_ec2}
        ssh_timeout = None
        if "ssh_timeout" in raw_ec2:
            ssh_timeout = float(check.whole(raw_ec2["ssh_timeout"], ("ec2", "ssh_timeout"), 1))
        ec2 = Ec2Settings(ssh_timeout=ssh_timeout, **texts)
    return Inventory(path=path, hosts=tuple(hosts), known_hosts=known_hosts, docker=docker, ec2=ec2)
