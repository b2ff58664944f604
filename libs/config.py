"""Settings for every xpumesh process.

One ``Settings`` object, read from ``XPUMESH_*`` environment variables (nested groups use
``__``, e.g. ``XPUMESH_EMBEDDED__NATS_PORT``). The prefix is ``XPUMESH_`` and never
``XPU_``: Kunlunxin runtimes read ``XPU_*`` variables such as ``XPU_VISIBLE_DEVICES``.

Every field has a default and a description; the README's configuration table is
generated from this module (``xpumesh config --markdown``).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from libs.schemas.inventory import check_labels

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


class EmbeddedSettings(BaseModel):
    """The embedded runtime started when no external URL is configured."""

    nats_port: int = Field(default=4222, ge=0, le=65535, description="Port of the embedded nats-server (0 picks a free one).")
    nats_monitor_port: int = Field(default=0, ge=0, le=65535, description="HTTP monitoring port of the embedded nats-server (0 disables).")
    postgres_port: int = Field(default=55432, ge=0, le=65535, description="Port of the embedded PostgreSQL (0 picks a free one).")
    start_timeout_s: float = Field(default=30.0, gt=0, description="How long to wait for an embedded server to accept connections.")
    nats_host: str = Field(default="127.0.0.1", description="Interface the embedded nats-server listens on; 0.0.0.0 (or this machine's address) lets enrolled hosts elsewhere join (its certificate then also names this machine's hostname).")
    nats_secure: bool = Field(default=True, description="Run the embedded nats-server with TLS and per-role credentials (generated under the data dir at first start). Turn off only for a throwaway experiment on a machine you alone use.")


class BusSettings(BaseModel):
    """NATS and JetStream behaviour."""

    request_timeout_s: float = Field(default=5.0, gt=0, description="Default timeout of a request/reply call between services.")
    connect_timeout_s: float = Field(default=5.0, gt=0, description="Timeout of one NATS connection attempt.")
    max_reconnect_attempts: int = Field(default=-1, description="Reconnect attempts after a lost connection (-1: forever).")
    events_max_age_s: int = Field(default=7 * 24 * 3600, gt=0, description="Retention of the durable event stream.")
    telemetry_max_age_s: int = Field(default=15 * 60, gt=0, description="Retention of the telemetry stream.")
    hosts_max_age_s: int = Field(default=24 * 3600, gt=0, description="Retention of the host capability/state stream.")
    duplicate_window_s: int = Field(default=120, gt=0, description="JetStream de-duplication window for Nats-Msg-Id.")
    drain_timeout_s: float = Field(default=2.0, gt=0, description="How long shutdown waits for in-flight messages.")
    max_pending_messages: int = Field(default=65536, gt=0, description="Bound of each subscription's pending-message buffer.")
    creds_file: Path | None = Field(default=None, description="NATS credentials (.creds: user JWT and NKey seed) this process connects with; `xpumesh up` sets one per process, `xpumesh agent enroll` writes a host's.")
    tls_ca_file: Path | None = Field(default=None, description="CA bundle that verifies the NATS server's certificate (unset with a tls:// URL: the system's CAs).")
    max_report_skew_s: float = Field(default=300.0, gt=0, description="Agents' reports whose time (or capability generation, epoch ms) is further than this ahead of the receiver's clock are refused (and counted).")
    redelivery_base_s: float = Field(default=1.0, gt=0, description="A message whose handler failed is redelivered after this long, doubling with every further failure…")
    redelivery_max_s: float = Field(default=30.0, gt=0, description="…up to this long between two deliveries; consumers of events that must not be lost retry without a cap on deliveries.")
    replicas: int = Field(default=1, ge=1, le=5, description="JetStream replicas of every stream and of the lease bucket (3 on a 3-node NATS cluster: any one node may be lost); applied when a stream is created or updated, the lease bucket's only when it is first created.")
    stuck_deliveries: int = Field(default=10, ge=2, description="A message delivered this many times without success is counted stuck (xpumesh_bus_stuck_messages) and logged as an error, while it is still retried.")


class EnrollmentSettings(BaseModel):
    """Host enrollment: single-use tokens exchanged for a host's own NATS credentials (gateway)."""

    trust_dir: Path | None = Field(default=None, description="Trust directory of the mesh's NATS operator (`xpumesh nats init`, or `<data dir>/secrets/trust` under `xpumesh up`); unset: enrollment is off (404).")
    agent_nats_url: str | None = Field(default=None, description="NATS URL(s) an enrolled agent is told to connect to (default: this gateway's own XPUMESH_NATS_URL).")
    agent_ca_file: Path | None = Field(default=None, description="CA certificate handed to enrolled agents to verify the NATS server (default: XPUMESH_BUS__TLS_CA_FILE).")
    token_ttl_s: float = Field(default=900.0, gt=0, le=7 * 86400, description="Default lifetime of an enrollment token (an admin may ask for less, or up to the maximum).")
    max_token_ttl_s: float = Field(default=86400.0, gt=0, description="Longest lifetime an admin may give an enrollment token.")
    credential_ttl_days: float = Field(default=365.0, gt=0, description="Lifetime of an enrolled host's NATS credentials; re-enroll to rotate them before they expire.")
    push_timeout_s: float = Field(default=5.0, gt=0, description="Timeout of pushing a revocation to the NATS server.")
    revocation_resync_s: float = Field(default=60.0, gt=0, description="How often the gateway pushes the whole revocation list to the NATS server again (a restarted server learns it back).")


