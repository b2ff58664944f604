"""The probe contract, captured outputs, and the runner that feeds one to the other.

A probe knows which commands its vendor tool answers (``commands()``) and how to read
their text (``parse(outputs)``, pure). The runner either executes those commands
(asyncio subprocesses with a timeout; a tool that is absent gives ``available=False``,
logged at DEBUG only) or reads outputs captured earlier from a directory
(``--probe-dir DIR``). Captured files may start with ``# source: …`` and
``# command: …`` header lines; the command routes each file to its probe and parser,
the file name prefix stands in for it when absent.
"""

from __future__ import annotations

import asyncio
import glob
import logging
import os
import re
import shlex
import shutil
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from agent.probes.readings import DeviceReading
from agent.probes.records import Collector
from libs.schemas.devices import HardwareType, ProbeReport

log = logging.getLogger(__name__)

TOOL_ALIASES = {"xpu_smi": "xpu-smi", "rocm_smi": "rocm-smi", "amdsmi": "amd-smi"}
READ_FILE = "cat"  # a command ['cat', PATH...] is read from the file system, never executed


def tool_name(arg0: str) -> str:
    base = os.path.basename(arg0.strip())
    return TOOL_ALIASES.get(base, base)


@dataclass(frozen=True)
class Capture:
    """The text one command printed, live or read back from a capture file."""

    argv: tuple[str, ...]
    text: str
    source: str | None = None
    origin: str = "live"
    returncode: int = 0

    @property
    def tool(self) -> str:
        return tool_name(self.argv[0]) if self.argv else ""

    @property
    def args(self) -> tuple[str, ...]:
        return self.argv[1:]

    @property
    def label(self) -> str:
        command = " ".join(self.argv) or "?"
        command = command if len(command) <= 60 else command[:57] + "..."
        return command if self.origin == "live" else f"{command} [{os.path.basename(self.origin)}]"

    def has(self, *flags: str) -> bool:
        """True when any of the flags appears (also as '--flag=value')."""
        return any(arg == flag or arg.startswith(flag + "=") for arg in self.args for flag in flags)

    def option(self, *names: str) -> str | None:
        """Value of an option given as '-i 3', '--query-gpu=a,b' or '--query-gpu a,b'."""
        for position, arg in enumerate(self.args):
            for name in names:
                if arg == name and position + 1 < len(self.args):
                    return self.args[position + 1]
                if arg.startswith(name + "="):
                    return arg.split("=", 1)[1]
        return None


@runtime_checkable
class Probe(Protocol):
    """What every vendor probe provides. ``parse`` never raises; it warns instead."""

    @property
    def name(self) -> str: ...

    @property
    def tools(self) -> tuple[str, ...]:
        """Executables whose output this probe reads (the file name prefix of an unlabelled capture)."""

    def commands(self) -> list[list[str]]: ...

    def accepts(self, capture: Capture) -> bool: ...

    def parse(self, outputs: Sequence[Capture]) -> ProbeReport: ...


@dataclass
class ProbeRun:
    report: ProbeReport
    captures: list[Capture] = field(default_factory=list)
    readings: list[DeviceReading] = field(default_factory=list)


class ToolProbe:
    """Base class for probes that read a vendor tool's text.

    Subclasses set ``name``, ``vendor``, ``hardware_type``, ``tools``, ``commands()`` and
    implement ``parse_capture(capture, collector)``; the base handles ordering, errors,
    merging and readings.
    """

    name = "tool"
    vendor = ""
    hardware_type = HardwareType.GPU
    tools: tuple[str, ...] = ()

    def commands(self) -> list[list[str]]:
        return []

    def followup_commands(self, captures: Sequence[Capture]) -> list[list[str]]:
        return []

    def accepts(self, capture: Capture) -> bool:
        return capture.tool in self.tools

    def priority(self, capture: Capture) -> int:
        """Lower first: the richest output should win when outputs disagree."""
        return 50

    def looks_like(self, capture: Capture) -> bool:
        """Whether a capture routed here by its command name also reads like this vendor's output."""
        return True

    def parse(self, outputs: Sequence[Capture]) -> ProbeReport:
        return self.parse_all(outputs)[0]

    def parse_readings(self, outputs: Sequence[Capture]) -> list[DeviceReading]:
        return self.parse_all(outputs)[1]

    def parse_all(self, outputs: Sequence[Capture]) -> tuple[ProbeReport, list[DeviceReading]]:
        collector = Collector(self.name, self.vendor, self.hardware_type)
        collector.outputs = outputs
        for capture in sorted(outputs, key=self.priority):
            if not capture.text.strip():
                collector.warn(f"{capture.label}: empty output")
                continue
            if capture.tool in self.tools and not self.looks_like(capture):
                collector.warn(f"{capture.label}: does not look like {self.vendor} {capture.tool} output "
                               "(routed here by its command name); read as such")
            try:
                self.parse_capture(capture, collector)
            except Exception as exc:  # a parser bug must not take discovery down
                log.debug("parser failure on %s", capture.label, exc_info=True)
                collector.warn(f"{capture.label}: could not be parsed ({type(exc).__name__}: {exc})")
        self.finalize(outputs, collector)
        return collector.finish(available=self.is_available(collector))

    def is_available(self, collector: Collector) -> bool:
        """Whether the report says the tool is present; parsing its output means it ran."""
        return True

    def parse_capture(self, capture: Capture, collector: Collector) -> None:
        raise NotImplementedError

    def finalize(self, outputs: Sequence[Capture], collector: Collector) -> None:
        """Hook run after every capture was parsed (cross-output checks)."""


