"""The option table, the tasks built from it, and the pure parsers (in-process, no hosts)."""

from __future__ import annotations

import builtins
import copy
import io
import os
import pathlib
import socket
import subprocess
import sys
from typing import Any, Dict, List

import pytest
from invoke.parser import Argument, Parser, ParserContext

from cnd_fab import options, tasks
from cnd_fab.checks import open_provider
from cnd_fab.errors import InputError
from cnd_fab.flags import FLAG
from cnd_fab.options import options_for, parse_bench, parse_calibrate, parse_search
from cnd_fab.request import ProviderRequest
from tests.e2e.test_cli_local import BAD_INPUTS

TASKS = {options.SEARCH: tasks.search, options.CALIBRATE: tasks.calibrate, options.BENCH: tasks.bench}

# Each task's flags with the short flag Invoke gave it before the table existed: the table
# must keep every one (`--best-effort`'s odd `--` short flag is Invoke's own choice).
FLAGS_BEFORE = {
    options.SEARCH: {
        "difficulty": "d", "count": "c", "block": "b", "block-hex": "l", "nonce-bytes": "n", "units": "u",
        "provider": "p", "timeout": "t", "any": "a", "json": "j", "inventory": "i", "accept-new-host-key": "e",
        "image": "m", "region": "r", "instance-type": "s", "ami": None, "ssh-cidr": "h", "yes": "y",
        "max-cost": "x", "kernel": "k", "within": "w", "confidence": "o", "best-effort": "-", "resume": None,
        "instance-types": None, "spot": None, "min-count": None,
    },
    options.CALIBRATE: {
        "provider": "p", "count": "c", "seconds": "s", "inventory": "i", "instance-type": "n", "region": "r",
        "kernel": "k", "yes": "y",
    },
    options.BENCH: {"seconds": "s", "count": "c", "provider": "p", "inventory": "i", "kernel": "k", "startup": "t",
                     "checkpoints": "h", "simulate": "m", "host-rate": "o"},
}

# Rows whose check needs a file or a provider: they pass parsing and fail in open_provider.
NEED_A_PROVIDER = (
    "needs --inventory FILE",
    "cannot read the inventory",
    "hosts[0].key names",
    "too many local workers",
    "no AWS region",
    "no AWS credentials found",
)


def arguments_of(task_name: str) -> List[Argument]:
    """The task's Invoke arguments (on a copy: Invoke pops the help texts as it reads them)."""
    task = copy.copy(TASKS[task_name])
    task.help = dict(task.help)
    return list(task.get_arguments())


def invoke_kwargs(task_name: str, argv: List[str]) -> Dict[str, Any]:
    """What Invoke would pass the task body for `fab TASK argv...`, through its own parser."""
    context = ParserContext(name=task_name, args=arguments_of(task_name))
    return dict(Parser(contexts=[context]).parse_argv([task_name, *argv])[0].as_kwargs)