class ElectionSettings(BaseModel):
    """Leases of the singleton services (registry, scheduler, metrics): one instance acts, the others stand by."""

    ttl_s: float = Field(default=3.0, gt=0, description="How long a lease lives after its last renewal: a dead leader's standby takes over within this plus campaign_s and its state load (the KV bucket's max age; fixed when the bucket is first created).")
    renew_s: float = Field(default=1.0, gt=0, description="How often the leader renews its lease.")
    claim_wait_s: float = Field(default=1.0, gt=0, description="How long a new leader waits for its predecessor's open transactions to end when it claims the fence; then it terminates their database sessions (a paused or cut-off predecessor), which rolls them back.")
    campaign_s: float = Field(default=0.2, gt=0, description="How often a standby tries to take the lease (one KV create that fails while it is held), so it takes over this soon after the lease expired.")
    unreachable_s: float = Field(default=30.0, gt=0, description="How long a leader goes on acting while its lease renewals get no answer (the lease bucket's stream elects a new leader after a NATS node died; no standby can take the lease then either) before it stands down; a renewal refused because the lease changed deposes it at once, and the fence keeps a cut-off leader from committing after a successor.")

    @model_validator(mode="after")
    def _renew_within_ttl(self) -> ElectionSettings:
        if self.renew_s * 2 > self.ttl_s:
            raise ValueError("election.renew_s must be at most half of election.ttl_s")
        return self


class DatabaseSettings(BaseModel):
    """PostgreSQL pool behaviour."""

    pool_size: int = Field(default=5, gt=0, description="Connections kept per process.")
    max_overflow: int = Field(default=5, ge=0, description="Extra connections allowed under burst.")
    connect_timeout_s: float = Field(default=10.0, gt=0, description="Timeout of one connection attempt.")
    wait_timeout_s: float = Field(default=60.0, gt=0, description="How long prestart waits for the database to accept connections.")


class RegistrySettings(BaseModel):
    """Membership and liveness."""

    missed_heartbeats: int = Field(default=3, ge=1, description="Heartbeats a member may miss before it is marked down.")
    sweep_interval_s: float = Field(default=0.5, gt=0, description="How often the registry checks for silent members.")
    flush_interval_s: float = Field(default=2.0, gt=0, description="How often last-seen times are written to PostgreSQL.")
    max_interval_s: float = Field(default=60.0, gt=0, description="Heartbeats announcing a longer interval are refused (and counted): a member is down after missing its own intervals.")
    max_members: int = Field(default=100_000, ge=1, description="Most members (hosts and service instances, up or down) the registry keeps; heartbeats of new members beyond it are refused (and counted).")
    endpoint_push_interval_s: float = Field(default=0.5, gt=0, description="How often endpoint changes the registry heard of are pushed to Consul (in one batch).")
    endpoint_resync_s: float = Field(default=30.0, gt=0, description="How often the registry re-reads every service endpoint from the scheduler (it follows their changes between), to mirror them into Consul when consul_url is set.")


