#!/usr/bin/env python3
"""A program written for systemd's Type=notify, for a job with "ready": "notify": it starts up,
says READY=1 on $NOTIFY_SOCKET, and while it runs pings the watchdog at half its period
($WATCHDOG_USEC, given with "watchdog"). Python's standard library only."""
import os
import socket
import time


def notify(message: str) -> None:
    address = os.environ.get("NOTIFY_SOCKET")
    if address:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message.encode(), "\0" + address[1:] if address.startswith("@") else address)


time.sleep(float(os.environ.get("STARTUP_SECONDS", "0.5")))  # loading, connecting…
notify("READY=1\nSTATUS=serving")
watchdog = int(os.environ.get("WATCHDOG_USEC", "0")) / 1e6
while True:
    time.sleep(watchdog / 2 if watchdog else 3600)
    notify("WATCHDOG=1")
