"""A tiny UCSPI client program: the connection is on fds 6 (read) and 7 (write)."""

with open(7, "w") as network_out:
    network_out.write("GET status\n")
with open(6) as network_in:
    print(network_in.readline().strip())