class AlertSettings(BaseModel):
    """Alert rules evaluated by the metrics service; each fires and resolves as an event."""

    enabled: bool = Field(default=True, description="Evaluate alert rules at all.")
    eval_interval_s: float = Field(default=1.0, gt=0, description="How often the rules are evaluated.")
    temperature_c: float = Field(default=85.0, description="A device hotter than this fires device_hot.")
    temperature_clear_c: float = Field(default=80.0, description="device_hot resolves when the device is at or below this.")
    site_utilization_pct: float = Field(default=90.0, ge=0, le=100, description="A site's mean device utilisation above this…")
    site_utilization_for_s: float = Field(default=300.0, ge=0, description="…for this long fires site_utilization_high.")
    telemetry_missing_intervals: float = Field(default=3.0, gt=0, description="A host silent for this many telemetry intervals fires telemetry_missing.")


class MetricsSettings(BaseModel):
    """Telemetry storage, rollups, city summaries, alerts and the Prometheus endpoint."""

    raw_partition_hours: int = Field(default=1, ge=1, le=24 * 7, description="Width of one raw-sample partition.")
    raw_retention_hours: int = Field(default=24, ge=1, description="Raw samples older than this are dropped (whole partitions).")
    rollup_1m_retention_days: int = Field(default=7, ge=1, description="Retention of the 1-minute rollups (daily partitions).")
    rollup_1h_retention_days: int = Field(default=400, ge=1, description="Retention of the 1-hour rollups (30-day partitions).")
    partitions_ahead: int = Field(default=3, ge=1, le=48, description="Partitions created ahead of time, per table.")
    maintenance_interval_s: float = Field(default=300.0, gt=0, description="How often partitions are created ahead and dropped past retention.")
    max_sample_age_s: float = Field(default=3600.0, gt=0, description="Samples older than this on arrival are dropped (and counted).")
    max_clock_skew_s: float = Field(default=300.0, gt=0, description="Samples further than this in the future are dropped (and counted).")
    rollup_grace_s: float = Field(default=10.0, ge=0, description="A minute's rollup is written this long after the minute ends.")
    rollup_flush_interval_s: float = Field(default=2.0, gt=0, description="How often closed rollup buckets are written.")
    raw_series_max_s: float = Field(default=3600.0, gt=0, description="Longest window a device series may read from raw samples (steps under a minute).")
    series_max_points: int = Field(default=2000, ge=10, description="Most points one series query may return.")
    summary_cache_s: float = Field(default=1.0, ge=0, description="How long a computed city summary is reused.")
    scrape_window_s: float = Field(default=0.5, gt=0, description="How long /metrics waits for every service's own metrics.")
    scrape_cache_s: float = Field(default=2.0, ge=0, description="How long the per-device part of /metrics is reused.")
    max_workloads: int = Field(default=200_000, ge=1, description="Bound of the workloads tracked for allocation counts.")
    ingest_linger_s: float = Field(default=0.1, ge=0, le=5, description="Least time between two telemetry commits: batches grow under load instead of commits multiplying.")
    alerts: AlertSettings = Field(default_factory=AlertSettings, description="Alert rules.")


class InventorySettings(BaseModel):
    """The inventory service."""

    sites_file: Path | None = Field(default=None, description="YAML of sites and site links seeded at prestart (unset: the built-in Zhejiang demo, 11 cities).")
    catalog_refresh_s: float = Field(default=30.0, gt=0, description="How often each inventory instance reloads the catalog from PostgreSQL.")
    telemetry_max_age_s: float = Field(default=300.0, gt=0, description="Telemetry older than this on arrival is dropped (and counted).")


