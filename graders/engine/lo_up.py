"""Bring loopback up in a fresh network namespace, then exec the given command.

A new network namespace starts with ``lo`` down on some kernels, and a Jupyter kernel
talks to nbgrader over 127.0.0.1: without this, autograde fails on every notebook.
"""

import os
import shutil
import subprocess
import sys

ip = shutil.which("ip") or "/usr/sbin/ip"
if os.path.exists(ip):
    subprocess.run([ip, "link", "set", "lo", "up"], check=False)
os.execvp(sys.argv[1], sys.argv[1:])