# ---------------------------------------------------------------- capture files

_HEADER_RE = re.compile(r"^#\s*(source|command)\s*:\s*(.*)$", re.IGNORECASE)


def split_command(command: str) -> tuple[str, ...]:
    """argv of a '# command:' header, without a trailing '(note)' or a leading 'sudo'/'env A=B'."""
    command = re.sub(r"\s{2,}\(.*\)\s*$", "", command.strip())
    try:
        argv = shlex.split(command)
    except ValueError:
        argv = command.split()
    while argv and (argv[0] in ("sudo", "env") or re.fullmatch(r"[A-Za-z_]\w*=\S*", argv[0])):
        argv.pop(0)
    return tuple(argv)


def parse_capture_text(text: str, *, origin: str, fallback_tool: str | None = None) -> Capture | None:
    """A capture from file text: header lines read and removed; None when no command is known."""
    lines = text.splitlines(keepends=True)
    source: str | None = None
    command: str | None = None
    body_start = 0
    for position, line in enumerate(lines[:4]):
        match = _HEADER_RE.match(line.strip())
        if not match:
            break
        if match.group(1).lower() == "source":
            source = match.group(2).strip()
        else:
            command = match.group(2).strip()
        body_start = position + 1
    argv = split_command(command) if command else ()
    if not argv:
        if not fallback_tool:
            return None
        argv = (fallback_tool,)
    return Capture(argv=argv, text="".join(lines[body_start:]), source=source, origin=origin)


def load_capture(path: Path, known_tools: Sequence[str] = ()) -> Capture | None:
    text = path.read_bytes().decode("utf-8", errors="replace")
    return parse_capture_text(text, origin=str(path), fallback_tool=_tool_from_name(path.name, known_tools))


def _tool_from_name(filename: str, known_tools: Sequence[str]) -> str | None:
    lowered = filename.lower()
    candidates = sorted(set(known_tools) | set(TOOL_ALIASES), key=len, reverse=True)
    for tool in candidates:
        if lowered.startswith(tool.lower()):
            return TOOL_ALIASES.get(tool, tool)
    return None


def load_captures(directory: Path, known_tools: Sequence[str] = ()) -> tuple[list[Capture], list[str]]:
    """Every capture file directly in ``directory`` (sub-folders such as ``sys/`` are left alone)."""
    captures: list[Capture] = []
    warnings: list[str] = []
    for path in sorted(directory.iterdir()):
        if not path.is_file() or path.name.startswith(".") or path.name.lower().startswith("readme"):
            continue
        try:
            capture = load_capture(path, known_tools)
        except OSError as exc:
            warnings.append(f"{path.name}: unreadable ({exc.strerror or exc})")
            continue
        if capture is None:
            warnings.append(f"{path.name}: no '# command:' header and no known tool name prefix; skipped")
            continue
        captures.append(capture)
    return captures, warnings


# ---------------------------------------------------------------- running tools


class CommandRunner:
    """Runs commands once per discovery (probes that share a tool share its output)."""

    def __init__(self, timeout_s: float = 10.0) -> None:
        self.timeout_s = timeout_s
        self._runs: dict[tuple[str, ...], asyncio.Task[tuple[Capture | None, str | None]]] = {}

    async def run(self, argv: Sequence[str]) -> tuple[Capture | None, str | None]:
        """(capture, warning); (None, None) means the tool or file is absent."""
        key = tuple(argv)
        if key not in self._runs:
            self._runs[key] = asyncio.ensure_future(self._run(key))
        return await asyncio.shield(self._runs[key])

    async def _run(self, argv: tuple[str, ...]) -> tuple[Capture | None, str | None]:
        if argv[0] == READ_FILE:
            return _read_files(argv), None
        executable = shutil.which(argv[0])
        if executable is None:
            log.debug("%s not found on PATH", argv[0])
            return None, None
        env = dict(os.environ, LC_ALL="C", LANG="C")
        try:
            process = await asyncio.create_subprocess_exec(
                executable, *argv[1:], stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, env=env, start_new_session=True)
        except OSError as exc:
            log.debug("%s could not start: %s", argv[0], exc)
            return None, f"{' '.join(argv)}: could not start ({exc.strerror or exc})"
        try:
            stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=self.timeout_s)
        except TimeoutError:
            _kill_group(process.pid)
            await process.wait()
            return None, f"{' '.join(argv)}: timed out after {self.timeout_s:g}s"
        text = stdout.decode("utf-8", errors="replace")
        warning = None
        if process.returncode:
            detail = stderr.decode("utf-8", errors="replace").strip().splitlines() or text.strip().splitlines()
            warning = f"{' '.join(argv)}: exited with {process.returncode}" + (f" ({detail[0][:200]})" if detail else "")
        return Capture(argv=argv, text=text, returncode=process.returncode or 0), warning