class AgentSettings(BaseModel):
    """The host agent: discovery, and running the work the scheduler sends."""

    rediscover_interval_s: float = Field(default=60.0, gt=0, description="How often the agent re-runs discovery to notice hardware, driver or health changes.")
    probe_timeout_s: float = Field(default=10.0, gt=0, description="Timeout of one vendor tool run during discovery.")
    state_interval_s: float = Field(default=10.0, gt=0, description="How often the agent reports what actually runs (it also reports on every change).")
    capability_resend_s: float = Field(default=300.0, gt=0, description="How often the agent (and each simulated host) sends its last capability report again, unchanged, for any consumer that lost it; it is also sent again, with a state report, after every reconnect to NATS.")
    stop_grace_s: float = Field(default=10.0, ge=0, description="How long a stopped process may take after SIGTERM before SIGKILL.")
    log_max_bytes: int = Field(default=1024 * 1024, ge=1024, description="Output kept per replica (older output is rotated away).")
    finished_keep: int = Field(default=256, ge=1, description="Finished replicas the agent remembers (for logs and exit codes).")
    replica_uid_start: int = Field(default=2_100_000_000, ge=1, le=4_294_967_294, description="First uid of the range replicas run under, one uid per live replica (the agent must be root; no real user may own a uid of the range).")
    replica_uid_count: int = Field(default=4096, ge=1, le=1_000_000, description="How many uids the range holds: the most replicas one host runs at once.")
    replica_groups: list[str] = Field(default=["video", "render"], description="Host groups a replica's uid also gets, for device nodes only a group may open (AMD's /dev/kfd and /dev/dri); names this host lacks are skipped.")
    reserved_cpus: int = Field(default=1, ge=0, description="Logical CPUs kept for the system and the agent: the host reports its usable CPUs less these as allocatable, and replicas never get them.")
    reserved_memory_gib: float = Field(default=2.0, ge=0, description="Host memory (GiB) kept for the system and the agent: the host reports its memory less this as allocatable.")
    replica_cgroup_parent: Path | None = Field(default=Path("/sys/fs/cgroup/xpumesh.slice"), description="Cgroup v2 directory under which each replica gets its own cgroup (skipped, with a log line, where cgroup v2 is not writable; unset: none).")
    mps_pipe_directory: Path | None = Field(default=None, description="The NVIDIA MPS control daemon's pipe directory (its CUDA_MPS_PIPE_DIRECTORY; NVIDIA's default is /tmp/nvidia-mps). Set, and the daemon's 'control' pipe there, a replica with a share of a GPU gets CUDA_MPS_ACTIVE_THREAD_PERCENTAGE and CUDA_MPS_PINNED_DEVICE_MEM_LIMIT from its share. Unset: MPS is not used.")
    hami_core_library: Path | None = Field(default=Path("/usr/local/vgpu/libvgpu.so"), description="HAMi-core's libvgpu.so (where HAMi's device plugin puts it). Present (and no MPS daemon), a replica with a share of a GPU runs with it in LD_PRELOAD and CUDA_DEVICE_MEMORY_LIMIT_<i>/CUDA_DEVICE_SM_LIMIT from its share. Unset or absent: not used.")
    ascend_vnpu: bool = Field(default=False, description="The Ascend Docker Runtime is docker's runtime here, with dynamic vNPUs (vNPU restore off): a containerised replica with a share of an Ascend310P or Ascend910 chip gets the smallest vNPU template with its share of the AI cores (ASCEND_VNPU_SPECS). Off: Ascend shares are advisory.")
    service_address: str = Field(default="127.0.0.1", description="Address of this host that the gateway reaches its service replicas on; each replica gets a free port on it (passed as PORT and XPUMESH_PORT, with XPUMESH_HOST_ADDRESS).")
    readiness_interval_s: float = Field(default=1.0, gt=0, description="How often the agent probes each service replica's readiness path.")
    readiness_timeout_s: float = Field(default=1.0, gt=0, description="Timeout of one readiness probe; a probe that times out or answers 4xx/5xx makes the replica not ready.")
    stop_replicas_on_exit: bool = Field(default=False, description="Stop every replica when the agent stops (the demo's local host, so nothing outlives 'xpumesh up'); by default replicas run on and a restarted agent adopts them.")
    cpu_allocation_ratio: float = Field(default=1.0, ge=1.0, le=32.0, description="How many CPU-only replica CPUs each allocatable logical CPU may carry (OpenStack Nova's cpu_allocation_ratio): the host reports its allocatable CPUs times this. Above 1 replicas share CPUs and none is pinned; the demo's local host sets 16 so a small machine runs a service's several replicas.")
    labels: dict[str, str] = Field(default_factory=dict, description="Operator labels of this host, added to the ones discovery derives (arch, numa-nodes, <vendor>.driver…) and overriding a derived one of the same name; workloads select hosts by them with placement.host_labels. The demo's local host has pool=local.")

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        return check_labels(v)


