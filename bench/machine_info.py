"""What the benchmark scripts record about the machine they ran on (from `lscpu`)."""

from __future__ import annotations

import platform
import subprocess


def lscpu_fields() -> dict[str, str]:
    """`lscpu`'s "key: value" lines; empty where lscpu is missing."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return {}
    return {key.strip(): value.strip() for key, value in (line.split(":", 1) for line in out.splitlines() if ":" in line)}


def cpu_name() -> str:
    """The CPU model name, e.g. 'Intel(R) Xeon(R) Processor @ 2.50GHz'."""
    return lscpu_fields().get("Model name") or platform.processor()
