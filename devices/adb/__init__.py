"""ADB pieces: a TCP transport for adb-shell (tcp.py) and a Python adbd test device (testdevice.py).

The transport the suite uses lives in devices/transports/adb.py; testdevice.py is the phone
side of ADB for tests and demos (it must not import the rest of the project: the test device
runs it as a stand-alone script for its stand-in tools).
"""

from .tcp import FastTcpTransport

__all__ = ["FastTcpTransport"]