class SimSettings(BaseModel):
    """The fleet simulator (``xpumesh sim``); its hosts run work with the agent's settings."""

    device_fault_per_hour: float = Field(default=0.01, ge=0, description="Chance per simulated device per hour of turning unhealthy.")
    device_repair_s: float = Field(default=300.0, gt=0, description="How long a random device fault lasts.")
    host_loss_per_hour: float = Field(default=0.005, ge=0, description="Chance per simulated host per hour of going silent.")
    host_return_s: float = Field(default=120.0, gt=0, description="How long a randomly lost host stays silent.")
    day_s: float = Field(default=86400.0, gt=0, description="Length of one simulated day of diurnal load (shorter: faster cycles).")
    publish_timeout_s: float = Field(default=5.0, gt=0, description="How long one batch of capability publishes may wait for JetStream.")
    responder_host: str = Field(default="127.0.0.1", description="Address of the simulator's HTTP responder, which answers requests to every simulated service replica (the gateway must reach it).")
    responder_port: int = Field(default=0, ge=0, le=65535, description="Port of that responder (0: a free one).")


class GatewaySettings(BaseModel):
    """The REST API: keys, rate limits, idempotency, webhooks and event streaming."""

    key_cache_s: float = Field(default=5.0, ge=0, description="How long a verified API key is trusted before it is looked up again (a revocation elsewhere takes effect within this).")
    rate_per_s: float = Field(default=50.0, gt=0, description="Requests per second each API key may make on average (token bucket refill rate).")
    rate_burst: int = Field(default=200, ge=1, description="Requests each API key may make at once (token bucket size).")
    login_rate_per_s: float = Field(default=1.0, gt=0, description="Requests without a valid API key (missing, malformed or unknown) each client address may make per second on average before it gets 429s; checked before any key lookup.")
    login_burst: int = Field(default=30, ge=1, description="Requests without a valid API key each client address may make at once (token bucket size).")
    login_tracked_addresses: int = Field(default=100_000, ge=1, description="Most client addresses (IPv6 by /64) whose attempts without a valid key are tracked at once; the least recently seen is forgotten first.")
    trusted_proxies: list[str] = Field(default_factory=list, description="Addresses or networks (CIDR) of reverse proxies whose X-Forwarded-For names the client; by default the TCP peer is the client and X-Forwarded-For is ignored.")
    max_priority_user: int = Field(default=500, ge=100, le=1000, description="Highest workload priority a user key may submit (above it the submit is a 403); at least 100, the default priority, so a submit that sets none always passes.")
    max_priority_operator: int = Field(default=900, ge=100, le=1000, description="Highest workload priority an operator key may submit.")
    max_priority_admin: int = Field(default=1000, ge=100, le=1000, description="Highest workload priority an admin key may submit.")
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024, description="Largest request body accepted, chunked or not.")
    batch_submit_timeout_s: float = Field(default=30.0, gt=0, description="How long POST /v1/workloads/batch waits for the scheduler to check and store a batch (up to 1,000 workloads in one transaction).")
    submit_timeout_s: float = Field(default=20.0, gt=0, description="How long POST /v1/workloads keeps asking the scheduler while no instance answers (a leader change: no responders, a timed-out attempt, a deposed leader's 503), retrying with back-off before it answers 503; every attempt carries the same idempotency key, so a retry never creates a second workload.")
    submit_attempt_s: float = Field(default=2.0, gt=0, description="How long one attempt of POST /v1/workloads waits for the scheduler's answer before it asks again: a request lost with a NATS node (or a leader that died holding it) costs this much, not bus.request_timeout_s.")
    idempotency_ttl_s: float = Field(default=24 * 3600.0, gt=0, description="How long a stored Idempotency-Key response is replayed.")
    read_cache_s: float = Field(default=1.0, ge=0, description="How long hot list reads (devices, hosts) are served from the gateway's cache (0 disables).")
    read_cache_entries: int = Field(default=1024, ge=1, description="Most distinct reads kept in that cache.")
    webhook_timeout_s: float = Field(default=10.0, gt=0, description="Deadline of one whole webhook delivery attempt (connect, send, read the answer); its lease is this plus 5 s, so it ends before another worker may take the delivery.")
    webhook_max_response_bytes: int = Field(default=4096, ge=0, description="Most bytes of a webhook target's answer read (the status decides; the rest is dropped with the connection).")
    webhook_tenant_concurrency: int = Field(default=8, ge=1, description="Webhook deliveries of one tenant in flight at once, over every gateway instance, so one tenant's slow targets cannot take every slot.")
    webhook_retry_schedule_s: list[float] = Field(default=[5, 30, 120, 600, 1800, 3600, 7200, 14400, 28800, 43200], description="Delays before each retry of a failed webhook delivery (about 27.7 h in all; +/- 20 % jitter); after the last the delivery is dead-lettered.")
    webhook_concurrency: int = Field(default=32, ge=1, description="Webhook deliveries in flight at once per gateway instance.")
    webhook_ack_wait_s: float = Field(default=10.0, gt=0, description="How long an event taken from a subscription's JetStream consumer may stay unrecorded before JetStream hands it out again (after a crash).")
    webhook_poll_s: float = Field(default=0.5, gt=0, description="How often due webhook retries are looked for.")
    webhook_allow_hosts: list[str] = Field(default_factory=list, description="Host patterns (fnmatch, e.g. 127.0.0.1 or *.internal) that webhook targets may use even when they resolve to loopback, link-local or private addresses.")
    webhook_keep_days: float = Field(default=7.0, gt=0, description="Finished deliveries older than this are pruned.")
    max_subscriptions_per_tenant: int = Field(default=100, ge=1, description="Most event subscriptions one tenant may hold.")
    sync_interval_s: float = Field(default=5.0, gt=0, description="How often each gateway instance reconciles its subscription consumers with the database.")
    sse_heartbeat_s: float = Field(default=15.0, gt=0, description="Interval of SSE keep-alive comments.")
    sse_buffer: int = Field(default=256, ge=1, description="Events buffered per SSE client; a slower client is paused, never fed unbounded memory.")
    tls_cert_file: Path | None = Field(default=None, description="Certificate (PEM, with its chain) the gateway serves HTTPS with; unset: plain HTTP (put a TLS-terminating proxy in front beyond loopback).")
    tls_key_file: Path | None = Field(default=None, description="Private key of that certificate.")
    sse_max_clients: int = Field(default=1000, ge=1, description="Concurrent SSE clients per gateway instance.")
    endpoint_connect_timeout_s: float = Field(default=2.0, gt=0, description="How long the gateway waits to connect to a service replica behind /v1/endpoints/ (a failed connect is retried on another ready replica).")
    endpoint_request_timeout_s: float = Field(default=60.0, gt=0, description="How long a request through /v1/endpoints/ may wait for the replica's response headers (then 504).")
    endpoint_idle_timeout_s: float = Field(default=30.0, gt=0, description="Longest silence between two chunks of a streamed request or response through /v1/endpoints/ (SSE and chunked streams may run longer than the request timeout while they keep moving).")
    endpoint_retries: int = Field(default=2, ge=0, le=16, description="Other ready replicas a request through /v1/endpoints/ is tried on when connecting to one fails (nothing was sent yet, so any method is retried), or when an idempotent request without a body (GET, HEAD, OPTIONS, PUT, DELETE) loses its connection before the response headers.")
    endpoint_max_connections: int = Field(default=1000, ge=1, description="Connections to service replicas one gateway instance holds at once (beyond them requests wait for one, within the connect timeout).")
    endpoint_client_shards: int = Field(default=16, ge=1, le=256, description="httpx clients the gateway spreads its connections to service replicas over, taken in turn (each pool's bookkeeping grows with the connections it holds).")
    endpoint_retry_after_s: int = Field(default=2, ge=1, description="Retry-After of the 503 answered when a service has no ready replica.")
    endpoint_load_sample_s: float = Field(default=0.25, gt=0, description="How often each gateway instance samples its requests in flight per service (for autoscaling).")
    endpoint_load_interval_s: float = Field(default=2.0, gt=0, description="How often each gateway instance reports its mean requests in flight per service to the scheduler's autoscaler.")
    endpoint_stats_window_s: float = Field(default=60.0, ge=1, le=3600, description="The window GET /v1/endpoint-stats reports each endpoint's request rate, errors and latency quantiles over (each gateway instance keeps its own, one slot per second).")
    endpoint_resync_s: float = Field(default=60.0, gt=0, description="How often each gateway instance reads every service's ready replicas from the scheduler again (it follows endpoint.changed events in between; this bounds what a missed event could leave stale).")


