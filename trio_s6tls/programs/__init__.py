"""One module per program: parse the command line, call the library.

Kept import-light: ``--help``, ``--version`` and usage errors never load
trio or ssl; a program imports the library only once it has work to do.
"""

#: console-script name → module (``python -m trio_s6tls NAME`` too)
PROGRAMS = {
    "s6-tlsc-io": "tlsc_io",
    "s6-tlsd-io": "tlsd_io",
    "s6-tlsc": "tlsc",
    "s6-tlsd": "tlsd",
    "s6-ucspitlsc": "ucspitlsc",
    "s6-ucspitlsd": "ucspitlsd",
    "s6-tlsclient": "tlsclient",
    "s6-tlsserver": "tlsserver",
    "s6-tcpclient": "tcpclient",
    "s6-tcpserver": "tcpserver",
}
