"""EC2 instances launched together for one run and always terminated at its end.

Example: ``fab search --provider ec2 --count 4 --instance-type c7a.large --timeout 600``.

Per run it creates, recording each in the journal *before* the call that creates it:
an imported ed25519 key pair, a security group open on 22/tcp to the caller's address only,
and N instances: from RunInstances (MinCount = MaxCount) for one on-demand type, or from an
instant CreateFleet with a launch template of the run's for --spot or several
--instance-types (see ec2_launch.py; --min-count is the least it goes on with). Each call
asks for at most LAUNCH_BATCH instances, under a ClientToken of its own: the run id for
the first, `<run id>-b<k>` for call k. Every resource is tagged ``cnd-fab:run``; instances and volumes also carry
``cnd-fab:expires-at`` and ``cnd-fab:alive-until``. User-data installs a host key generated
here, so the controller pins it and never trusts on first use, and schedules ``shutdown -P +M``:
the instances end themselves (shutdown behaviour: terminate) if the controller dies. A live
controller pushes that shutdown further out every few minutes, and renews both tags: teardown
leaves a run whose alive-until is ahead alone unless it is named (see leftovers.py).

The AWS calls for one region are in ``ec2_region.py``; names, tags, user-data and error
lines in ``ec2_settings.py``.
"""

from __future__ import annotations

import ipaddress
import threading
import time
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .. import ssh
from ..cost import UNLIMITED, CostEstimate, estimate, incurred
from ..errors import InputError, ProviderError
from ..journal import RunJournal
from ..ssh import SshHost
from .base import Host, Leftover, LiveResource, Provider, ProviderOptions, Released
from .ec2_launch import LaunchedInstance, RunLaunch
from .ec2_region import AWS_ERRORS, Ec2Region, TaggedInstance
from .ec2_settings import (
    ALIVE_MINUTES,
    ALIVE_TAG,
    DEFAULT_INSTANCE_TYPE,
    DEFAULT_SSH_DEADLINE,
    EXPIRES_TAG,
    MAX_INSTANCES,
    SSH_USER,
    TAG_TIME_FORMAT,
    UBUNTU_AMI_PARAMETER,
    UNAME_MACHINE,
    InstanceChoice,
    Pool,
    architecture,
    check_request,
    dead_man_minutes,
    explain,
    fresh_instances,
    instance_resource,
    run_regions,
    searched_regions,
    ssh_range,
    tag_time,
)

KEEPALIVE_SECONDS = 240.0
#: The instance metadata service, as the worker on a spot instance reaches it.
SPOT_METADATA_URL = "http://169.254.169.254"


@dataclass(frozen=True)
class SshEndpoint:
    """Where the controller reaches an instance's sshd, and as whom."""

    host: str
    port: int
    user: str


def public_address() -> str:
    """This machine's public IPv4 address, as AWS sees it (for the security group)."""
    try:
        with urllib.request.urlopen("https://checkip.amazonaws.com", timeout=10) as answer:
            text = answer.read().decode().strip()
        return str(ipaddress.IPv4Address(text))
    except (OSError, ValueError) as error:
        raise ProviderError(
            f"cannot find this machine's public address ({error}); give it with --ssh-cidr"
        ) from None


def public_endpoint(instance: Dict[str, Any], user_data: str) -> SshEndpoint:
    """An instance's public address on port 22."""
    address = instance.get("PublicIpAddress")
    if not address:
        raise ProviderError(f"{instance['InstanceId']} has no public IPv4 address (is the subnet public?)")
    return SshEndpoint(str(address), 22, SSH_USER)


# The seams the end-to-end tests replace: they must never look up a public address nor
# connect to an address moto made up, so they map each instance to a local sshd, and point
# spot workers at a metadata stand-in on loopback.
address_lookup: Callable[[], str] = public_address
endpoint_resolver: Callable[[Dict[str, Any], str], SshEndpoint] = public_endpoint
metadata_service: str = SPOT_METADATA_URL