class SchedulerSettings(BaseModel):
    """The scheduler: placement, lifecycle, reconciliation."""

    batch_debounce_s: float = Field(default=0.1, ge=0, description="How long placement waits after new work, freed capacity or a lost host before it places a batch.")
    batch_max: int = Field(default=500, ge=1, description="Most pending workloads placed in one batch (oldest first by priority).")
    retry_interval_s: float = Field(default=5.0, gt=0, description="How often still-pending work is placed again when nothing else wakes the scheduler.")
    solver_time_limit_s: float = Field(default=1.0, ge=0, description="Wall-clock budget of one placement call (0: greedy only).")
    max_candidates: int = Field(default=64, ge=1, description="Placement options kept per replica for the solver.")
    resend_after_s: float = Field(default=5.0, gt=0, description="A launch the agent has not acknowledged in its state reports for this long is sent again.")
    orphan_stop_interval_s: float = Field(default=5.0, gt=0, description="How often a stop is re-sent for work an agent runs but nobody wants.")
    inventory_timeout_s: float = Field(default=2.0, gt=0, description="Timeout of the scheduler's requests to the inventory (catalog, rules, site links).")
    reference_refresh_s: float = Field(default=60.0, gt=0, description="How often the catalog, rules and site links are asked of the inventory again, and tenant quotas re-read from the database.")
    decision_keep_days: float = Field(default=7.0, gt=0, description="Placement decisions older than this are pruned.")
    history_limit: int = Field(default=200, ge=1, description="Most history entries a workload's detail returns (newest).")
    logs_timeout_s: float = Field(default=3.0, gt=0, description="How long a log request waits for the agent.")
    command_ttl_s: float = Field(default=600.0, gt=0, description="Agent: a command older than this on arrival is dropped (the scheduler re-sends what is still wanted).")
    state_replay_timeout_s: float = Field(default=10.0, gt=0, description="How long a starting scheduler reads hosts' latest state reports back from JetStream before it places anything (what agents run survives a restart).")
    lost_sweep_interval_s: float = Field(default=10.0, gt=0, description="How often work is looked for on hosts the registry or the scheduler holds down, and on unusable devices, and moved off (a safety net under host.down and device events).")
    autoscale_interval_s: float = Field(default=5.0, gt=0, description="How often services with min_replicas/max_replicas are sized to their requests in flight (the gateways' load reports).")
    autoscale_down_after_s: float = Field(default=60.0, ge=0, description="How long a service's load must call for fewer replicas before it is scaled down (more are added at once).")
    autoscale_load_max_age_s: float = Field(default=10.0, gt=0, description="Load reports older than this (a gateway instance gone) no longer count.")
    rollout_interval_s: float = Field(default=1.0, gt=0, description="How often rolling updates of services are looked at: a new service whose replicas are all ready takes over from the one it replaces.")
    rollout_drain_s: float = Field(default=2.0, ge=0, description="How long a replaced service stays out of rotation but running before it is stopped, so requests the gateways already sent it can finish.")