def _kill_group(pid: int) -> None:
    """Kill a timed-out tool and whatever it started (they share its new session)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read_files(argv: tuple[str, ...]) -> Capture | None:
    for pattern in argv[1:]:
        for path in sorted(glob.glob(pattern)):
            try:
                return Capture(argv=(READ_FILE, path), text=Path(path).read_text(errors="replace"))
            except OSError:
                continue
    return None


def _parse(probe: Probe, captures: Sequence[Capture]) -> tuple[ProbeReport, list[DeviceReading]]:
    parse_all = getattr(probe, "parse_all", None)
    if callable(parse_all):
        result: tuple[ProbeReport, list[DeviceReading]] = parse_all(captures)
        return result
    report = probe.parse(captures)
    parse_readings = getattr(probe, "parse_readings", None)
    readings: list[DeviceReading] = parse_readings(captures) if callable(parse_readings) else []
    return report, readings


def _absent(probe: Probe, warnings: Sequence[str] = ()) -> ProbeRun:
    return ProbeRun(ProbeReport(probe=probe.name, available=False, warnings=list(warnings)))


def _own(probe: Probe, captures: Sequence[Capture]) -> bool:
    return any(capture.tool in probe.tools for capture in captures)


async def run_probe_live(probe: Probe, runner: CommandRunner) -> ProbeRun:
    """Run a probe against this host: its own collector first (NVML, sysfs), then its commands."""
    collect_live = getattr(probe, "collect_live", None)
    if callable(collect_live):
        try:
            run: ProbeRun | None = await asyncio.wait_for(asyncio.to_thread(collect_live), runner.timeout_s)
        except Exception as exc:
            log.debug("%s: live collection failed: %s", probe.name, exc)
            run = None
        if run is not None:
            return run
    warnings: list[str] = []
    captures: list[Capture] = []
    tools_failed = False
    for phase in range(2):
        if phase == 0:
            commands = probe.commands()
        else:
            followup = getattr(probe, "followup_commands", None)
            commands = followup(captures) if callable(followup) and captures else []
        results = await asyncio.gather(*(runner.run(argv) for argv in commands))
        for argv, (capture, warning) in zip(commands, results, strict=True):
            if warning:
                warnings.append(warning)
                tools_failed = tools_failed or tool_name(argv[0]) in probe.tools
            if capture is not None:
                captures.append(capture)
    captures = [capture for capture in captures if probe.accepts(capture)]  # one tool name, two vendors
    if not _own(probe, captures):
        if not tools_failed:
            log.debug("%s: no tool found, not available", probe.name)
            return _absent(probe)
        return ProbeRun(ProbeReport(probe=probe.name, available=True, warnings=warnings))
    report, readings = _parse(probe, captures)
    report.warnings[:0] = warnings
    return ProbeRun(report, captures, readings)


def run_probe_captured(probe: Probe, captures: Sequence[Capture], probe_dir: Path | None = None) -> ProbeRun:
    """Run a probe over captured outputs (``--probe-dir``)."""
    mine = [capture for capture in captures if probe.accepts(capture)]
    collect_dir = getattr(probe, "collect_dir", None)
    if callable(collect_dir) and probe_dir is not None:
        run: ProbeRun | None = collect_dir(probe_dir, mine)
        if run is not None:
            return run
    if not _own(probe, mine):
        return _absent(probe)
    report, readings = _parse(probe, mine)
    return ProbeRun(report, list(mine), readings)


def headline(text: str, pattern: str) -> str | None:
    """First group of ``pattern`` searched in ``text`` (helper for 'Driver Version: X' headers)."""
    match = re.search(pattern, text)
    return match.group(1).strip() if match else None


def source_mentions(captures: Sequence[Capture], *words: str) -> bool:
    """True when a capture's '# source:' note names one of the words (case-insensitive)."""
    notes = " ".join(c.source or "" for c in captures).lower()
    return any(word.lower() in notes for word in words)