class Ec2Provider(Provider):
    """Launches, watches and always terminates EC2 instances; finds and removes leftovers by tag."""

    name = "ec2"
    count_meaning = "EC2 instances launched together in one request"
    instance_type: str

    def __init__(self, options: Optional[ProviderOptions] = None) -> None:
        super().__init__(options)
        settings = self.options.inventory.ec2
        self.region_setting = self.options.region or settings.region
        types = self.options.instance_types or (self.options.instance_type or settings.instance_type or DEFAULT_INSTANCE_TYPE,)
        self.choice = InstanceChoice(tuple(types), self.options.spot)
        # The calibration key and the run record's type: one type, or the fleet's choices.
        self.instance_type = "|".join(self.choice.types)
        self.ami = self.options.ami or settings.ami
        # check() refuses types of two architectures, so the first one's is the run's.
        self.ami_parameter = settings.ami_parameter or UBUNTU_AMI_PARAMETER.format(arch=architecture(self.choice.types[0]))
        self.ssh_cidr = self.options.ssh_cidr or settings.ssh_cidr
        self.ssh_deadline = settings.ssh_timeout or DEFAULT_SSH_DEADLINE
        self._clients: Dict[str, Any] = {}
        self._launch: Optional[RunLaunch] = None
        #: Where a fleet may launch, and the spot prices there, once looked up (by the estimate).
        self._pools: Optional[List[Pool]] = None
        self._spot_prices: Optional[Dict[Tuple[str, str], float]] = None
        #: The instance metadata service spot hosts' workers watch for interruption notices.
        self.interruption_notices = metadata_service if self.choice.spot else None
        self.terminated_at: Optional[float] = None
        self._keepalive_stop = threading.Event()

    def cores_per_host(self) -> int:
        """The instance type's vCPUs; of a fleet's types, the fewest (the planner errs slow)."""
        from ..calibration import vcpus

        return min(vcpus(instance_type) for instance_type in self.choice.types)

    def max_hosts(self) -> int:
        """The most instances one run launches."""
        return MAX_INSTANCES

    def architectures(self) -> Tuple[str, ...]:
        """aarch64 for Graviton instance types, x86_64 for the rest."""
        return tuple(sorted({UNAME_MACHINE[architecture(t)] for t in self.choice.types}))

    # --- AWS clients -------------------------------------------------------------------
    @property
    def region(self) -> str:
        """The region to launch in: --region, the inventory, then the AWS configuration."""
        import boto3

        region = self.region_setting or boto3.session.Session().region_name
        if not region:
            raise InputError("no AWS region: give --region, ec2.region in the inventory, or AWS_DEFAULT_REGION")
        return str(region)

    def client(self, service: str, region: Optional[str] = None) -> Any:
        """One boto3 client per service and region, with standard retries and deadlines."""
        import boto3
        from botocore.config import Config

        region = region or self.region
        key = f"{service}:{region}"
        if key not in self._clients:
            # Standard retries: throttling and transient errors back off and try again.
            config = Config(
                retries={"mode": "standard", "max_attempts": 8},
                connect_timeout=10,
                read_timeout=60,
                user_agent_extra="cnd-fab",
            )
            session: Any = boto3.session.Session(region_name=region)
            self._clients[key] = session.client(service, config=config)
        return self._clients[key]

    @property
    def ec2(self) -> Any:
        """The EC2 client of the launch region."""
        return self.client("ec2")

    def in_region(self, region: str) -> Ec2Region:
        """The AWS calls for one region, on this provider's client for it."""
        return Ec2Region(self.client("ec2", region), region)

    # --- before launch -----------------------------------------------------------------
    def check(self, count: int) -> None:
        """Refuse bad flags, a missing region or missing credentials before anything is paid for."""
        import boto3

        check_request(count, self.choice, self.ssh_cidr, self.options.min_count)
        self.region
        if boto3.session.Session().get_credentials() is None:
            raise InputError(
                "no AWS credentials found: set AWS_PROFILE or AWS_ACCESS_KEY_ID, or run `aws configure`"
            )

    def cost_estimate(self, count: int, timeout: Optional[float]) -> Optional[CostEstimate]:
        """At most `count` instances flat out for the whole timeout (an hour without one), with
        their CPU surplus credits and public IPv4 addresses."""
        from ..cost import PRICE_SOURCE, FleetChoice, fleet_estimate, hourly_price, is_burstable

        if not self.choice.through_fleet:
            # Priced in the credit mode the launch asks for: launch_request makes every type that
            # is_burstable names unlimited, t2 included, so a t2 costs surplus too.
            credits = UNLIMITED if is_burstable(self.instance_type) else None
            return estimate(self.instance_type, count, timeout, credits)
        if not self.choice.spot:
            choices = [FleetChoice(t, hourly_price(t)) for t in self.choice.types]
            return fleet_estimate(choices, count, timeout, self.choice.label, PRICE_SOURCE)
        pools, prices = self.spot_market()
        choices = [
            FleetChoice(p.instance_type, prices.get((p.instance_type, p.zone), hourly_price(p.instance_type)), p.zone)
            for p in pools
        ]
        unpriced = sorted({f"{p.instance_type} in {p.zone}" for p in pools if (p.instance_type, p.zone) not in prices})
        source = (
            f"spot: the current price of each of the fleet's {len(pools)} choices of type and zone, from "
            f"DescribeSpotPriceHistory in {self.region}; a spot price moves while the run goes, up to the on-demand price"
        )
        if unpriced:
            source += f"; no spot price for {', '.join(unpriced)}, so its on-demand price ({PRICE_SOURCE})"
        return fleet_estimate(choices, count, timeout, self.choice.label, source)

    def spot_market(self) -> Tuple[List[Pool], Dict[Tuple[str, str], float]]:
        """Where the fleet may launch (the default VPC's zones that offer its types), and the
        current spot price of each, looked up once. Raises ProviderError, one line."""
        if self._pools is None or self._spot_prices is None:
            aws = self.in_region(self.region)
            action = "finding the zones that offer the instance types"
            try:
                pools = aws.offered_pools(aws.default_vpc(), self.choice.types)
                action = "reading the spot prices"
                self._spot_prices = aws.spot_prices(pools) if self.choice.spot else {}
                self._pools = pools
            except AWS_ERRORS as error:
                raise ProviderError(explain(error, action, self.region, ", ".join(self.choice.types))) from None
        return self._pools, self._spot_prices

    def latest_ami(self) -> str:
        """The current AMI from its public SSM parameter."""
        try:
            answer = self.client("ssm").get_parameter(Name=self.ami_parameter)
        except AWS_ERRORS as error:
            raise ProviderError(explain(error, f"looking up the AMI in SSM {self.ami_parameter}", self.region)) from None
        return str(answer["Parameter"]["Value"])

    # --- launch ------------------------------------------------------------------------
    def launch(self, count: int, journal: RunJournal) -> List[Host]:
        """Create the key pair, the group and `count` instances, and wait until they run."""
        region = self.region
        journal.details.update(region=region, instance_type=self.instance_type)
        minutes = dead_man_minutes(self.options.timeout)
        cidr = ssh_range(self.ssh_cidr or address_lookup())
        ami = self.ami or self.latest_ami()
        self._launch = RunLaunch(self.in_region(region), journal)
        launched = self._launch.create(count, self.choice, ami, cidr, minutes, self.options.min_count, self._pools)
        if self._launch.shortfall:
            self.notice(self._launch.shortfall, journal)
        hosts = launched.ssh_hosts(journal, endpoint_resolver, self.ssh_deadline, self.options.warn)
        threading.Thread(target=self._keep_alive, args=(hosts,), daemon=True).start()
        return hosts

    @property
    def instance_ids(self) -> List[str]:
        """The instances this provider launched, once RunInstances has answered."""
        return self._launch.instance_ids if self._launch else []

    def _keep_alive(self, hosts: Sequence[Host]) -> None:
        """While this controller lives: push every instance's scheduled shutdown further out, and
        renew the run's alive-until tag (and expires-at where the shutdown moved). A failure is
        shown and kept in the run's journal and record, never passed over."""
        while not self._keepalive_stop.wait(KEEPALIVE_SECONDS):
            minutes = dead_man_minutes(self.options.timeout)
            pushed: List[str] = []
            for host in hosts:
                # A lost host's connection is gone: the fleet has reported it, and release ends it.
                if isinstance(host, SshHost) and host.connection is not None:
                    try:
                        host.run_command(f"sudo -n shutdown -P +{int(minutes)}", timeout=15)
                    except Exception as error:  # whatever it is, it is reported and the others go on
                        if self._keepalive_stop.is_set():
                            return  # the run is ending: release is closing these connections
                        self._keep_alive_failed(
                            f"could not push {host.name}'s shutdown out ({error}); it ends itself by its "
                            f"{EXPIRES_TAG} tag"
                        )
                        continue
                    pushed.append(host.name)
            self._renew_tags(pushed, minutes)

    def _renew_tags(self, pushed: Sequence[str], minutes: int) -> None:
        """alive-until on every instance of the run; expires-at on those whose shutdown moved."""
        launch = self._launch
        if launch is None or not launch.instance_ids or self._keepalive_stop.is_set():
            return
        renewals = [
            (list(launch.instance_ids), ALIVE_TAG, tag_time(ALIVE_MINUTES * 60)),
            (list(pushed), EXPIRES_TAG, tag_time(minutes * 60)),
        ]
        for ids, key, value in renewals:
            if not ids:
                continue
            try:
                launch.aws.renew_tags(ids, [{"Key": key, "Value": value}])
            except AWS_ERRORS as error:
                if self._keepalive_stop.is_set():
                    return  # the run is ending: its instances are being terminated
                self._keep_alive_failed(
                    explain(error, f"renewing the {key} tag", launch.aws.region)
                    + (f"; a teardown elsewhere may take this run once {ALIVE_TAG} passes" if key == ALIVE_TAG else "")
                )

    def _keep_alive_failed(self, why: str) -> None:
        self.notice(f"keep-alive: {why}", self._launch.journal if self._launch else None)

    # --- the end -----------------------------------------------------------------------
    def release(self, hosts: List[Host], journal: RunJournal) -> List[Released]:
        """Stop the workers, terminate the instances, delete the group and key pair. Never raises
        for AWS: what could not be removed comes back failed, with AWS's reason."""
        self._keepalive_stop.set()
        unconfirmed = ssh.stop_all(hosts)
        results: List[Released] = []
        # launch records the region before it creates anything: without one there is nothing.
        fresh = fresh_instances(journal, time.time())
        for region, known in run_regions(journal).items():
            results += self.in_region(region).remove(journal.run_id, known, fresh=fresh)
        self.terminated_at = time.time()
        cost = self.incurred_cost()
        if cost is not None:
            journal.details["cost_usd"] = round(cost, 6)
        # A worker whose stop went unconfirmed dies with its instance: it matters only when
        # the instance may still be running.
        terminated = {r.resource for r in results if r.done}
        if any(r.failed for r in results):
            results += [
                Released(f"worker on {host}", False, why)
                for host, why in unconfirmed.items()
                if instance_resource(host) not in terminated
            ]
        return results

    def incurred_cost(self) -> Optional[float]:
        """Every instance from launch to termination: its billed seconds (at least a minute), its
        surplus credits at 100% CPU and its public IPv4 address, at the built-in prices."""
        from ..cost import is_burstable

        launch = self._launch
        if launch is None or launch.launched_at is None:
            return None
        seconds = (self.terminated_at or time.time()) - launch.launched_at
        # An instance that never came to run (the launch failed on the way) is priced as the
        # fleet's first type, on-demand: it was billed for a minute at most.
        unplaced = LaunchedInstance(self.choice.types[0], "", False)
        total = 0.0
        for instance_id in self.instance_ids:
            placed = launch.placed.get(instance_id, unplaced)
            credits = UNLIMITED if is_burstable(placed.instance_type) else None  # as cost_estimate
            spot_price = (self._spot_prices or {}).get((placed.instance_type, placed.zone)) if placed.spot else None
            cost = incurred(placed.instance_type, 1, seconds, credits, spot_price)
            if cost is None:
                return None
            total += cost
        return total

    def remove(self, leftover: Leftover, dry_run: bool = False) -> List[Released]:
        """Remove a run's instances (by tag and from its journal), group and key pair in every
        region its journal names."""
        regions = run_regions(leftover.journal, leftover.region)
        if not regions:
            try:
                regions = {self.region: []}
            except InputError as error:
                return [Released(f"ec2 resources of {leftover.run_id}", False, str(error))]
        fresh = fresh_instances(leftover.journal, time.time())
        results: List[Released] = []
        for region, known in regions.items():
            results += self.in_region(region).remove(leftover.run_id, known, dry_run=dry_run, fresh=fresh)
        return results

    def leftovers(self, journals: List[RunJournal], expired_only: bool = False) -> List[Leftover]:
        """Every run with live tagged instances in the searched regions; expired when every one
        of its instances is (its alive-until, or lacking one its expires-at, has passed); only
        the expired runs if asked. Raises ProviderError, one line, when AWS cannot be asked."""
        now = time.strftime(TAG_TIME_FORMAT, time.gmtime())
        runs: Dict[Tuple[str, str], List[TaggedInstance]] = {}
        for region in searched_regions(journals, self.region_setting):
            for instance in self._tagged(region):
                runs.setdefault((instance.run_id, region), []).append(instance)
        found: List[Leftover] = []
        for (run_id, region), instances in runs.items():
            expired = all(instance.expired(now) for instance in instances)
            if expired or not expired_only:
                found.append(Leftover.found(run_id, self.name, region, expired, _liveness(instances)))
        return found

    def live_resources(self, journals: List[RunJournal]) -> List[LiveResource]:
        """Every live tagged instance in the searched regions, for `fab status`."""
        return [
            LiveResource(
                self.name, i.instance_id, i.state, i.run_id,
                f"{i.instance_type}, alive until {i.alive_until or 'not renewed'}, expires {i.expires_at or 'never'}",
            )
            for region in searched_regions(journals, self.region_setting)
            for i in self._tagged(region)
        ]

    def _tagged(self, region: str) -> List[TaggedInstance]:
        try:
            return self.in_region(region).tagged_instances()
        except AWS_ERRORS as error:
            raise ProviderError(explain(error, "searching for cnd-fab instances by tag", region)) from None


def _liveness(instances: Sequence[TaggedInstance]) -> str:
    """Why a run with these instances looks alive, for a person."""
    alive_until = max(i.alive_until for i in instances)
    if alive_until:
        return f"its {ALIVE_TAG} tag is {alive_until}, still ahead"
    expires_at = max(i.expires_at for i in instances)
    if expires_at:
        return f"it has no {ALIVE_TAG} tag and its {EXPIRES_TAG} tag is {expires_at}, still ahead"
    return f"its instances carry neither {ALIVE_TAG} nor {EXPIRES_TAG}"
