"""The API-client commands of ``xpumesh``: they talk to a gateway over HTTP like any other client.

    xpumesh submit spec.yaml
    xpumesh workloads [--watch]
    xpumesh devices --type npu --site hangzhou
    xpumesh events --follow --type 'io.xpumesh.workload.*'
    xpumesh keys create --tenant acme --role user | keys list | keys revoke KEY_ID

``--api-url``/``--api-key`` (or ``XPUMESH_API_URL``/``XPUMESH_API_KEY``) pick the gateway and
the key. Errors print the API's problem title and detail; exit codes: 0 ok, 1 the API
refused or failed, 2 bad input (arguments, spec file), 3 missing/invalid key or not allowed,
4 the API cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import yaml
from rich.console import Console
from rich.live import Live
from rich.table import Table

from libs.config import Settings
from libs.events import EVENT_TYPE_PREFIX

EXIT_OK, EXIT_API, EXIT_INPUT, EXIT_AUTH, EXIT_UNREACHABLE = 0, 1, 2, 3, 4
ROLES = ("admin", "operator", "user", "viewer")
HARDWARE_TYPES = ("cpu", "gpu", "npu", "dcu", "mlu", "xpu", "gcu", "fpga")


class CliError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class Api:
    """A thin HTTP client that turns problem+json answers into CliError."""

    def __init__(self, url: str, key: str | None, *, timeout: float = 30.0) -> None:
        if not key:
            raise CliError(EXIT_AUTH, "no API key: pass --api-key or set XPUMESH_API_KEY")
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, timeout=timeout,
                                 headers={"Authorization": f"Bearer {key}", "User-Agent": "xpumesh-cli"})

    def request(self, method: str, path: str, *, params: dict[str, Any] | None = None, body: Any = None,
                headers: dict[str, str] | None = None, retries: int = 0) -> Any:
        attempt = 0
        while True:
            try:
                r = self.http.request(method, path, params=_clean(params), json=body, headers=headers)
                break
            except httpx.TransportError as exc:
                if attempt >= retries:
                    raise CliError(EXIT_UNREACHABLE, f"cannot reach the API at {self.url} ({type(exc).__name__})") from None
                attempt += 1
                time.sleep(0.5 * attempt)
        if r.status_code >= 400:
            raise problem_error(r)
        return r.json() if r.content else None

    def pages(self, path: str, params: dict[str, Any], limit: int) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        cursor = None
        while len(items) < limit:
            page = self.request("GET", path, params={**params, "cursor": cursor, "limit": min(500, limit - len(items))})
            items += page.get("items", [])
            cursor = page.get("next_cursor")
            if not cursor:
                break
        return items

    def events(self, params: dict[str, Any], last_event_id: str | None) -> Iterator[tuple[str, dict[str, Any]]]:
        """(stream id, CloudEvent) pairs from GET /v1/events, until the stream ends."""
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        try:
            with self.http.stream("GET", "/v1/events", params=_clean(params), headers=headers,
                                  timeout=httpx.Timeout(30.0, read=None)) as r:
                if r.status_code >= 400:
                    r.read()
                    raise problem_error(r)
                fields: dict[str, str] = {}
                for line in r.iter_lines():
                    if line:
                        if not line.startswith(":"):
                            name, _, value = line.partition(":")
                            fields[name] = value.removeprefix(" ")
                        continue
                    if "data" in fields:
                        try:
                            yield fields.get("id", ""), json.loads(fields["data"])
                        except ValueError:
                            pass
                    fields = {}
        except httpx.TransportError as exc:
            raise CliError(EXIT_UNREACHABLE, f"the event stream from {self.url} broke ({type(exc).__name__})") from None


def _clean(params: dict[str, Any] | None) -> dict[str, Any] | None:
    return {k: v for k, v in params.items() if v is not None} if params else None


def problem_error(r: httpx.Response) -> CliError:
    try:
        body = r.json()
    except ValueError:
        body = {}
    title = body.get("title") if isinstance(body, dict) else None
    detail = body.get("detail") if isinstance(body, dict) else None
    message = f"{title or 'HTTP ' + str(r.status_code)}" + (f": {detail}" if detail else "")
    if isinstance(body, dict) and isinstance(body.get("errors"), list) and len(body["errors"]) > 1:
        message += "".join(f"\n  {e.get('loc', '')}: {e.get('msg', '')}" for e in body["errors"][:10])
    code = EXIT_AUTH if r.status_code in (401, 403) else EXIT_INPUT if r.status_code in (400, 409, 413, 415, 422) \
        else EXIT_API
    return CliError(code, message)


# --- output ---------------------------------------------------------------------------------
def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_cell(v)}" for k, v in value.items()) or "-"
    if isinstance(value, list):
        return ", ".join(_cell(v) for v in value) or "-"
    return str(value)


def table(rows: list[dict[str, Any]], columns: list[str], title: str | None = None) -> Table:
    present = [c for c in columns if any(c in r for r in rows)] or columns
    t = Table(title=title, header_style="bold")
    for c in present:
        t.add_column(c)
    for r in rows:
        t.add_row(*(_cell(r.get(c)) for c in present))
    return t


def emit(console: Console, args: argparse.Namespace, data: Any, rows: list[dict[str, Any]], columns: list[str],
         title: str | None = None) -> None:
    if args.json:
        console.print_json(json.dumps(data))
    else:
        console.print(table(rows, columns, title))


# --- commands -------------------------------------------------------------------------------
WORKLOAD_COLUMNS = ["id", "name", "tenant", "state", "replicas", "hardware", "sites", "created_at", "updated_at"]
DEVICE_COLUMNS = ["id", "site", "hardware_type", "vendor", "model", "compute_units", "memory_mib", "memory_free_mib",
                  "health", "host_status"]
KEY_COLUMNS = ["id", "prefix", "tenant", "role", "name", "created_at", "revoked_at"]


def _api(args: argparse.Namespace, settings: Settings) -> Api:
    key = args.api_key or (settings.api_key.get_secret_value() if settings.api_key else None)
    return Api(args.api_url or settings.api_url, key)


def cmd_submit(args: argparse.Namespace, api: Api, console: Console) -> int:
    try:
        spec = yaml.safe_load(Path(args.spec).read_text())
    except OSError as exc:
        raise CliError(EXIT_INPUT, f"cannot read {args.spec}: {exc.strerror or type(exc).__name__}") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise CliError(EXIT_INPUT, f"{args.spec} is not valid YAML{at}") from None
    if not isinstance(spec, dict):
        raise CliError(EXIT_INPUT, f"{args.spec} must hold one workload spec (a mapping)")
    key = args.idempotency_key or str(uuid.uuid4())
    result = api.request("POST", "/v1/workloads", body=spec, headers={"Idempotency-Key": key}, retries=2)
    emit(console, args, result, [result] if isinstance(result, dict) else [], WORKLOAD_COLUMNS)
    return EXIT_OK


def cmd_workloads(args: argparse.Namespace, api: Api, console: Console) -> int:
    params = {"state": args.state, "tenant": args.tenant}

    def render() -> tuple[list[dict[str, Any]], Table]:
        rows = api.pages("/v1/workloads", params, args.limit)
        return rows, table(rows, WORKLOAD_COLUMNS, title=f"workloads ({len(rows)})")

    if not args.watch:
        rows, t = render()
        if args.json:
            console.print_json(json.dumps(rows))
        else:
            console.print(t)
        return EXIT_OK
    with Live(render()[1], console=console, refresh_per_second=4) as live:
        shown = 1
        while args.iterations is None or shown < args.iterations:
            time.sleep(args.interval)
            live.update(render()[1])
            shown += 1
    return EXIT_OK


def cmd_devices(args: argparse.Namespace, api: Api, console: Console) -> int:
    rows = api.pages("/v1/devices", {"hardware_type": args.type, "site": args.site, "vendor": args.vendor,
                                     "model": args.model}, args.limit)
    emit(console, args, rows, rows, DEVICE_COLUMNS, title=f"devices ({len(rows)})")
    return EXIT_OK


def _event_row(seq: str, e: dict[str, Any]) -> dict[str, Any]:
    raw = e.get("data")
    data: dict[str, Any] = raw if isinstance(raw, dict) else {}
    when = e.get("time", "")
    try:
        when = datetime.fromisoformat(str(when).replace("Z", "+00:00")).strftime("%H:%M:%S")
    except ValueError:
        pass
    return {"seq": seq, "time": when, "type": str(e.get("type", "")).removeprefix(EVENT_TYPE_PREFIX),
            "subject": e.get("subject"), "site": data.get("site"), "tenant": data.get("tenant")}


def cmd_events(args: argparse.Namespace, api: Api, console: Console) -> int:
    params = {"type": args.type or None, "site": args.site}
    columns = ["seq", "time", "type", "subject", "site", "tenant"]
    seen = 0
    recent: deque[dict[str, Any]] = deque(maxlen=args.rows)
    live = Live(table([], columns, "events"), console=console, refresh_per_second=8) if args.follow else None
    try:
        if live is not None:
            live.start()
        for seq, event in api.events(params, args.since):
            seen += 1
            if args.json:
                console.print_json(json.dumps({"seq": seq, **event}))
            elif live is not None:
                recent.appendleft(_event_row(seq, event))
                live.update(table(list(recent), columns, f"events (last {len(recent)} of {seen})"))
            else:
                row = _event_row(seq, event)
                console.print("  ".join(_cell(row[c]) for c in columns), highlight=False)
            if args.max is not None and seen >= args.max:
                break
    finally:
        if live is not None:
            live.stop()
    return EXIT_OK


def cmd_keys(args: argparse.Namespace, api: Api, console: Console) -> int:
    if args.keys_cmd == "create":
        created = api.request("POST", "/v1/keys", body={"tenant": args.tenant, "role": args.role, "name": args.name})
        if args.json:
            console.print_json(json.dumps(created))
        else:
            console.print(table([created], KEY_COLUMNS))
            console.print(f"key: {created['key']}", highlight=False, soft_wrap=True)
            console.print("Store it now: it is not shown again.", style="yellow")
        return EXIT_OK
    if args.keys_cmd == "list":
        rows = api.pages("/v1/keys", {"tenant": args.tenant, "include_revoked": args.all or None}, args.limit)
        emit(console, args, rows, rows, KEY_COLUMNS, title=f"keys ({len(rows)})")
        return EXIT_OK
    revoked = api.request("DELETE", f"/v1/keys/{args.key_id}")
    emit(console, args, revoked, [revoked], KEY_COLUMNS, title="revoked")
    return EXIT_OK


COMMANDS = {"submit": cmd_submit, "workloads": cmd_workloads, "devices": cmd_devices, "events": cmd_events,
            "keys": cmd_keys}


def run_client(args: argparse.Namespace, settings: Settings) -> int:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # no per-request lines in a command's output
    console = Console(soft_wrap=False, width=args.width)
    errors = Console(stderr=True, soft_wrap=True)  # an error is one line, whatever the terminal width
    try:
        return COMMANDS[args.client_cmd](args, _api(args, settings), console)
    except CliError as exc:
        errors.print(f"xpumesh {args.client_cmd}: {exc.message}", highlight=False, markup=False)
        return exc.code
    except KeyboardInterrupt:
        return 130


def add_client_commands(sub: Any) -> None:
    """Register the API-client commands on ``xpumesh``'s subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--api-url", default=None, help="gateway URL (default: XPUMESH_API_URL or http://127.0.0.1:8080)")
    common.add_argument("--api-key", default=None, help="API key (default: XPUMESH_API_KEY)")
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")
    common.add_argument("--width", type=int, default=None, help=argparse.SUPPRESS)

    def add(name: str, help_text: str, *, leaf: bool = True) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help_text, parents=[common] if leaf else [])
        p.set_defaults(fn=run_client, client_cmd=name)
        return p

    p = add("submit", "submit a workload from a YAML (or JSON) spec file")
    p.add_argument("spec", help="path of the workload spec")
    p.add_argument("--idempotency-key", default=None, help="reuse to make a retried submit safe (default: random)")

    p = add("workloads", "list workloads (your tenant's; all for admins and operators)")
    p.add_argument("--state", default=None, help="only this state")
    p.add_argument("--tenant", default=None, help="only this tenant (admins and operators)")
    p.add_argument("--limit", type=int, default=500, help="most rows")
    p.add_argument("--watch", action="store_true", help="refresh the table until interrupted")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes with --watch")
    p.add_argument("--iterations", type=int, default=None, help=argparse.SUPPRESS)

    p = add("devices", "list devices of the fleet")
    p.add_argument("--type", choices=HARDWARE_TYPES, default=None, help="hardware type")
    p.add_argument("--site", default=None, help="site (city)")
    p.add_argument("--vendor", default=None, help="vendor key, e.g. nvidia, huawei")
    p.add_argument("--model", default=None, help="model glob, e.g. '*910B*'")
    p.add_argument("--limit", type=int, default=1000, help="most rows")

    p = add("events", "print live events (until interrupted)")
    p.add_argument("--follow", action="store_true", help="show a live table of the latest events")
    p.add_argument("--type", action="append", default=[], help="event type pattern (repeatable), e.g. 'io.xpumesh.workload.*'")
    p.add_argument("--site", default=None, help="only this site")
    p.add_argument("--since", default=None, help="resume after this event id (the seq column)")
    p.add_argument("--rows", type=int, default=20, help="rows kept in the --follow table")
    p.add_argument("--max", type=int, default=None, help="stop after this many events")

    p = add("keys", "manage API keys (admin)", leaf=False)
    ks = p.add_subparsers(dest="keys_cmd", required=True)
    c = ks.add_parser("create", help="create a key; its secret is shown once", parents=[common])
    c.add_argument("--tenant", required=True)
    c.add_argument("--role", required=True, choices=ROLES)
    c.add_argument("--name", default="", help="what the key is for")
    ls = ks.add_parser("list", help="list keys", parents=[common])
    ls.add_argument("--tenant", default=None)
    ls.add_argument("--all", action="store_true", help="include revoked keys")
    ls.add_argument("--limit", type=int, default=1000)
    rv = ks.add_parser("revoke", help="revoke a key by id", parents=[common])
    rv.add_argument("key_id")
