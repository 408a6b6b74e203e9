"""The on-device runner ships as the single file defakeq_runner.py next to this one."""

from pathlib import Path

RUNNER_PATH = Path(__file__).with_name("defakeq_runner.py")