class Settings(BaseSettings):
    """Settings of every xpumesh process."""

    model_config = SettingsConfigDict(env_prefix="XPUMESH_", env_nested_delimiter="__", extra="ignore")

    nats_url: str | None = Field(default=None, description="NATS server URL(s), comma-separated. Unset: start an embedded nats-server.")
    database_url: SecretStr | None = Field(default=None, description="PostgreSQL URL (postgresql://user:pass@host:port/db). Unset: start an embedded PostgreSQL.")
    data_dir: Path = Field(default=Path(".xpumesh"), description="Where the embedded NATS and PostgreSQL keep their data.")
    gateway_host: str = Field(default="127.0.0.1", description="Interface the gateway's HTTP server binds.")
    gateway_port: int = Field(default=8080, ge=0, le=65535, description="Port of the REST API and dashboard.")
    metrics_port: int = Field(default=9464, ge=0, le=65535, description="Port of the metrics service's Prometheus /metrics endpoint.")
    heartbeat_interval_s: float = Field(default=5.0, gt=0, description="How often agents and services heartbeat to the registry.")
    telemetry_interval_s: float = Field(default=5.0, gt=0, description="How often agents publish telemetry.")
    log_level: LogLevel = Field(default="INFO", description="Log level of every process.")
    log_json: bool = Field(default=False, description="Write logs as JSON lines instead of text.")
    otlp_endpoint: str | None = Field(default=None, description="OTLP/HTTP endpoint for traces (e.g. http://otel:4318). Unset: traces are not exported.")
    consul_url: str | None = Field(default=None, description="Consul HTTP API URL. Set: services and agents are mirrored into Consul with TTL checks.")
    consul_token: SecretStr | None = Field(default=None, description="Consul ACL token.")
    site: str = Field(default="local", description="Site (city) of this host, for agents.")
    instance_id: str | None = Field(default=None, description="Instance id of this process (default: hostname-pid).")
    shutdown_timeout_s: float = Field(default=4.0, gt=0, description="How long a process may take to stop after SIGTERM.")
    bootstrap_admin_key: SecretStr | None = Field(default=None, description="The first admin API key. Unset: `xpumesh up` creates one and prints it once.")
    api_url: str = Field(default="http://127.0.0.1:8080", description="Gateway URL the API-client commands (submit, workloads, devices, events, keys) talk to.")
    api_key: SecretStr | None = Field(default=None, description="API key the API-client commands send.")

    embedded: EmbeddedSettings = Field(default_factory=EmbeddedSettings, description="The embedded runtime.")
    bus: BusSettings = Field(default_factory=BusSettings, description="NATS and JetStream.")
    db: DatabaseSettings = Field(default_factory=DatabaseSettings, description="PostgreSQL pools.")
    election: ElectionSettings = Field(default_factory=ElectionSettings, description="Leases of the singleton services.")
    registry: RegistrySettings = Field(default_factory=RegistrySettings, description="Membership and liveness.")
    metrics: MetricsSettings = Field(default_factory=MetricsSettings, description="Telemetry, rollups, alerts.")
    inventory: InventorySettings = Field(default_factory=InventorySettings, description="Inventory: sites, catalog, telemetry intake.")
    gateway: GatewaySettings = Field(default_factory=GatewaySettings, description="REST API, keys, webhooks, SSE.")
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings, description="Scheduler: placement and lifecycle.")
    agent: AgentSettings = Field(default_factory=AgentSettings, description="Host agent: discovery and execution.")
    sim: SimSettings = Field(default_factory=SimSettings, description="Fleet simulator.")
    enroll: EnrollmentSettings = Field(default_factory=EnrollmentSettings, description="Host enrollment and NATS credentials.")

    def database_dsn(self) -> str:
        """The configured database URL as plain text (only for connecting)."""
        if self.database_url is None:
            raise RuntimeError("XPUMESH_DATABASE_URL is not set and no embedded PostgreSQL was started")
        return self.database_url.get_secret_value()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def settings_table_markdown() -> str:
    """The README's configuration table, generated from the models above."""
    rows = ["| variable | default | description |", "|---|---|---|"]

    def walk(model: type[BaseModel], prefix: str, nested: str) -> None:
        for name, field in model.model_fields.items():
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, prefix, f"{nested}{name.upper()}__")
                continue
            default = field.get_default(call_default_factory=True)
            shown = "" if default is None else f"`{default}`"
            rows.append(f"| `{prefix}{nested}{name.upper()}` | {shown} | {field.description or ''} |")

    walk(Settings, "XPUMESH_", "")
    return "\n".join(rows)
