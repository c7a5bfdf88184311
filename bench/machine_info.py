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


def cpu_flags(wanted: tuple[str, ...] = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "fma")) -> dict:
    """Which of the CPU features that decide matrix-product speed `lscpu` lists (all of them under "all")."""
    flags = set(lscpu_fields().get("Flags", "").split())
    return {"present": sorted(f for f in wanted if f in flags), "absent": sorted(f for f in wanted if f not in flags)}