@pytest.fixture
def no_io(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any file open or socket fails the test."""

    def refuse(*args: object, **kwargs: object) -> Any:
        raise AssertionError(f"I/O during parsing: {args!r}")

    for target, name in ((builtins, "open"), (io, "open"), (os, "open"), (socket, "socket"), (socket, "create_connection")):
        monkeypatch.setattr(target, name, refuse)
    monkeypatch.setattr(pathlib.Path, "read_text", refuse)
    monkeypatch.setattr(pathlib.Path, "read_bytes", refuse)
    monkeypatch.setattr(pathlib.Path, "open", refuse)


@pytest.mark.parametrize("args, message", BAD_INPUTS, ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_every_bad_input_is_one_input_error_line(args: List[str], message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(pathlib.Path(__file__).resolve().parents[2])  # inventory.example.yaml
    raw = invoke_kwargs(options.SEARCH, args)
    needs_provider = any(part in message for part in NEED_A_PROVIDER)
    with pytest.raises(InputError) as caught:
        request = parse_search(raw)
        assert needs_provider, "parsing alone should have refused this"
        open_provider(request.provider, request.count)
    text = str(caught.value)
    assert message in text and "\n" not in text


def test_ec2_capacity_flags_reach_the_provider_request() -> None:
    request = parse_search(
        invoke_kwargs(options.SEARCH, ["--provider", "ec2", "--count", "8", "--spot", "--min-count", "5",
                                       "--instance-types", " c7a.large, c6a.large,m7a.large"])
    )
    assert request.provider.instance_types == ("c7a.large", "c6a.large", "m7a.large")
    assert request.provider.spot is True and request.provider.min_count == 5
    plain = parse_search(invoke_kwargs(options.SEARCH, ["--provider", "ec2", "--instance-type", "t3.micro"])).provider
    assert (plain.instance_type, plain.instance_types, plain.spot, plain.min_count) == ("t3.micro", None, False, None)


def test_parsing_does_no_io(no_io: None) -> None:
    raw = {
        "provider": "static", "inventory": "/nonexistent/inventory.yaml", "accept_new_host_key": True,
        "count": "3", "difficulty": "20", "block_hex": "00ff", "nonce_bytes": "8", "units": "4096",
        "timeout": "30", "any": True, "json": True, "kernel": "python",
    }
    request = parse_search(raw)
    assert request.provider == ProviderRequest(
        "static", "/nonexistent/inventory.yaml", accept_new_host_key=True, timeout=30.0
    )
    ec2 = parse_search({"provider": "ec2", "region": " eu-west-2 ", "yes": True, "max_cost": "$1.5", "ssh_cidr": "10.0.0.0/8"})
    assert ec2.provider.region == "eu-west-2" and ec2.max_cost == 1.5 and ec2.confirmed
    assert parse_calibrate({"provider": "docker", "inventory": "x.yaml", "count": "2"}).provider.inventory_path == "x.yaml"
    assert parse_bench({"provider": "static", "inventory": "x.yaml"}).provider == ProviderRequest("static", "x.yaml")


def test_importing_the_cli_and_parsing_load_nothing_heavy() -> None:
    # `cnd-fab` is argparse over the option table: not even Invoke (0.2 s to import) is loaded.
    code = (
        "import sys, cnd_fab.cli\n"
        "from cnd_fab.options import parse_search\n"
        "parse_search({'provider': 'ec2', 'region': 'eu-west-2', 'inventory': 'x.yaml'})\n"
        "heavy = ('invoke', 'yaml', 'rich', 'boto3', 'botocore', 'docker', 'paramiko', 'fabric', 'scipy', 'matplotlib')\n"
        "light = {'cnd_fab', 'cnd_fab.cli', 'cnd_fab.commands', 'cnd_fab.options', 'cnd_fab.flags',\n"
        "         'cnd_fab.request', 'cnd_fab.spec', 'cnd_fab.errors', 'cnd_fab.providers'}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy\n"
        "             or (m.startswith('cnd_fab') and m not in light)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("task_name", sorted(TASKS))
def test_each_task_has_exactly_the_table_flags(task_name: str) -> None:
    table = {option.name: option for option in options_for(task_name)}
    assert len(table) == len(options_for(task_name)), "a task takes a flag twice"
    arguments = {argument.names[0]: argument for argument in arguments_of(task_name)}
    assert set(arguments) == set(table)
    for argument in arguments.values():
        option = table[argument.names[0]]
        assert argument.help == option.help
        assert argument.default == (option.default if option.kind == FLAG else None)
        assert argument.kind is (bool if option.kind == FLAG else str)
        short = next(iter(name for name in argument.names if len(name) == 1), None)
        assert short == FLAGS_BEFORE[task_name][option.name], option.name
    assert set(arguments) == set(FLAGS_BEFORE[task_name])


def test_the_defaults() -> None:
    search = parse_search({})
    assert (search.problem.difficulty, search.problem.nonce_bytes, search.problem.block) == (6, 4, b"COMSM0010cloud")
    assert search.space.count == 1024 and search.count is None and search.timeout is None
    assert search.provider == ProviderRequest("local")
    assert (search.kernel, search.within, search.confidence, search.max_cost) == ("auto", None, None, None)
    assert not (search.first_found_wins or search.json_output or search.confirmed or search.best_effort)
    assert parse_search({"nonce_bytes": "8"}).space.count == 1 << 42
    calibrate = parse_calibrate({})
    assert (calibrate.count, calibrate.seconds, calibrate.kernel, calibrate.confirmed) == (1, 15.0, "auto", False)
    assert calibrate.provider == ProviderRequest("local", timeout=15.0)
    bench = parse_bench({})
    assert (bench.seconds, bench.count, bench.provider, bench.kernel, bench.startup) == (5.0, 1, None, "auto", False)
    assert parse_bench({"provider": "local"}).provider is None


@pytest.mark.parametrize(
    "parse, raw, message",
    [
        (parse_calibrate, {"count": "65"}, "--count must be from 1 to 64, not 65"),
        (parse_calibrate, {"seconds": "0"}, "--seconds must be a number of seconds above 0"),
        (parse_calibrate, {"provider": "mars"}, "--provider must be one of docker, ec2, local, static"),
        (parse_bench, {"kernel": "native"}, "--kernel must be one of auto, python, not 'native'"),
        (parse_bench, {"startup": True, "seconds": "3"}, "--startup only times the CLI's start-up; give it without --seconds"),
        (parse_search, {"image": " "}, "--image is empty"),
        (parse_search, {"inventory": ""}, "--inventory is empty"),
        (parse_search, {"max_cost": "lots"}, "--max-cost must be an amount in USD, not 'lots'"),
        (parse_search, {"max_cost": "-1"}, "--max-cost must be an amount in USD of 0 or more"),
        (parse_search, {"confidence": "95%"}, "give --within SECONDS and --confidence L together"),
    ],
)
def test_calibrate_bench_and_more_bad_inputs(parse: Any, raw: Dict[str, object], message: str) -> None:
    with pytest.raises(InputError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        parse(raw)


def test_keys_are_flag_spellings_or_parameter_names() -> None:
    assert parse_search({"block-hex": "00ff"}).problem.block == parse_search({"block_hex": "00ff"}).problem.block
    assert parse_search({"any_": True}).first_found_wins
    assert parse_search({"difficulty": 9}).problem.difficulty == 9  # numbers from Python callers, too
    assert parse_search({"within": "10", "confidence": "95%"}).confidence == pytest.approx(0.95)
    with pytest.raises(TypeError, match="search takes no option 'seconds'"):
        parse_search({"seconds": "3"})


def test_every_provider_name_finds_its_class() -> None:
    from cnd_fab.providers import COUNT_MEANINGS, PROVIDER_NAMES, provider_class

    assert sorted(COUNT_MEANINGS) == list(PROVIDER_NAMES)
    for name in PROVIDER_NAMES:
        assert provider_class(name).name == name
    with pytest.raises(InputError, match="--provider 'gce' is unknown; choose one of: docker, ec2, local, static"):
        provider_class("gce")


def test_open_provider_resolves_the_default_count() -> None:
    provider, count = open_provider(ProviderRequest("local"), None)
    assert provider.name == "local" and count == provider.default_count()
    assert open_provider(ProviderRequest("local"), 3)[1] == 3


def test_startup_figures_print_median_min_and_max(monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console

    from cnd_fab import startup_bench

    seen: List[List[str]] = []
    times = iter([9.0, 0.1, 0.3, 0.2, 9.0, 0.5, 0.35, 0.45])

    def fake_time(argv: List[str], env: Dict[str, str]) -> float:
        seen.append(argv[1:])
        assert env["CND_FAB_STATE_DIR"] != os.environ.get("CND_FAB_STATE_DIR")
        return next(times)

    monkeypatch.setattr(startup_bench, "time_process", fake_time)
    console = Console(record=True, width=120)
    assert startup_bench.startup_figures(console, runs=3) == 0
    text = console.export_text()
    assert seen[0] == ["--help"] and seen[-1] == ["search", "--difficulty", "8"] and len(seen) == 8
    assert "cnd-fab --help" in text and "0.200s" in text and "0.100s" in text and "0.300s" in text
    assert "≤ 0.25s" in text and "above 0.4s" in text


def test_a_block_larger_than_a_work_line_carries_is_refused_at_parse_time() -> None:
    from remote import worker

    assert options.MAX_BLOCK_BYTES == worker.MAX_BLOCK_HEX_CHARS // 2
    assert len(parse_search({"block_hex": "ab" * options.MAX_BLOCK_BYTES}).problem.block) == options.MAX_BLOCK_BYTES
    with pytest.raises(InputError, match=r"the block is 524,289 bytes; at most 524,288 \(512 KiB\) are accepted"):
        parse_search({"block": "x" * (options.MAX_BLOCK_BYTES + 1)})


def test_both_front_ends_offer_the_same_tasks_and_flags() -> None:
    """`fab` (Invoke) and `cnd-fab` (argparse) are both built from the option table."""
    import argparse

    from cnd_fab.cli import build_parser
    from cnd_fab.commands import TASKS

    parser = build_parser()
    [subparsers] = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    assert set(subparsers.choices) == set(TASKS) == {"search", "calibrate", "bench", "teardown", "stats", "status"}
    for name, task_parser in subparsers.choices.items():
        argparse_flags = {flag for action in task_parser._actions for flag in action.option_strings} - {"-h", "--help"}
        invoke_task = getattr(tasks, name)
        invoke_flags = {f"--{parameter.replace('_', '-')}" for parameter in list(inspect_parameters(invoke_task))[1:]}
        assert argparse_flags == invoke_flags == {f"--{option.name}" for option in options.options_for(name)}


def inspect_parameters(task: object) -> List[str]:
    import inspect

    return list(inspect.signature(task.body).parameters)  # type: ignore[attr-defined]


def test_cnd_fab_bad_flags_are_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    from cnd_fab.cli import main

    with pytest.raises(SystemExit) as stopped:
        main(["search", "--no-such-flag"])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "cnd-fab: unrecognized arguments: --no-such-flag (see `cnd-fab --help`)"
    ]


@pytest.mark.parametrize("task", ["search", "calibrate", "bench", "teardown", "stats", "status"])
def test_every_task_prints_its_help(task: str, capsys: pytest.CaptureFixture[str]) -> None:
    from cnd_fab.cli import main

    # argparse formats help texts with %, which a literal "95%" in one once broke.
    with pytest.raises(SystemExit) as ended:
        main([task, "--help"])
    assert ended.value.code == 0
    assert f"usage: cnd-fab {task}" in capsys.readouterr().out
