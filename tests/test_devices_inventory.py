"""devices.yaml: the schema, its clear errors, and credentials by reference only."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from devices.inventory import (
    ADBDevice,
    InventoryError,
    LocalDevice,
    SSHDevice,
    load_inventory,
)
from devices.transports.ssh import SSHTransport

SECRET = "Tr0ub4dor&3-never-echo"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "devices.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def test_a_fleet_of_pi_jetson_pixel_loads_with_defaults(tmp_path):
    inv = load_inventory(
        write(
            tmp_path,
            """
        devices:
          - {name: local, transport: local, tags: [host]}
          - name: rpi5
            transport: ssh
            address: 192.168.1.31
            user: pi
            key_file: ~/.ssh/id_ed25519
            key_passphrase_env: RPI_KEY_PASSPHRASE
            runtimes: [onnxruntime-cpu, litert-xnnpack]
            threads: 4
            cpu_affinity: [3, 2, 1, 0]
            tags: [rpi5, arm64]
          - name: orin
            transport: ssh
            address: jetson.lab
            port: 2222
            user: nvidia
            runtimes: [onnxruntime-cpu, onnxruntime-tensorrt]
            attempts: 5
            backoff_s: 1.0
            io_timeout_s: 60
            dead_after_s: 20
            tags: [jetson-orin]
          - name: pixel8
            transport: adb
            address: 192.168.1.40:5555
            runtimes: [litert-xnnpack, litert-gpu, litert-nnapi]
            tags: [pixel8]
    """,
        )
    )
    d = inv.by_name()
    assert isinstance(d["local"], LocalDevice) and d["local"].runtimes == [
        "onnxruntime-cpu",
        "litert",
    ]
    pi = d["rpi5"]
    assert isinstance(pi, SSHDevice) and pi.port == 22 and pi.cpu_affinity == [0, 1, 2, 3]
    assert (
        pi.known_hosts == "~/.ssh/known_hosts" and pi.trust_on_first_use is False
    )  # checked by default
    assert (pi.attempts, pi.backoff_s, pi.io_timeout_s, pi.dead_after_s) == (3, 0.5, 30.0, None)
    orin = d["orin"]
    assert (orin.attempts, orin.backoff_s, orin.io_timeout_s, orin.dead_after_s) == (
        5,
        1.0,
        60.0,
        20.0,
    )
    t = SSHTransport.from_device(orin)  # the knobs reach the transport
    assert (t.attempts, t.backoff_s, t.io_timeout_s, t.dead_after_s, t.port) == (
        5,
        1.0,
        60.0,
        20.0,
        2222,
    )
    px = d["pixel8"]
    assert isinstance(px, ADBDevice) and px.runner == "benchmark_model" and px.io_timeout_s == 60.0
    assert (
        px.workdir == "/data/local/tmp/defakeq"
        and px.benchmark_model == "/data/local/tmp/benchmark_model"
    )


def test_passphrase_is_read_from_the_named_variable_only(monkeypatch):
    dev = SSHDevice(
        name="b",
        transport="ssh",
        address="10.0.0.2",
        user="pi",
        key_file="/k",
        key_passphrase_env="MY_BOARD_PASS",
    )
    monkeypatch.setenv("MY_BOARD_PASS", SECRET)
    monkeypatch.setenv("DEFAKEQ_SSH_KEY_PASSPHRASE", "the-default-variable")
    t = SSHTransport.from_device(dev)
    assert t._passphrase == SECRET and t.passphrase_env == "MY_BOARD_PASS"
    assert SECRET not in repr(t) and SECRET not in str(vars(dev))
    agent = SSHTransport.from_device(dev.model_copy(update={"key_file": None}))
    assert agent._passphrase is None  # the agent holds its own keys


@pytest.mark.parametrize(
    "entry, key",
    [
        ("password: " + SECRET, "password"),
        ("key_passphrase: " + SECRET, "key_passphrase"),
        ("passphrase: " + SECRET, "passphrase"),
        ("token: " + SECRET, "token"),
        ("api_key: " + SECRET, "api_key"),
        ("auth: {secret: " + SECRET + "}", "auth"),
    ],
)
def test_inline_secrets_are_refused_without_echoing_them(tmp_path, entry, key):
    p = write(
        tmp_path,
        f"""
        devices:
          - name: b
            transport: ssh
            address: 10.0.0.2
            user: pi
            {entry}
    """,
    )
    with pytest.raises(InventoryError) as err:
        load_inventory(p)
    msg = str(err.value)
    assert key in msg and "inline secret" in msg and "key_passphrase_env" in msg
    assert SECRET not in msg and err.value.__cause__ is None  # no chained repr with the value


def test_an_inline_private_key_and_a_passphrase_as_variable_name_are_refused(tmp_path):
    pem = "-----BEGIN OPENSSH PRIVATE KEY-----\\nb3BlbnNzaC1rZXktdjEAAAAA\\n-----END OPENSSH PRIVATE KEY-----"
    p = write(
        tmp_path,
        f"""
        devices:
          - {{name: b, transport: ssh, address: 10.0.0.2, user: pi, key_file: "{pem}"}}
    """,
    )
    with pytest.raises(InventoryError, match="inline private key") as err:
        load_inventory(p)
    assert "b3BlbnNzaC1rZXktdjEAAAAA" not in str(err.value)
    p = write(
        tmp_path,
        f"""
        devices:
          - {{name: b, transport: ssh, address: 10.0.0.2, user: pi, key_file: /k,
              key_passphrase_env: "{SECRET}"}}
    """,
    )
    with pytest.raises(InventoryError, match="NAME of an environment variable") as err:
        load_inventory(p)
    assert SECRET not in str(err.value)


def test_bad_yaml_error_gives_the_position_not_the_line(tmp_path):
    p = write(
        tmp_path,
        f"""
        devices:
          - name: b
            password: "{SECRET}
    """,
    )
    with pytest.raises(InventoryError, match=r"not valid YAML at line \d+") as err:
        load_inventory(p)
    assert SECRET not in str(err.value)


@pytest.mark.parametrize(
    "field, value, expect",
    [
        ("name", "b; rm -rf /", "devices.0.ssh.name"),
        ("name", "$(touch x)", "devices.0.ssh.name"),
        ("address", "host; rm -rf ~", "not a host name"),
        ("address", "10.0.0.2:22", "the port goes in `port`"),
        ("user", "pi$(id)", "devices.0.ssh.user"),
        ("cpu_affinity", [1, 1], "distinct"),
        ("cpu_affinity", [], "empty CPU list"),
        ("runtimes", ["onnxruntime-cpu", "tensorflow"], "unknown runtime"),
        ("tags", ["ok", "bad tag"], "devices.0.ssh.tags.1"),
        ("port", 70000, "devices.0.ssh.port"),
        ("bogus", 1, "unknown key"),
    ],
)
def test_bad_ssh_fields_are_clear_errors(tmp_path, field, value, expect):
    entry = {"name": "b", "transport": "ssh", "address": "10.0.0.2", "user": "pi", field: value}
    import yaml

    p = tmp_path / "devices.yaml"
    p.write_text(yaml.safe_dump({"devices": [entry]}))
    with pytest.raises(InventoryError, match="devices.yaml: invalid") as err:
        load_inventory(p)
    assert expect in str(err.value)


@pytest.mark.parametrize(
    "fields, expect",
    [
        ({"address": "192.168.1.40"}, "expected host:port"),
        ({"address": "phone:99999"}, "expected host:port"),
        ({"workdir": "tmp/defakeq"}, "absolute device path"),
        ({"benchmark_model": "benchmark_model"}, "absolute device path"),
        ({"runtimes": ["onnxruntime-cpu"]}, "runner: python"),
        ({"runner": "java"}, "devices.0.adb.runner"),
    ],
)
def test_bad_adb_fields_are_clear_errors(tmp_path, fields, expect):
    import yaml

    entry = {"name": "p", "transport": "adb", "address": "127.0.0.1:5555", **fields}
    p = tmp_path / "devices.yaml"
    p.write_text(yaml.safe_dump({"devices": [entry]}))
    with pytest.raises(InventoryError) as err:
        load_inventory(p)
    assert expect in str(err.value)


def test_adb_with_python_may_list_onnx_runtimes_and_ipv6_addresses():
    d = ADBDevice(
        name="p",
        transport="adb",
        address="[fe80::1]:5555",
        runner="python",
        runtimes=["onnxruntime-cpu", "litert"],
    )
    assert d.runner == "python"


def test_duplicate_names_and_missing_file(tmp_path):
    p = write(
        tmp_path,
        """
        devices:
          - {name: a, transport: local}
          - {name: a, transport: local}
    """,
    )
    with pytest.raises(InventoryError, match="repeated: \\['a'\\]"):
        load_inventory(p)
    with pytest.raises(InventoryError, match="devices file not found"):
        load_inventory(tmp_path / "nope.yaml")
    with pytest.raises(InventoryError, match="mapping with a `devices:` list"):
        load_inventory(write(tmp_path, "- just a list\n"))
