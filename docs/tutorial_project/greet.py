"""A tiny UCSPI server program: reads a name on stdin, greets it on stdout."""

import os
import sys

name = sys.stdin.readline().strip()
protocol = os.environ.get("SSL_PROTOCOL", "no TLS")
print(f"hello {name}, you came from {os.environ['TCPREMOTEIP']} over {protocol}")
