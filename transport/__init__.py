"""The socket edge under both wings: connect and listen on vsock, unix and TCP addresses
(`sockets`), and the byte splice the relay and the in-enclave CONNECT listener share (`splice`).
Everything above it names peers with `nitrokms.proto.addresses`; nothing below it (proto) does I/O.
"""
