"""A corpus of malformed suite and devices files: each is rejected before any work, with the
file, the key path and what is allowed (the expected words are on each file's first line)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from devices.inventory import InventoryError, load_inventory
from harness.plan import make_plan
from harness.suite import SuiteError, load_suite

CORPUS = sorted((Path(__file__).parent / "malformed").glob("*.yaml"))


def expected(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), path
    return first[len("# expect: "):]


def test_corpus_is_big_enough():
    assert len(CORPUS) >= 30


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_rejected_with_file_key_and_allowed(path, tmp_path):
    want = expected(path)
    if path.name.startswith("devices-"):
        with pytest.raises(InventoryError) as err:
            load_inventory(path)
    else:
        with pytest.raises(SuiteError) as err:
            suite, _ = load_suite(path)
            make_plan(suite, load_inventory(suite.devices))  # cross-file checks (device names)
    msg = str(err.value)
    assert want in msg, msg
    assert str(path) in msg or path.name in msg or "trials.devices" in msg, msg


@pytest.mark.parametrize("name", ["suite-04-unknown-detector.yaml", "suite-26-unknown-trial-device.yaml", "suite-29-bad-yaml.yaml"])
def test_cli_exit_code_2_and_no_output_files(name, tmp_path):
    src = Path(__file__).parent / "malformed" / name
    dst = tmp_path / name
    dst.write_text(src.read_text())
    for cmd in ("run", "plan"):
        p = subprocess.run([sys.executable, "-m", "harness.cli", cmd, str(dst)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert p.returncode == 2, (cmd, p.stderr)
        assert expected(src) in p.stderr
    assert sorted(x.name for x in tmp_path.iterdir()) == [name]  # nothing was written
