"""Accelerator probes: one module per vendor tool, a shared runner, and their parsers.

Use :func:`agent.discover.discover` for a whole host; the pieces here are for callers that
need one probe or want to parse captured text (``probe.parse([Capture(...)])``).
"""

from agent.probes.base import Capture, CommandRunner, Probe, ProbeRun, ToolProbe, load_capture, load_captures
from agent.probes.readings import DeviceReading

__all__ = ["Capture", "CommandRunner", "DeviceReading", "Probe", "ProbeRun", "ToolProbe", "load_capture",
           "load_captures"]
